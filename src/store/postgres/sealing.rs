//! DKIM private keys sealed for the shared database: AES-256-GCM (aws-lc-rs) under a secret
//! key that lives outside the database (`[store] secret_key_file`, a Kubernetes Secret), so a
//! dump of the database alone signs no mail.
//!
//! - Each key is sealed with a fresh random 96-bit nonce (aws-lc-rs's `RandomizedNonceKey`
//!   draws it), stored beside the ciphertext. At a few keys per domain, random nonces stay
//!   far below the 2^32 seals per key that NIST SP 800-38D allows for them.
//! - The additional authenticated data binds the ciphertext to its row's domain and selector,
//!   so a ciphertext copied to another row (another domain's selector) does not open.
//! - The id of the secret key that sealed a row is stored beside it: the first 16 hex digits
//!   of SHA-256 over a fixed label and the key. It names the key without revealing it (the key
//!   has 256 bits), so that rotation works: `[store] secret_key_file` is the key new seals use,
//!   `[store] previous_secret_key_files` are keys still accepted for opening, and
//!   `postern dkim reencrypt` seals every row again under the current key, after which the
//!   previous key files can go.
//!
//! A key file holds 32 random bytes in base64, as `openssl rand -base64 32` prints them. Errors
//! name the file and what is wrong with it, never its content.

use crate::store::StoreError;
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Length of a secret key, in bytes.
pub const SECRET_KEY_LEN: usize = 32;

/// One secret key and its id.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    key: Arc<RandomizedNonceKey>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A key from its 32 bytes.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for another length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != SECRET_KEY_LEN {
            return Err(StoreError::Invalid(format!(
                "a secret key is {SECRET_KEY_LEN} bytes, this one is {}",
                bytes.len()
            )));
        }
        let mut digest = Sha256::new();
        digest.update(b"postern dkim secret key id\0");
        digest.update(bytes);
        let id = digest
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| StoreError::Invalid("the secret key is not usable".to_string()))?;
        Ok(Self {
            id,
            key: Arc::new(key),
        })
    }

    /// Reads a key file: base64 of 32 bytes, white space around it ignored.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the file: unreadable, not base64, or not 32 bytes.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let file = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Invalid(format!("{file}: cannot read: {e}")))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "{file}: not base64 (make one with `openssl rand -base64 32`)"
                ))
            })?;
        Self::from_bytes(&bytes).map_err(|e| StoreError::Invalid(format!("{file}: {e}")))
    }

    /// The key's id, as stored beside what it sealed.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A sealed private key as stored: ciphertext with its tag, nonce, and the sealing key's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
    /// The 12-byte nonce.
    pub nonce: Vec<u8>,
    /// [`SecretKey::id`] of the key that sealed it.
    pub secret_key_id: String,
}

/// The keys the store seals and opens with: the current one, and previous ones for opening.
#[derive(Debug, Clone)]
pub struct SecretKeys {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

/// What the authenticated data binds a ciphertext to.
fn aad(domain: &str, selector: &str) -> Vec<u8> {
    format!("postern dkim v1\0{domain}\0{selector}").into_bytes()
}

impl SecretKeys {
    /// The current key and the previous ones.
    pub fn new(current: SecretKey, previous: Vec<SecretKey>) -> Self {
        Self { current, previous }
    }

    /// Reads `secret_key_file` and `previous_secret_key_files`.
    ///
    /// # Errors
    /// As [`SecretKey::read`].
    pub fn read(current: &Path, previous: &[impl AsRef<Path>]) -> Result<Self, StoreError> {
        Ok(Self::new(
            SecretKey::read(current)?,
            previous
                .iter()
                .map(|p| SecretKey::read(p.as_ref()))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// The id new seals carry.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Seals a private key for the row (`domain`, `selector`) under the current key.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the OS random generator fails.
    pub fn seal(&self, domain: &str, selector: &str, plain: &[u8]) -> Result<Sealed, StoreError> {
        let mut in_out = plain.to_vec();
        let nonce = self
            .current
            .key
            .seal_in_place_append_tag(Aad::from(aad(domain, selector)), &mut in_out)
            .map_err(|_| StoreError::Backend("cannot seal a DKIM private key".to_string()))?;
        Ok(Sealed {
            ciphertext: in_out,
            nonce: nonce.as_ref().to_vec(),
            secret_key_id: self.current.id.clone(),
        })
    }

    /// Opens the private key of the row (`domain`, `selector`).
    ///
    /// # Errors
    /// [`StoreError::Backend`] saying why: the key id is none of the configured keys (the
    /// message names it and the config keys to look at), or the ciphertext does not open
    /// under it (damaged, or moved from another row).
    pub fn open(
        &self,
        domain: &str,
        selector: &str,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, StoreError> {
        let what = format!("DKIM key {selector:?} of domain {domain:?}");
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.secret_key_id)
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "{what} is sealed with secret key {}, which is neither [store] \
                     secret_key_file (key {}) nor one of previous_secret_key_files",
                    sealed.secret_key_id, self.current.id
                ))
            })?;
        let nonce: [u8; NONCE_LEN] = sealed.nonce.as_slice().try_into().map_err(|_| {
            StoreError::Backend(format!("{what}: the stored nonce is not {NONCE_LEN} bytes"))
        })?;
        let mut in_out = sealed.ciphertext.clone();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(domain, selector)),
                &mut in_out,
            )
            .map_err(|_| {
                StoreError::Backend(format!(
                    "{what} does not open under secret key {}: the row is damaged or was \
                     copied from another domain or selector",
                    key.id
                ))
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn seal_and_open_with_fresh_nonces_bound_to_the_row() {
        let keys = SecretKeys::new(key(1), Vec::new());
        let a = keys.seal("example.org", "s1", b"private").unwrap();
        let b = keys.seal("example.org", "s1", b"private").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"private"));
        assert_eq!(keys.open("example.org", "s1", &a).unwrap(), b"private");
        let e = keys.open("example.org", "s2", &a).unwrap_err().to_string();
        assert!(e.contains("does not open"), "{e}");
        let e = keys.open("other.org", "s1", &a).unwrap_err().to_string();
        assert!(e.contains("does not open"), "{e}");
    }

    #[test]
    fn previous_keys_open_and_unknown_keys_are_named() {
        let old = SecretKeys::new(key(1), Vec::new());
        let sealed = old.seal("a.org", "s", b"k").unwrap();
        let rotated = SecretKeys::new(key(2), vec![key(1)]);
        assert_eq!(rotated.open("a.org", "s", &sealed).unwrap(), b"k");
        assert_eq!(
            rotated.seal("a.org", "s", b"k").unwrap().secret_key_id,
            key(2).id
        );
        let wrong = SecretKeys::new(key(3), Vec::new());
        let e = wrong.open("a.org", "s", &sealed).unwrap_err().to_string();
        assert!(
            e.contains(&format!("sealed with secret key {}", key(1).id)),
            "{e}"
        );
        assert!(e.contains("previous_secret_key_files"), "{e}");
    }

    #[test]
    fn key_files() {
        let dir = TempDir::new("secret-key");
        std::fs::create_dir_all(dir.path()).unwrap();
        let good = dir.join("good");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(&good, format!("{b64}\n")).unwrap();
        assert_eq!(SecretKey::read(&good).unwrap().id(), key(7).id());
        let short = dir.join("short");
        std::fs::write(&short, "c2hvcnQ=\n").unwrap();
        let e = SecretKey::read(&short).unwrap_err().to_string();
        assert!(
            e.ends_with("short: a secret key is 32 bytes, this one is 5"),
            "{e}"
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "not base64 at all!\n").unwrap();
        let e = SecretKey::read(&bad).unwrap_err().to_string();
        assert!(e.contains("not base64") && !e.contains("at all"), "{e}");
        assert!(SecretKey::read(&dir.join("absent")).is_err());
    }
}
