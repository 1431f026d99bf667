//! DKIM key material: making keys, importing PEM files, and the DNS record that publishes one.
//!
//! Keys are kept (in the store) as PKCS#8 DER whatever their origin, with their algorithm, so
//! that loading one for signing is a single parse. RSA keys are 2048 to 8192 bits: RFC 8301
//! forbids signing with fewer than 1024 and asks for 2048, and the crypto library (aws-lc)
//! refuses anything below 2048. The public key published in `p=` is, for RSA, the DER
//! `SubjectPublicKeyInfo` that every verifier accepts; for Ed25519 the raw 32-byte key
//! (RFC 8463 section 4.2).

use super::ActiveKey;
pub use crate::keys::Algorithm;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// Longest character-string in a TXT record (RFC 1035 section 3.3).
const TXT_STRING_MAX: usize = 255;

/// Why a key could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A size other than 2048, 3072 or 4096 bits was asked for.
    #[error("RSA keys are made with 2048, 3072 or 4096 bits, not {0}")]
    UnsupportedBits(u32),
    /// The PEM file holds no private key, or one that cannot sign DKIM.
    #[error("{0}")]
    Unusable(String),
    /// The crypto library failed.
    #[error("key generation failed: {0}")]
    Crypto(String),
}

/// A private key with what is needed to store and publish it.
pub struct KeyMaterial {
    /// RSA or Ed25519.
    pub algorithm: Algorithm,
    /// Modulus size for RSA; 256 for Ed25519.
    pub bits: u32,
    /// PKCS#8 DER. Secret: never logged or printed.
    pub private_key: Vec<u8>,
    /// The `p=` value (base64).
    pub public_key: String,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// A new key from the OS random generator. `bits` applies to RSA only.
    ///
    /// # Errors
    /// [`KeyError::UnsupportedBits`], or [`KeyError::Crypto`] if generation fails.
    pub fn generate(algorithm: Algorithm, bits: u32) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Rsa => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    other => return Err(KeyError::UnsupportedBits(other)),
                };
                let pair =
                    RsaKeyPair::generate(size).map_err(|e| KeyError::Crypto(e.to_string()))?;
                rsa_material(&pair)
            }
            Algorithm::Ed25519 => {
                let pair =
                    Ed25519KeyPair::generate().map_err(|e| KeyError::Crypto(e.to_string()))?;
                ed25519_material(&pair)
            }
        }
    }

    /// Reads a private key from PEM: `RSA PRIVATE KEY` (PKCS#1), or `PRIVATE KEY` (PKCS#8)
    /// holding an RSA or Ed25519 key, as made by `openssl genpkey`, `opendkim-genkey` or
    /// `rspamadm dkim_keygen`.
    ///
    /// # Errors
    /// [`KeyError::Unusable`] naming the problem.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| KeyError::Unusable(format!("not a PEM private key: {e}")))?
            .ok_or_else(|| KeyError::Unusable("no PEM private key found in the file".into()))?;
        match der {
            PrivateKeyDer::Pkcs1(der) => {
                let pair = RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(rsa_rejected)?;
                rsa_material(&pair)
            }
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                let rsa_error = match RsaKeyPair::from_pkcs8(der) {
                    Ok(pair) => return rsa_material(&pair),
                    Err(e) => e,
                };
                match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    Ok(pair) => ed25519_material(&pair),
                    Err(_) => Err(KeyError::Unusable(format!(
                        "the PKCS#8 key is neither an RSA key of 2048 to 8192 bits nor an \
                         Ed25519 key ({rsa_error})"
                    ))),
                }
            }
            _ => Err(KeyError::Unusable(
                "EC (SEC1) keys cannot sign DKIM: use an RSA or Ed25519 key".into(),
            )),
        }
    }

    /// The TXT value to publish: `v=DKIM1; k=...; p=...`.
    pub fn txt_value(&self) -> String {
        txt_value(self.algorithm, &self.public_key)
    }
}

fn rsa_rejected(e: aws_lc_rs::error::KeyRejected) -> KeyError {
    KeyError::Unusable(format!(
        "the RSA key is not usable ({e}): DKIM keys must be 2048 to 8192 bits"
    ))
}

fn rsa_material(pair: &RsaKeyPair) -> Result<KeyMaterial, KeyError> {
    let private: Pkcs8V1Der<'static> =
        pair.as_der().map_err(|e| KeyError::Crypto(e.to_string()))?;
    let public: PublicKeyX509Der<'static> = pair
        .public_key()
        .as_der()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(KeyMaterial {
        algorithm: Algorithm::Rsa,
        bits: u32::try_from(pair.public_modulus_len() * 8).unwrap_or(u32::MAX),
        private_key: private.as_ref().to_vec(),
        public_key: BASE64.encode(public.as_ref()),
    })
}

fn ed25519_material(pair: &Ed25519KeyPair) -> Result<KeyMaterial, KeyError> {
    let private = pair
        .to_pkcs8()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(KeyMaterial {
        algorithm: Algorithm::Ed25519,
        bits: 256,
        private_key: private.as_ref().to_vec(),
        public_key: BASE64.encode(pair.public_key().as_ref()),
    })
}

/// Loads a stored PKCS#8 key for signing.
///
/// # Errors
/// [`KeyError::Unusable`] if the bytes are not a key of `algorithm`.
pub fn load(algorithm: Algorithm, pkcs8: &[u8]) -> Result<DkimKey, KeyError> {
    let unusable =
        |e: mail_auth::Error| KeyError::Unusable(format!("stored {} key: {e}", algorithm.name()));
    Ok(match algorithm {
        Algorithm::Rsa => DkimKey::Rsa(
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))
                .map_err(unusable)?,
        ),
        Algorithm::Ed25519 => {
            DkimKey::Ed25519(Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8).map_err(unusable)?)
        }
    })
}

/// An [`ActiveKey`] for `domain` and `selector` from stored PKCS#8 bytes.
///
/// # Errors
/// As [`load`].
pub fn active_key(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    pkcs8: &[u8],
) -> Result<ActiveKey, KeyError> {
    Ok(ActiveKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        key: Arc::new(load(algorithm, pkcs8)?),
    })
}

/// `v=DKIM1; k=ALG; p=KEY`.
pub fn txt_value(algorithm: Algorithm, public_key: &str) -> String {
    format!("v=DKIM1; k={}; p={public_key}", algorithm.name())
}

/// The owner name of a key's record: `SEL._domainkey.DOMAIN.`
pub fn record_name(domain: &str, selector: &str) -> String {
    format!("{selector}._domainkey.{domain}.")
}

/// One zone-file line publishing a key: the owner name, `IN TXT`, and the value split into
/// quoted strings of at most 255 characters (a resolver joins them back, RFC 6376 section
/// 3.6.2.2). Ready to paste into a zone file or a DNS provider's form.
pub fn zone_line(domain: &str, selector: &str, algorithm: Algorithm, public_key: &str) -> String {
    let strings: Vec<String> = txt_strings(&txt_value(algorithm, public_key))
        .into_iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    format!(
        "{} IN TXT {}",
        record_name(domain, selector),
        strings.join(" ")
    )
}

/// `value` cut into TXT character-strings of at most 255 bytes (it is ASCII).
pub fn txt_strings(value: &str) -> Vec<&str> {
    let mut rest = value;
    let mut out = Vec::new();
    while rest.len() > TXT_STRING_MAX {
        let (head, tail) = rest.split_at(TXT_STRING_MAX);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// Checks a selector (RFC 6376 section 3.1: dot-separated labels of letters, digits and
/// hyphens) and returns it lowercase.
///
/// # Errors
/// A message naming the problem.
pub fn parse_selector(text: &str) -> Result<String, String> {
    let invalid = |why: &str| format!("invalid selector {text:?}: {why}");
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.len() > 63 {
        return Err(invalid("it is longer than 63 characters"));
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err(invalid("it has an empty label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(invalid(&format!("character {c:?} is not allowed")));
        }
    }
    Ok(text.to_ascii_lowercase())
}
