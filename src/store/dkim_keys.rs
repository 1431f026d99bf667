//! DKIM keys in the embedded store (table `dkim_keys`, schema step 3).
//!
//! A key is one row per (domain, selector) with its PKCS#8 private key, the `p=` value, and an
//! `active` flag. A partial unique index allows one active key per domain and algorithm, so
//! activation is "clear the flag of the domain's other key of this algorithm, set this one" in
//! one transaction, and a domain holding an active RSA key and an active Ed25519 key is
//! dual-signed.

use super::embedded::{backend, now_secs, to_time};
use super::{DkimAdmin, DkimKeyStore, EmbeddedStore, StoreError};
use crate::keys::Algorithm;
use rusqlite::{OptionalExtension, params};
use std::time::SystemTime;

/// A key to store.
pub struct NewDkimKey {
    /// Signing domain, lowercase.
    pub domain: String,
    /// Selector, lowercase.
    pub selector: String,
    /// RSA or Ed25519.
    pub algorithm: Algorithm,
    /// Key size.
    pub bits: u32,
    /// PKCS#8 DER (secret).
    pub private_key: Vec<u8>,
    /// The `p=` value.
    pub public_key: String,
    /// Sign with it from now on.
    pub active: bool,
}

/// A stored key as `postern dkim list|show` sees it: never the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyInfo {
    /// Signing domain.
    pub domain: String,
    /// Selector.
    pub selector: String,
    /// RSA or Ed25519.
    pub algorithm: Algorithm,
    /// Key size.
    pub bits: u32,
    /// The `p=` value.
    pub public_key: String,
    /// Signing with it now.
    pub active: bool,
    /// When it was made or imported.
    pub created_at: SystemTime,
}

/// An active key as the signer needs it.
pub struct ActiveDkimKey {
    /// Random id, new for every stored key: the signer caches parsed keys by it.
    pub key_id: String,
    /// Selector.
    pub selector: String,
    /// RSA or Ed25519.
    pub algorithm: Algorithm,
    /// PKCS#8 DER (secret).
    pub private_key: Vec<u8>,
}

impl std::fmt::Debug for ActiveDkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveDkimKey")
            .field("key_id", &self.key_id)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn algorithm_of(text: &str) -> Result<Algorithm, StoreError> {
    Algorithm::parse(text)
        .ok_or_else(|| StoreError::Backend(format!("unknown DKIM algorithm {text:?} in the store")))
}

fn key_not_found(domain: &str, selector: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("DKIM selector \"{selector}\" of domain \"{domain}\""),
    }
}

impl EmbeddedStore {
    fn active_dkim_keys_blocking(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT key_id, selector, algorithm, private_key FROM dkim_keys
                 WHERE domain = ?1 AND active = 1 ORDER BY algorithm",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([domain], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(backend)?;
        let mut keys = Vec::new();
        for row in rows {
            let (key_id, selector, algorithm, private_key) = row.map_err(backend)?;
            keys.push(ActiveDkimKey {
                key_id,
                selector,
                algorithm: algorithm_of(&algorithm)?,
                private_key,
            });
        }
        Ok(keys)
    }
}

#[async_trait::async_trait]
impl DkimKeyStore for EmbeddedStore {
    async fn active_dkim_keys(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError> {
        let domain = domain.to_string();
        self.blocking(move |store| store.active_dkim_keys_blocking(&domain))
            .await
    }
}

impl DkimAdmin for EmbeddedStore {
    fn add_dkim_key(&self, key: &NewDkimKey) -> Result<(), StoreError> {
        let key_id = super::CredentialId::random()?.0;
        self.write(|tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM dkim_keys WHERE domain = ?1 AND selector = ?2)",
                    params![key.domain, key.selector],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            if exists {
                return Err(StoreError::AlreadyExists {
                    what: format!(
                        "DKIM selector \"{}\" of domain \"{}\"",
                        key.selector, key.domain
                    ),
                });
            }
            let now = now_secs();
            if key.active {
                tx.execute(
                    "UPDATE dkim_keys SET active = 0
                     WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
                    params![key.domain, key.algorithm.name()],
                )
                .map_err(backend)?;
            }
            tx.execute(
                "INSERT INTO dkim_keys (domain, selector, algorithm, bits, key_id, private_key,
                     public_key, active, created_at, activated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    key.domain,
                    key.selector,
                    key.algorithm.name(),
                    key.bits,
                    key_id,
                    key.private_key,
                    key.public_key,
                    key.active,
                    now,
                    key.active.then_some(now),
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn list_dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyInfo>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT domain, selector, algorithm, bits, public_key, active, created_at
                 FROM dkim_keys WHERE ?1 IS NULL OR domain = ?1 ORDER BY domain, selector",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([domain], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, u32>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, bool>(5)?,
                    row.get::<_, i64>(6)?,
                ))
            })
            .map_err(backend)?;
        let mut keys = Vec::new();
        for row in rows {
            let (domain, selector, algorithm, bits, public_key, active, created) =
                row.map_err(backend)?;
            keys.push(DkimKeyInfo {
                domain,
                selector,
                algorithm: algorithm_of(&algorithm)?,
                bits,
                public_key,
                active,
                created_at: to_time(created),
            });
        }
        Ok(keys)
    }

    fn activate_dkim_key(
        &self,
        domain: &str,
        selector: &str,
    ) -> Result<Option<String>, StoreError> {
        self.write(|tx| {
            let algorithm: String = tx
                .query_row(
                    "SELECT algorithm FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                    params![domain, selector],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?
                .ok_or_else(|| key_not_found(domain, selector))?;
            let previous: Option<String> = tx
                .query_row(
                    "SELECT selector FROM dkim_keys
                     WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
                    params![domain, algorithm],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?;
            if previous.as_deref() == Some(selector) {
                return Ok(previous);
            }
            tx.execute(
                "UPDATE dkim_keys SET active = 0 WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
                params![domain, algorithm],
            )
            .map_err(backend)?;
            tx.execute(
                "UPDATE dkim_keys SET active = 1, activated_at = ?3
                 WHERE domain = ?1 AND selector = ?2",
                params![domain, selector, now_secs()],
            )
            .map_err(backend)?;
            Ok(previous)
        })
    }

    fn remove_dkim_key(
        &self,
        domain: &str,
        selector: &str,
        force: bool,
    ) -> Result<bool, StoreError> {
        let was_active = self.write(|tx| {
            let active: bool = tx
                .query_row(
                    "SELECT active FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                    params![domain, selector],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?
                .ok_or_else(|| key_not_found(domain, selector))?;
            if active && !force {
                return Err(StoreError::Invalid(format!(
                    "DKIM selector \"{selector}\" of domain \"{domain}\" is the active key: \
                     activate another selector first, or remove it with --force (the domain's \
                     messages are then no longer signed with it)"
                )));
            }
            tx.execute(
                "DELETE FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                params![domain, selector],
            )
            .map_err(backend)?;
            Ok(active)
        })?;
        // secure_delete (set at open) zeroed the key in the page's new version; checkpointing
        // now lets SQLite reuse the WAL frames that still hold the old one. Best effort: a
        // reader (the relay) can keep the checkpoint from finishing.
        let _ = self
            .lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(was_active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::TempDir;

    fn store() -> (TempDir, EmbeddedStore) {
        let dir = TempDir::new("dkim-keys");
        let store = EmbeddedStore::open(&dir.path().join("store.db")).unwrap();
        (dir, store)
    }

    fn key(domain: &str, selector: &str, algorithm: Algorithm, active: bool) -> NewDkimKey {
        NewDkimKey {
            domain: domain.into(),
            selector: selector.into(),
            algorithm,
            bits: 2048,
            private_key: format!("secret-{selector}").into_bytes(),
            public_key: format!("pub-{selector}"),
            active,
        }
    }

    fn active_selectors(store: &EmbeddedStore, domain: &str) -> Vec<String> {
        store
            .active_dkim_keys_blocking(domain)
            .unwrap()
            .into_iter()
            .map(|k| k.selector)
            .collect()
    }

    #[test]
    fn one_active_key_per_algorithm() {
        let (_dir, store) = store();
        store
            .add_dkim_key(&key("example.org", "r1", Algorithm::Rsa, true))
            .unwrap();
        store
            .add_dkim_key(&key("example.org", "r2", Algorithm::Rsa, false))
            .unwrap();
        store
            .add_dkim_key(&key("example.org", "e1", Algorithm::Ed25519, true))
            .unwrap();
        store
            .add_dkim_key(&key("other.org", "r1", Algorithm::Rsa, true))
            .unwrap();
        // ORDER BY algorithm: ed25519 before rsa.
        assert_eq!(active_selectors(&store, "example.org"), ["e1", "r1"]);

        assert_eq!(
            store
                .activate_dkim_key("example.org", "r2")
                .unwrap()
                .as_deref(),
            Some("r1")
        );
        assert_eq!(active_selectors(&store, "example.org"), ["e1", "r2"]);
        assert_eq!(active_selectors(&store, "other.org"), ["r1"]);
        // Activating the active key changes nothing.
        assert_eq!(
            store
                .activate_dkim_key("example.org", "r2")
                .unwrap()
                .as_deref(),
            Some("r2")
        );
        // A new active key replaces the old one of its algorithm.
        store
            .add_dkim_key(&key("example.org", "r3", Algorithm::Rsa, true))
            .unwrap();
        assert_eq!(active_selectors(&store, "example.org"), ["e1", "r3"]);
    }

    #[test]
    fn duplicates_unknowns_and_forced_removal() {
        let (_dir, store) = store();
        store
            .add_dkim_key(&key("example.org", "s1", Algorithm::Rsa, true))
            .unwrap();
        let e = store
            .add_dkim_key(&key("example.org", "s1", Algorithm::Ed25519, false))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DKIM selector \"s1\" of domain \"example.org\" already exists"
        );
        let e = store.activate_dkim_key("example.org", "nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "DKIM selector \"nope\" of domain \"example.org\" not found"
        );
        let e = store
            .remove_dkim_key("example.org", "s1", false)
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        assert_eq!(active_selectors(&store, "example.org"), ["s1"]);
        assert!(store.remove_dkim_key("example.org", "s1", true).unwrap());
        assert!(active_selectors(&store, "example.org").is_empty());
        assert!(store.list_dkim_keys(None).unwrap().is_empty());
    }

    #[test]
    fn list_never_shows_private_keys() {
        let (_dir, store) = store();
        store
            .add_dkim_key(&key("b.org", "s", Algorithm::Ed25519, false))
            .unwrap();
        store
            .add_dkim_key(&key("a.org", "s", Algorithm::Rsa, true))
            .unwrap();
        let all = store.list_dkim_keys(None).unwrap();
        assert_eq!(
            all.iter()
                .map(|k| (k.domain.as_str(), k.active))
                .collect::<Vec<_>>(),
            [("a.org", true), ("b.org", false)]
        );
        assert_eq!(store.list_dkim_keys(Some("b.org")).unwrap().len(), 1);
        assert!(!format!("{all:?}").contains("secret"));
        let active = store.active_dkim_keys_blocking("a.org").unwrap();
        assert!(!format!("{active:?}").contains("secret"));
        assert_eq!(active[0].private_key, b"secret-s");
    }
}
