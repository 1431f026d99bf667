//! DKIM keys as the store holds them, for every backend: what `postern dkim` stores and
//! lists, and what the signer gets. The embedded table is in `store/embedded/dkim_keys.rs`.

use super::StoreError;
use crate::keys::Algorithm;
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

/// The algorithm of a stored key from its name in the store (`rsa`, `ed25519`).
///
/// # Errors
/// [`StoreError::Backend`]: a name this Postern does not know means a damaged or newer store.
pub(super) fn algorithm_of(text: &str) -> Result<Algorithm, StoreError> {
    Algorithm::parse(text)
        .ok_or_else(|| StoreError::Backend(format!("unknown DKIM algorithm {text:?} in the store")))
}

/// `NotFound` for a selector of a domain.
pub(super) fn key_not_found(domain: &str, selector: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("DKIM selector \"{selector}\" of domain \"{domain}\""),
    }
}

/// `AlreadyExists` for a selector a domain has already.
pub(super) fn selector_exists(domain: &str, selector: &str) -> StoreError {
    StoreError::AlreadyExists {
        what: format!("DKIM selector \"{selector}\" of domain \"{domain}\""),
    }
}

/// `Invalid` for removing the active key without `force`.
pub(super) fn active_key_needs_force(domain: &str, selector: &str) -> StoreError {
    StoreError::Invalid(format!(
        "DKIM selector \"{selector}\" of domain \"{domain}\" is the active key: \
         activate another selector first, or remove it with --force (the domain's \
         messages are then no longer signed with it)"
    ))
}
