//! Signing logic against mail-auth's verifier, with the public keys handed to it from memory
//! (the over-the-wire checks, with dkimpy too, are in `tests/py/test_dkim.py`).

use super::keys::{self, KeyMaterial, txt_strings, zone_line};
use super::*;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// TXT answers served from memory (a resolver that is never asked).
#[derive(Default)]
struct Records(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _valid_until: Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

fn rsa() -> &'static KeyMaterial {
    static KEY: OnceLock<KeyMaterial> = OnceLock::new();
    KEY.get_or_init(|| KeyMaterial::generate(Algorithm::Rsa, 2048).unwrap())
}

fn ed25519() -> &'static KeyMaterial {
    static KEY: OnceLock<KeyMaterial> = OnceLock::new();
    KEY.get_or_init(|| KeyMaterial::generate(Algorithm::Ed25519, 0).unwrap())
}

fn active(material: &KeyMaterial, selector: &str) -> ActiveKey {
    keys::active_key(
        "example.org",
        selector,
        material.algorithm,
        &material.private_key,
    )
    .unwrap()
}

fn records(keys: &[(&KeyMaterial, &str)]) -> Records {
    let records = Records::default();
    for (material, selector) in keys {
        let value = DomainKey::parse(material.txt_value().as_bytes()).unwrap();
        records.insert(
            format!("{selector}._domainkey.example.org.").into(),
            Txt::from(value),
            Instant::now() + std::time::Duration::from_secs(3600),
        );
    }
    records
}

/// Hashes `message` in chunks of `chunk` bytes and returns it with the signature fields of
/// `keys` in front.
fn sign(message: &[u8], added: &[u8], keys: &[ActiveKey], chunk: usize) -> Vec<u8> {
    let mut hasher = MessageHasher::new();
    for piece in message.chunks(chunk.max(1)) {
        hasher.write(piece);
    }
    let hashed = hasher.finish().unwrap();
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(
            signature_field(&hashed, added, key, 1_700_000_000)
                .unwrap()
                .as_bytes(),
        );
    }
    out.extend_from_slice(added);
    out.extend_from_slice(message);
    out
}

fn verify(signed: &[u8], records: &Records) -> Vec<DkimResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let authenticator = MessageAuthenticator::new(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![]),
            Default::default(),
        )
        .unwrap();
        let message = AuthenticatedMessage::parse(signed).unwrap();
        authenticator
            .verify_dkim(mail_auth::Parameters::new(&message).with_txt_cache(records))
            .await
            .iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n\
Subject: Quarterly\r\n  figures\r\nX-Mailer: test\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain\r\n\r\nHello Bob,\r\n\r\nsee you  \r\n\r\n\r\n";

#[test]
fn signatures_verify_whatever_the_chunking() {
    let records = records(&[(rsa(), "r1"), (ed25519(), "e1")]);
    let keys = [active(rsa(), "r1"), active(ed25519(), "e1")];
    let added = b"Message-ID: <id@relay.example>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n";
    for chunk in [1, 2, 3, 5, 17, 4096] {
        let signed = sign(MESSAGE, added, &keys, chunk);
        assert_eq!(
            verify(&signed, &records),
            [DkimResult::Pass, DkimResult::Pass],
            "chunk {chunk}"
        );
    }
}

#[test]
fn signed_fields_are_the_present_ones_with_from_over_signed() {
    let hashed = {
        let mut h = MessageHasher::new();
        h.write(MESSAGE);
        h.finish().unwrap()
    };
    let field = signature_field(&hashed, b"Date: x\r\n", &active(ed25519(), "e1"), 1).unwrap();
    let h = field.split("h=").nth(1).unwrap().split(';').next().unwrap();
    let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(h, "Content-Type:MIME-Version:Subject:To:From:Date:From");
    assert!(!field.contains(" l="), "{field}");
    assert!(field.contains("c=relaxed/relaxed"), "{field}");
    assert!(field.contains("t=1;"), "{field}");
}

#[test]
fn any_change_after_signing_fails() {
    let records = records(&[(rsa(), "r1")]);
    let signed = sign(MESSAGE, b"", &[active(rsa(), "r1")], 4096);
    assert_eq!(verify(&signed, &records), [DkimResult::Pass]);
    let text = String::from_utf8(signed).unwrap();
    // A changed signed header fails the signature; a changed body fails the body hash
    // (mail-auth reports that as neutral, RFC 6376 section 6.3 lets a verifier do so).
    for (from, to, body) in [
        ("Subject: Quarterly", "Subject: Quarterlx", false),
        ("Hello Bob", "Hello Bab", true),
        (
            "To: bob@example.net\r\n",
            "To: bob@example.net\r\nFrom: mallory@evil.example\r\n",
            false,
        ),
    ] {
        let tampered = text.replacen(from, to, 1);
        let results = verify(tampered.as_bytes(), &records);
        let ok = match &results[..] {
            [
                DkimResult::Neutral(mail_auth::Error::Dkim(
                    mail_auth::dkim::DkimError::FailedBodyHashMatch,
                )),
            ] => body,
            [DkimResult::Fail(_)] => !body,
            _ => false,
        };
        assert!(ok, "{from:?} -> {to:?}: {results:?}");
    }
    // Relaxed body canonicalisation: trailing blank lines and spaces at line ends do not count.
    let relaxed = text.replace("see you  \r\n", "see you\r\n") + "\r\n";
    assert_eq!(verify(relaxed.as_bytes(), &records), [DkimResult::Pass]);
}

#[test]
fn messages_without_body_or_from() {
    let records = records(&[(ed25519(), "e1")]);
    let key = active(ed25519(), "e1");
    let signed = sign(
        b"From: a@example.org\r\nSubject: no body\r\n",
        b"",
        std::slice::from_ref(&key),
        7,
    );
    assert_eq!(verify(&signed, &records), [DkimResult::Pass]);
    let signed = sign(
        b"From: a@example.org\r\n\r\n",
        b"",
        std::slice::from_ref(&key),
        1,
    );
    assert_eq!(verify(&signed, &records), [DkimResult::Pass]);
    let mut h = MessageHasher::new();
    h.write(b"To: b@example.net\r\n\r\nbody\r\n");
    assert_eq!(
        signature_field(&h.finish().unwrap(), b"", &key, 1),
        Err(SignError::NoFrom)
    );
}

#[test]
fn oversized_header_sections_are_not_kept() {
    let mut h = MessageHasher::new();
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    for _ in 0..1100 {
        h.write(line.as_bytes());
    }
    assert!(h.finish().is_none());
}

#[test]
fn dns_records_split_into_255_character_strings() {
    let long = "p".repeat(600);
    let parts = txt_strings(&long);
    assert_eq!(
        parts.iter().map(|s| s.len()).collect::<Vec<_>>(),
        [255, 255, 90]
    );
    let line = zone_line("example.org", "s1", Algorithm::Rsa, &rsa().public_key);
    assert!(
        line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p=MIIB"),
        "{line}"
    );
    assert!(
        line.split('"')
            .filter(|s| !s.trim().is_empty())
            .skip(1)
            .all(|s| s.len() <= 255)
    );
    let ed = zone_line(
        "example.org",
        "e1",
        Algorithm::Ed25519,
        &ed25519().public_key,
    );
    assert_eq!(
        ed.len(),
        "e1._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p=\"".len() + 44
    );
}

#[test]
fn key_sizes_and_pem_import() {
    assert_eq!(rsa().bits, 2048);
    assert_eq!(ed25519().bits, 256);
    assert_eq!(
        KeyMaterial::generate(Algorithm::Rsa, 1024).unwrap_err(),
        KeyError::UnsupportedBits(1024)
    );
    // A stored key round-trips through PEM (PKCS#8) with the same public key.
    for material in [rsa(), ed25519()] {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(&material.private_key);
        let text = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        let imported = KeyMaterial::from_pem(text.as_bytes()).unwrap();
        assert_eq!(imported.algorithm, material.algorithm);
        assert_eq!(imported.public_key, material.public_key);
    }
    let e = KeyMaterial::from_pem(b"not a key").unwrap_err();
    assert!(e.to_string().contains("no PEM private key"), "{e}");
    assert!(keys::parse_selector("s2026.Mail").is_ok());
    assert_eq!(keys::parse_selector("s2026.Mail").unwrap(), "s2026.mail");
    assert!(keys::parse_selector("bad_sel").is_err());
    assert!(keys::parse_selector("").is_err());
    assert!(keys::parse_selector("a..b").is_err());
}
