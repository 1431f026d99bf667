//! The `[dns] trust_anchor` file (`dnssec.rs`): DNSKEY and DS lines in zone-file syntax, as an
//! operator (or keymgr, or dig) writes them.
//!
//! What must hold:
//! - a refused file gets a one-line reason without control characters (it is printed as the
//!   config error, `dns.trust_anchor: ...`, and must not break or forge log lines);
//! - an accepted DS line has digest type 2 or 4 with a digest of 32 or 48 bytes and a
//!   supported algorithm, and the same record written out again reads back equal;
//! - an accepted DNSKEY line written out again reads back equal;
//! - matching the file's DS lines against its DNSKEY lines (what the resolver does with
//!   the fetched key set) never panics, and a key a DS names has that DS's tag.

use hickory_resolver::proto::dnssec::DigestType;

use crate::dnssec::{ds_anchor_keys, ds_matches, parse_trust_anchors};

pub(super) fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match parse_trust_anchors(text) {
        Ok(file) => file,
        Err(reason) => {
            assert!(!reason.is_empty());
            assert!(
                !reason.chars().any(char::is_control),
                "a reason with a control character: {reason:?}"
            );
            return;
        }
    };
    for (owner, ds) in &file.ds {
        let want = match ds.digest_type() {
            DigestType::SHA256 => 32,
            DigestType::SHA384 => 48,
            other => panic!("DS digest type {other:?} accepted"),
        };
        assert_eq!(ds.digest().len(), want);
        assert!(ds.algorithm().is_supported());
        let again = parse_trust_anchors(&format!("{owner} IN DS {ds}"))
            .unwrap_or_else(|e| panic!("{owner} DS {ds} written out again: {e}"));
        assert_eq!(again.ds, vec![(owner.clone(), ds.clone())]);
    }
    for (owner, key) in &file.dnskeys {
        let again = parse_trust_anchors(&format!("{owner} 3600 IN DNSKEY {key}"))
            .unwrap_or_else(|e| panic!("{owner} DNSKEY {key} written out again: {e}"));
        assert_eq!(again.dnskeys, vec![(owner.clone(), key.clone())]);
    }
    let keys: Vec<_> = file.dnskeys.iter().map(|(_, k)| k.clone()).collect();
    for (owner, ds) in &file.ds {
        for key in ds_anchor_keys(owner, &[ds], &keys) {
            assert!(ds_matches(owner, ds, key));
            assert_eq!(key.calculate_key_tag().ok(), Some(ds.key_tag()));
        }
    }
}
