//! The relay's signer: finds the From domain's active keys in the store and signs with each.
//!
//! Keys are read from the store for every message (one indexed query), so `postern dkim
//! activate` applies to the next message without a restart; the parsed keys are cached by
//! their random store id, so an RSA key is not re-parsed each time.

use super::{ActiveKey, HashedMessage, SignError, keys, signature_field};
use crate::metrics::Metrics;
use crate::store::DkimKeyStore;
use mail_auth::common::crypto::DkimKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Parsed keys kept at most; past it the cache starts over (keys are re-parsed on use).
const CACHE_MAX: usize = 10_000;

/// What signing did to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Signed: the `DKIM-Signature:` fields to put in front, and `a=/s=/d=` for the log.
    Signed {
        /// CRLF-terminated fields, one per key.
        fields: String,
        /// `rsa-sha256:s1@example.org ed25519-sha256:s2@example.org`.
        summary: String,
    },
    /// Relayed unsigned, for this reason.
    Unsigned(Unsigned),
}

impl Signing {
    /// The words for the transaction log.
    pub fn log_text(&self) -> String {
        match self {
            Signing::Signed { summary, .. } => summary.clone(),
            Signing::Unsigned(why) => format!("unsigned ({})", why.label()),
        }
    }

    /// The `result` label of `postern_dkim_messages_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Signing::Signed { .. } => "signed",
            Signing::Unsigned(why) => why.label(),
        }
    }
}

/// Why a message went out unsigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsigned {
    /// The From domain has no active key.
    NoKey,
    /// No `From:` address, or addresses in several domains (no one domain to sign for).
    NoFromDomain,
    /// The header section was too large to keep (the session refuses such messages anyway).
    HeaderTooLarge,
    /// The From domain is not one this client may sign for (a hosting account's `From:`
    /// outside its domains).
    NotPermitted,
    /// A field to sign cannot be canonicalised faithfully (a form feed in it).
    UnsignableHeader,
    /// The store could not be read, or no key could sign. The driver answers 451 rather than
    /// relay unsigned: for a domain publishing DMARC `p=reject` that would be a silent loss.
    Error,
}

impl Unsigned {
    /// Metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Unsigned::NoKey => "no_key",
            Unsigned::NoFromDomain => "no_from_domain",
            Unsigned::HeaderTooLarge => "header_too_large",
            Unsigned::NotPermitted => "not_permitted",
            Unsigned::UnsignableHeader => "unsignable_header",
            Unsigned::Error => "error",
        }
    }
}

/// Signs messages with the keys in the store.
pub struct Signer {
    store: Arc<dyn DkimKeyStore>,
    parsed: Mutex<HashMap<String, Arc<DkimKey>>>,
    metrics: Metrics,
}

impl Signer {
    /// A signer reading keys from `store`.
    pub fn new(store: Arc<dyn DkimKeyStore>, metrics: Metrics) -> Self {
        Self {
            store,
            parsed: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Signs `message` (header section and body hash) for the domain of `from` (the
    /// addresses of its one well-formed `From:` field; empty otherwise), with `added`
    /// (Postern's `Message-ID:`/`Date:`) in front of its header section. `permitted` bounds
    /// the domains this client may sign for (a hosting account's domains); `None` when the
    /// session already proved ownership of the `From:` address (AUTH) or the client is a
    /// trusted network. Counts the outcome.
    pub async fn sign(
        &self,
        from: &[String],
        permitted: Option<&[String]>,
        message: Option<HashedMessage>,
        added: &str,
    ) -> Signing {
        let outcome = self.sign_uncounted(from, permitted, message, added).await;
        self.metrics.dkim_message(outcome.metric_label());
        outcome
    }

    async fn sign_uncounted(
        &self,
        from: &[String],
        permitted: Option<&[String]>,
        message: Option<HashedMessage>,
        added: &str,
    ) -> Signing {
        let Some(domain) = single_domain(from) else {
            return Signing::Unsigned(Unsigned::NoFromDomain);
        };
        if permitted.is_some_and(|domains| !domains.contains(&domain)) {
            return Signing::Unsigned(Unsigned::NotPermitted);
        }
        let Some(message) = message else {
            return Signing::Unsigned(Unsigned::HeaderTooLarge);
        };
        let stored = match self.store.active_dkim_keys(&domain).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(domain = %domain, error = %e, "DKIM: cannot read keys; relaying unsigned");
                return Signing::Unsigned(Unsigned::Error);
            }
        };
        if stored.is_empty() {
            return Signing::Unsigned(Unsigned::NoKey);
        }
        let mut active = Vec::with_capacity(stored.len());
        for key in stored {
            match self.parsed_key(&key) {
                Ok(parsed) => active.push(ActiveKey {
                    domain: domain.clone(),
                    selector: key.selector,
                    key: parsed,
                }),
                Err(e) => {
                    tracing::error!(domain = %domain, selector = %key.selector, error = %e, "DKIM: stored key unusable");
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Signed on the calling worker. An RSA-2048 signature takes about 250 µs of CPU here
        // (an Ed25519 one a few µs), at most one per active key of the domain: work the relay
        // has to do on one of its cores anyway. Handing it to the blocking pool cost more than
        // that protects: two thread wake-ups per message (README, "Performance").
        let signed: Vec<_> = active
            .iter()
            .map(|key| {
                (
                    format!("{}:{}@{}", key.algorithm_name(), key.selector, key.domain),
                    key.algorithm_name(),
                    signature_field(&message, added.as_bytes(), key, now),
                )
            })
            .collect();
        let mut fields = String::new();
        let mut summary = Vec::new();
        let mut refusal = None;
        for (name, algorithm, result) in signed {
            match result {
                Ok(field) => {
                    self.metrics.dkim_signature(algorithm);
                    fields.push_str(&field);
                    summary.push(name);
                }
                // Properties of the message, the same for every key.
                Err(SignError::NoFrom) => refusal = Some(Unsigned::NoFromDomain),
                Err(SignError::UnsignableField(_)) => refusal = Some(Unsigned::UnsignableHeader),
                Err(e) => tracing::error!(key = %name, error = %e, "DKIM: signing failed"),
            }
        }
        if summary.is_empty() {
            return Signing::Unsigned(refusal.unwrap_or(Unsigned::Error));
        }
        Signing::Signed {
            fields,
            summary: summary.join(" "),
        }
    }

    fn parsed_key(
        &self,
        stored: &crate::store::ActiveDkimKey,
    ) -> Result<Arc<DkimKey>, keys::KeyError> {
        let mut cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = cache.get(&stored.key_id) {
            return Ok(key.clone());
        }
        let key = Arc::new(keys::load(stored.algorithm, &stored.private_key)?);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(stored.key_id.clone(), key.clone());
        Ok(key)
    }
}

/// The one domain of the `From:` addresses, if they have exactly one.
fn single_domain(from: &[String]) -> Option<String> {
    let mut domains = from
        .iter()
        .filter_map(|a| crate::policy::domain_of(a))
        .map(str::to_ascii_lowercase);
    let first = domains.next()?;
    if domains.all(|d| d == first) && from.iter().all(|a| a.contains('@')) {
        Some(first)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::{Algorithm, KeyMaterial, MessageHasher};
    use crate::store::{DkimAdmin, EmbeddedStore, NewDkimKey};
    use crate::testutil::TempDir;

    fn hashed(message: &[u8]) -> Option<HashedMessage> {
        let mut h = MessageHasher::new();
        h.write(message);
        h.finish()
    }

    #[tokio::test]
    async fn signs_only_where_permitted_and_counts_why_not() {
        let dir = TempDir::new("signer");
        let store = EmbeddedStore::open(&dir.path().join("store.db")).unwrap();
        let key = KeyMaterial::generate(Algorithm::Ed25519, 0).unwrap();
        store
            .add_dkim_key(&NewDkimKey {
                domain: "b.org".into(),
                selector: "s1".into(),
                algorithm: Algorithm::Ed25519,
                bits: key.bits,
                private_key: key.private_key.clone(),
                public_key: key.public_key.clone(),
                active: true,
            })
            .unwrap();
        let metrics = Metrics::new();
        let signer = Signer::new(Arc::new(store), metrics.clone());
        let msg = b"From: x@b.org\r\n\r\nhi\r\n";
        let from = vec!["x@b.org".to_string()];
        // A hosting account whose domains do not include b.org cannot borrow its key.
        let theirs = vec!["a.org".to_string()];
        assert_eq!(
            signer.sign(&from, Some(&theirs), hashed(msg), "").await,
            Signing::Unsigned(Unsigned::NotPermitted)
        );
        let ours = vec!["b.org".to_string()];
        let signed = signer.sign(&from, Some(&ours), hashed(msg), "").await;
        assert!(
            matches!(&signed, Signing::Signed { summary, .. } if summary == "ed25519-sha256:s1@b.org"),
            "{signed:?}"
        );
        assert!(matches!(
            signer.sign(&from, None, hashed(msg), "").await,
            Signing::Signed { .. }
        ));
        let other = vec!["y@c.org".to_string()];
        assert_eq!(
            signer
                .sign(&other, None, hashed(b"From: y@c.org\r\n\r\n"), "")
                .await,
            Signing::Unsigned(Unsigned::NoKey)
        );
        assert_eq!(
            signer.sign(&[], None, hashed(msg), "").await,
            Signing::Unsigned(Unsigned::NoFromDomain)
        );
        // A form feed in a signed field: relayed unsigned, not refused.
        assert_eq!(
            signer
                .sign(
                    &from,
                    None,
                    hashed(b"From: x@b.org\r\nSubject: a\x0cb\r\n\r\n"),
                    ""
                )
                .await,
            Signing::Unsigned(Unsigned::UnsignableHeader)
        );
        let text = metrics.render();
        for (result, n) in [
            ("not_permitted", 1),
            ("signed", 2),
            ("no_key", 1),
            ("no_from_domain", 1),
            ("unsignable_header", 1),
        ] {
            let line = format!("postern_dkim_messages_total{{result=\"{result}\"}} {n}");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    #[test]
    fn signing_domain_comes_from_one_from_domain() {
        let s = |v: &[&str]| single_domain(&v.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["a@example.org"]).as_deref(), Some("example.org"));
        assert_eq!(
            s(&["a@Example.ORG", "b@example.org"]).as_deref(),
            Some("example.org")
        );
        assert_eq!(s(&["a@example.org", "b@other.org"]), None);
        assert_eq!(s(&[]), None);
        assert_eq!(s(&["undisclosed"]), None);
    }
}
