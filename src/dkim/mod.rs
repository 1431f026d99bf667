//! DKIM signing of accepted messages (RFC 6376), with RSA-SHA256 and Ed25519-SHA256 (RFC 8463).
//!
//! # Where it happens
//! A message is signed once, by the session driver, after the sender checks passed and before
//! it is handed to the spool: the spool holds the signed message and delivery never re-signs.
//! The signing domain is the domain of the header `From:` (an alias's domain signs with its own
//! domain's key), so that DKIM aligns with DMARC. A domain with no active key is relayed
//! unsigned; the transaction log line and `postern_dkim_messages_total{result}` say why.
//!
//! # Streaming
//! The body hash is the expensive part of a big message, so it is computed while DATA streams
//! to the spool: [`MessageHasher`] keeps the header section (at most
//! [`MAX_HEADER_SECTION`](crate::session::headers::MAX_HEADER_SECTION) bytes) and feeds every
//! body byte through the relaxed body canonicalisation ([`canonical`]) into one SHA-256
//! context. At the end of DATA only the header section is signed, once per active key: a
//! 201 MB message costs one pass over its body and never a second copy in memory. Both
//! algorithms use SHA-256 and relaxed canonicalisation, so a dual-signed message shares one
//! body hash.
//!
//! # What is signed
//! Relaxed/relaxed canonicalisation, `t=` (signing time), no `l=` (a body length limit lets
//! anyone append content under a valid signature), no `x=`. `h=` lists each field of
//! [`SIGNED_HEADERS`] present in the message, including the `Message-ID:` and `Date:` that
//! Postern adds when the client left them out, and names `From` once more than it occurs
//! (over-signing, RFC 6376 section 8.15): a second `From:` added later breaks the signature.
//! Fields not present are not listed, so a list manager may still add `List-Unsubscribe`.
//!
//! mail-auth provides the header canonicalisation, the `DKIM-Signature` serialisation and the
//! signature primitives; this module chooses the fields and drives them. The body
//! canonicalisation is our own ([`canonical`]): on prose it costs a fifth of mail-auth's, and
//! conforming where mail-auth 0.13.3 is not. mail-auth's own streaming signer would also hash
//! the body once per key and tie the stream to the key's lifetime.

pub mod canonical;
pub mod keys;
pub mod signer;

use canonical::RelaxedBody;
use mail_auth::common::crypto::{DkimKey, HashContext, HashImpl, Sha256, SigningKey};
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, Signature};
use std::sync::Arc;

pub use keys::{Algorithm, KeyError, KeyMaterial};
pub use signer::{Signer, Signing, Unsigned};

/// Header fields signed when present (field names compare case-insensitively).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

type HashState = <Sha256 as HashImpl>::Context;

/// Reads a message as it streams: keeps its header section, hashes its body.
pub struct MessageHasher {
    state: HasherState,
}

enum HasherState {
    /// Before the empty line: everything so far.
    Header(Vec<u8>),
    /// After it: the header section (ending with its last CRLF) and the body hash so far.
    Body {
        header: Vec<u8>,
        body: RelaxedBody<HashState>,
    },
    /// The header section outgrew the limit; the session refuses such messages.
    Overflow,
}

/// A message read to its end: the header section and the relaxed body hash.
pub struct HashedMessage {
    /// The client's header fields, each ending with CRLF, without the empty line.
    pub header: Vec<u8>,
    /// SHA-256 of the relaxed-canonical body (the `bh=` tag).
    pub body_hash: Vec<u8>,
}

impl Default for MessageHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageHasher {
    /// A hasher at the start of a message.
    pub fn new() -> Self {
        Self {
            state: HasherState::Header(Vec::with_capacity(4096)),
        }
    }

    /// Takes the next message bytes (dot-unstuffed, CRLF line ends).
    pub fn write(&mut self, chunk: &[u8]) {
        match &mut self.state {
            HasherState::Header(buf) => {
                let searched_from = buf.len().saturating_sub(3);
                buf.extend_from_slice(chunk);
                let end = if buf.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    buf[searched_from..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| searched_from + p + 4)
                };
                match end {
                    Some(end) => {
                        let mut header = std::mem::take(buf);
                        let mut body = RelaxedBody::new(Sha256::hasher());
                        body.write(&header[end..]);
                        header.truncate(end - 2);
                        self.state = HasherState::Body { header, body };
                    }
                    None if buf.len() > crate::session::headers::MAX_HEADER_SECTION => {
                        self.state = HasherState::Overflow;
                    }
                    None => {}
                }
            }
            HasherState::Body { body, .. } => body.write(chunk),
            HasherState::Overflow => {}
        }
    }

    /// The header section and body hash, or `None` if the header section was too large.
    pub fn finish(self) -> Option<HashedMessage> {
        let (header, body) = match self.state {
            HasherState::Header(mut header) => {
                // No empty line: all header, empty body.
                if !header.is_empty() && !header.ends_with(b"\r\n") {
                    header.extend_from_slice(b"\r\n");
                }
                let body = RelaxedBody::new(Sha256::hasher());
                (header, body)
            }
            HasherState::Body { header, body } => (header, body),
            HasherState::Overflow => return None,
        };
        let hash = body.finish();
        Some(HashedMessage {
            header,
            body_hash: hash.complete().as_ref().to_vec(),
        })
    }
}

/// A key ready to sign for a domain.
#[derive(Clone)]
pub struct ActiveKey {
    /// The `d=` domain.
    pub domain: String,
    /// The `s=` selector.
    pub selector: String,
    /// The private key.
    pub key: Arc<DkimKey>,
}

impl ActiveKey {
    /// The `a=` value: `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm_name(&self) -> &'static str {
        match self.key.as_ref() {
            DkimKey::Rsa(_) => "rsa-sha256",
            DkimKey::Ed25519(_) => "ed25519-sha256",
        }
    }
}

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// No `From:` field to sign.
    #[error("the message has no From: field")]
    NoFrom,
    /// A field to sign holds a character canonicalisation would mangle (a form feed).
    #[error("the {0} field holds a form feed")]
    UnsignableField(String),
    /// The crypto library refused.
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// The `DKIM-Signature:` field (CRLF-terminated, folded) for `message` with `added` in front
/// of its header section: the fields Postern adds that are to be signed (`Message-ID:`,
/// `Date:`), each ending with CRLF. `now` is the `t=` value, in seconds since the epoch.
///
/// # Errors
/// [`SignError::NoFrom`] if neither `added` nor the message has a `From:` field;
/// [`SignError::Crypto`] if the key cannot sign.
pub fn signature_field(
    message: &HashedMessage,
    added: &[u8],
    key: &ActiveKey,
    now: u64,
) -> Result<String, SignError> {
    let mut header = Vec::with_capacity(added.len() + message.header.len());
    header.extend_from_slice(added);
    header.extend_from_slice(&message.header);

    let mut fields = Vec::new();
    let mut names = Vec::new();
    for (name, value) in header_fields(&header) {
        // The raw name, untrimmed: `h=` must name the field exactly as verifiers find it, so
        // the obsolete `Subject :` form (RFC 5322 section 4.5) is left unsigned.
        if SIGNED_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            // mail-auth's header canonicalisation takes a form feed for white space, which
            // RFC 6376 does not: a signature over such a field would fail at receivers.
            if value.contains(&0x0c) {
                return Err(SignError::UnsignableField(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            fields.push((name, value));
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case("from")) {
        return Err(SignError::NoFrom);
    }
    // Canonical fields are written last-first (the order in which a verifier picks repeated
    // fields, RFC 6376 section 5.4.2), so `h=` lists them in that order; the extra `From`
    // names one instance more than exists.
    names.reverse();
    names.push("From".to_string());

    let mut signature = Signature {
        v: 1,
        a: key.key.algorithm(),
        d: key.domain.clone(),
        s: key.selector.clone(),
        bh: message.body_hash.clone(),
        h: names,
        t: now,
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Signature::default()
    };
    signature.b = key
        .key
        .sign(SignedData {
            fields: Canonicalization::Relaxed.canonical_headers(fields),
            signature: &signature,
        })
        .map_err(|e| SignError::Crypto(e.to_string()))?;
    let mut out = Vec::with_capacity(512);
    signature.write(&mut out, true);
    Ok(String::from_utf8(out).expect("DKIM-Signature fields are ASCII"))
}

/// The fields of a header section as (name, value) pairs, the value running from after the
/// colon to the CRLF that ends the field (folded lines included), which is what mail-auth's
/// canonicalisation expects. A line without a colon is not a field and is skipped.
fn header_fields(section: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields = Vec::new();
    let mut start = 0;
    while start < section.len() {
        let mut end = start;
        loop {
            match section[end..].iter().position(|&b| b == b'\n') {
                Some(p) => {
                    end += p + 1;
                    if !matches!(section.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = section.len();
                    break;
                }
            }
        }
        let field = &section[start..end];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            fields.push((&field[..colon], &field[colon + 1..]));
        }
        start = end;
    }
    fields
}

/// What the signature covers: the canonical signed fields, then the `DKIM-Signature` field
/// itself with an empty `b=` (RFC 6376 section 3.7).
struct SignedData<'a> {
    fields: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for SignedData<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.fields.write(writer);
        self.signature.write(writer, false);
    }
}

#[cfg(test)]
mod tests;
