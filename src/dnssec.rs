//! DNSSEC trust anchors: the `[dns] trust_anchor` file and the DS-to-DNSKEY match.
//!
//! The file holds DNSKEY and DS lines in zone-file syntax, any owner name. DNSKEY lines are
//! anchors as they are. hickory only takes keys, so a DS line is resolved when the delivery
//! resolver is built (`delivery::mx::build_resolver`): the owner's DNSKEY RRset is asked from
//! the configured servers without validation, and each key whose key tag, algorithm and
//! digest (RFC 4034 5.1.4; digest types 2 SHA-256 and 4 SHA-384, SHA-1 refused as RFC 8624
//! 3.3 advises) match one of that owner's DS lines is an anchor ([`ds_anchor_keys`]); hickory
//! then verifies the DNSKEY RRset's signatures with it as with a configured key.
//!
//! A zone below the root may split its keys: a KSK that signs only the DNSKEY RRset and a
//! ZSK that signs the rest (knot's default). An anchor that names only the KSK (its DS, or
//! its DNSKEY line alone) would make hickory look for the zone's DS in a parent that a
//! private or lab zone does not have, and every answer would be bogus. So when the resolver
//! is built, the anchored owner's DNSKEY RRset and its RRSIGs are fetched, and once an RRSIG
//! made by an anchored key verifies over the RRset ([`self_signed_keys`], RFC 4035 section
//! 5.3), every zone key of the RRset is anchored.
//!
//! This module is a leaf below `config` and `delivery`: `config` parses the file once at load
//! (an unparsable file is a configuration error, exit 2, `dns.trust_anchor`), `delivery`
//! takes the parsed value. The DNS lookups a DS line needs are not here; nor is anything
//! about TLSA (`delivery::dane`).

use std::path::Path;
use std::str::FromStr;

use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS, RRSIG};
use hickory_resolver::proto::dnssec::{
    Algorithm, DigestType, PublicKey, PublicKeyBuf, TrustAnchors, Verifier,
};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};

/// `[dns] trust_anchor` as read: the keys of its DNSKEY lines, and its DS lines, whose keys are
/// only known once the owner's DNSKEY RRset has been fetched (`delivery::mx::build_resolver`,
/// with [`ds_anchor_keys`]).
#[derive(Clone)]
pub struct TrustAnchorFile {
    /// The DNSKEY lines' keys (empty when the file has none).
    pub keys: TrustAnchors,
    /// The same DNSKEY lines, each with its owner name (hickory's anchors cannot be listed).
    pub dnskeys: Vec<(Name, DNSKEY)>,
    /// The DS lines, each with its owner name.
    pub ds: Vec<(Name, DS)>,
}

// By hand because hickory's `TrustAnchors` is not `Debug` (and cannot list its keys); the
// config that holds this is.
impl std::fmt::Debug for TrustAnchorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchorFile")
            .field("dnskeys", &self.dnskeys)
            .field("ds", &self.ds)
            .finish_non_exhaustive()
    }
}

/// Reads `[dns] trust_anchor`: DNSKEY and DS records in zone-file syntax (any owner name).
///
/// # Errors
/// A one-line reason (unreadable, no DNSKEY or DS, unparsable, DS digest type not accepted).
pub fn load_trust_anchors(path: &Path) -> Result<TrustAnchorFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_trust_anchors(&text)
}

/// Parses trust anchor text (see [`load_trust_anchors`]). DS lines need digest type 2
/// (SHA-256) or 4 (SHA-384): SHA-1 (1) is refused (RFC 8624 section 3.3), unknown types too.
///
/// # Errors
/// A one-line reason.
pub fn parse_trust_anchors(text: &str) -> Result<TrustAnchorFile, String> {
    parse_lines(text).map_err(|reason| escape_controls(&reason))
}

/// `text` with each control character written as its Rust escape (`\r`, `\u{1b}`): a reason
/// quotes the file's line, and a lone CR or an escape sequence in it must not break the
/// one-line config error it becomes (or rewrite the operator's terminal). Not
/// `printable::escape_controls`: both are leaves of layer 0, which do not use each other.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn parse_lines(text: &str) -> Result<TrustAnchorFile, String> {
    let records = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('$'));
    // Each record as `OWNER TTL IN DNSKEY ...` (hickory's parser wants TTL and class; dig and
    // keymgr may leave them out).
    let mut canonical = String::new();
    let mut ds = Vec::new();
    let mut dnskeys = Vec::new();
    for line in records {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("DNSKEY") || w.eq_ignore_ascii_case("DS"))
        else {
            return Err(format!("not a DNSKEY or DS record: {line}"));
        };
        let kind = words[at].to_ascii_uppercase();
        if at == 0 {
            return Err(format!("{kind} record without owner name: {line}"));
        }
        let owner = words[0];
        let dot = if owner.ends_with('.') { "" } else { "." };
        if kind == "DS" {
            let name = Name::from_ascii(format!("{owner}{dot}"))
                .map_err(|e| format!("invalid owner name in DS record: {line}: {e}"))?;
            ds.push((name, parse_ds(&words[at + 1..].join(" "), line)?));
            continue;
        }
        let rdata = words[at + 1..].join(" ");
        // `FLAGS PROTOCOL ALGORITHM KEY`: the algorithm is checked before hickory reads the
        // key, whose decoder asserts a supported one.
        let algorithm = words
            .get(at + 3)
            .and_then(|w| w.parse::<u8>().ok())
            .map(Algorithm::from_u8)
            .ok_or_else(|| format!("invalid DNSKEY record: {line}"))?;
        if !algorithm.is_supported() {
            return Err(format!(
                "DNSKEY algorithm {} is not supported: {line}",
                u8::from(algorithm)
            ));
        }
        let name = Name::from_ascii(format!("{owner}{dot}"))
            .map_err(|e| format!("invalid owner name in DNSKEY record: {line}: {e}"))?;
        dnskeys.push((name, parse_dnskey(&words[at + 1..], line)?));
        canonical.push_str(&format!("{owner}{dot} 3600 IN DNSKEY {rdata}\n"));
    }
    if canonical.is_empty() && ds.is_empty() {
        return Err("no DNSKEY or DS record found".into());
    }
    let keys = if canonical.is_empty() {
        TrustAnchors::empty()
    } else {
        TrustAnchors::from_str(&canonical).map_err(|e| format!("invalid DNSKEY records: {e}"))?
    };
    Ok(TrustAnchorFile { keys, dnskeys, ds })
}

/// The RDATA of a DNSKEY line (`FLAGS 3 ALGORITHM BASE64...`, the key possibly split over
/// several words as zone files wrap it). hickory's text parser for a lone RDATA does not take
/// DNSKEY, so it is read here: an anchor the widening step cannot see would leave a split-key
/// zone anchored by its KSK alone, and every answer under it bogus.
fn parse_dnskey(words: &[&str], line: &str) -> Result<DNSKEY, String> {
    use base64::Engine;
    let bad = |why: &str| format!("invalid DNSKEY record ({why}): {line}");
    let [flags, protocol, algorithm, key @ ..] = words else {
        return Err(bad("want FLAGS PROTOCOL ALGORITHM KEY"));
    };
    let flags: u16 = flags.parse().map_err(|_| bad("flags"))?;
    if *protocol != "3" {
        return Err(bad("protocol must be 3"));
    }
    let algorithm: u8 = algorithm.parse().map_err(|_| bad("algorithm"))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.concat())
        .map_err(|_| bad("key is not base64"))?;
    if key.is_empty() {
        return Err(bad("no key"));
    }
    Ok(DNSKEY::with_flags(
        flags,
        PublicKeyBuf::new(key, Algorithm::from_u8(algorithm)),
    ))
}

/// The RDATA of a DS line (`TAG ALGORITHM DIGEST-TYPE HEX`).
fn parse_ds(rdata: &str, line: &str) -> Result<DS, String> {
    let ds = match RData::try_from_str(RecordType::DS, rdata) {
        Ok(RData::DNSSEC(DNSSECRData::DS(ds))) => ds,
        Ok(_) => return Err(format!("invalid DS record: {line}")),
        Err(e) => return Err(format!("invalid DS record: {line}: {e}")),
    };
    let want = match ds.digest_type() {
        DigestType::SHA256 => 32,
        DigestType::SHA384 => 48,
        other => {
            return Err(format!(
                "DS digest type {} is not accepted (use 2, SHA-256, or 4, SHA-384): {line}",
                u8::from(other)
            ));
        }
    };
    if ds.digest().len() != want
        || rdata.split_whitespace().skip(3).collect::<String>().len() != 2 * want
    {
        return Err(format!(
            "DS digest has the wrong length for its type: {line}"
        ));
    }
    if !ds.algorithm().is_supported() {
        return Err(format!(
            "DS algorithm {} is not supported: {line}",
            u8::from(ds.algorithm())
        ));
    }
    Ok(ds)
}

/// Whether `key`, a DNSKEY of `owner`, is the key `ds` names (RFC 4034 section 5.1): a zone
/// key, not revoked, with the DS's key tag and algorithm, whose digest (section 5.1.4: over
/// the owner name in canonical wire form followed by the DNSKEY RDATA) is the DS's digest.
pub fn ds_matches(owner: &Name, ds: &DS, key: &DNSKEY) -> bool {
    key.zone_key()
        && !key.revoke()
        && key.public_key().algorithm() == ds.algorithm()
        && key.calculate_key_tag().is_ok_and(|tag| tag == ds.key_tag())
        && ds.covers(owner, key).unwrap_or(false)
}

/// The keys of `dnskeys` (the DNSKEY RRset of `owner`) that some DS of `ds` names.
pub fn ds_anchor_keys<'k>(owner: &Name, ds: &[&DS], dnskeys: &'k [DNSKEY]) -> Vec<&'k DNSKEY> {
    dnskeys
        .iter()
        .filter(|key| ds.iter().any(|d| ds_matches(owner, d, key)))
        .collect()
}

/// The zone keys (not revoked) of `owner`'s DNSKEY RRset `records`, once one of `rrsigs`
/// verifies over that RRset at `now` (Unix seconds): an RRSIG covering DNSKEY, by signer
/// `owner`, within its validity period, made by one of `trusted` (a zone key with the RRSIG's
/// algorithm and key tag) (RFC 4035 section 5.3). The RRset is then the zone's own, as signed
/// by the anchored key, and all its keys can be anchored.
///
/// # Errors
/// Why no RRSIG verified, in one line.
pub fn self_signed_keys(
    owner: &Name,
    records: &[Record],
    rrsigs: &[RRSIG],
    trusted: &[&DNSKEY],
    now: u32,
) -> Result<Vec<DNSKEY>, String> {
    let now = SerialNumber::new(now);
    let mut tried = 0;
    for rrsig in rrsigs {
        let input = rrsig.input();
        if input.type_covered != RecordType::DNSKEY || input.signer_name != *owner {
            continue;
        }
        let Some(key) = trusted.iter().find(|k| {
            k.zone_key()
                && !k.revoke()
                && k.public_key().algorithm() == input.algorithm
                && k.calculate_key_tag().is_ok_and(|t| t == input.key_tag)
        }) else {
            continue;
        };
        tried += 1;
        if !(input.sig_inception <= now && now <= input.sig_expiration) {
            continue;
        }
        if key
            .verify_rrsig(owner, DNSClass::IN, rrsig, records.iter())
            .is_ok()
        {
            return Ok(records
                .iter()
                .filter(|r| r.name == *owner && r.dns_class == DNSClass::IN)
                .filter_map(|r| match &r.data {
                    RData::DNSSEC(DNSSECRData::DNSKEY(k)) if k.zone_key() && !k.revoke() => {
                        Some(k.clone())
                    }
                    _ => None,
                })
                .collect());
        }
    }
    Err(if tried == 0 {
        format!("no RRSIG over the DNSKEY RRset of {owner} by an anchored key")
    } else {
        format!(
            "no valid RRSIG over the DNSKEY RRset of {owner} by an anchored key ({tried} tried: expired or not verifying)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchor_text() {
        assert!(parse_trust_anchors("; nothing\n").is_err());
        assert!(parse_trust_anchors("lab. A 127.0.0.1\n").is_err());
        let key = "lab. 3600 IN DNSKEY 257 3 15 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc=\n";
        let file = parse_trust_anchors(key).unwrap();
        assert!(file.ds.is_empty());
        assert_eq!(
            file.dnskeys.len(),
            1,
            "the DNSKEY line is listed with its owner"
        );
        // keymgr's form: no TTL, no class.
        let key = "lab. DNSKEY 257 3 15 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc= ; KSK\n";
        let file = parse_trust_anchors(key).unwrap();
        let lab = Name::from_ascii("lab.").unwrap();
        assert_eq!(file.dnskeys.len(), 1);
        assert_eq!(file.dnskeys[0].0, lab);
        assert!(file.dnskeys[0].1.secure_entry_point(), "flags 257: a KSK");
    }

    /// Found by the `trust_anchor` fuzz target: a lone CR (or another control character) in
    /// a line came out raw in the reason, and the config error spanned two lines.
    #[test]
    fn reasons_escape_control_characters() {
        let reason = parse_trust_anchors("lab.\rfake DS 4711 15 2 00\n").unwrap_err();
        assert_eq!(
            reason,
            "DS digest has the wrong length for its type: lab.\\rfake DS 4711 15 2 00"
        );
        let reason = parse_trust_anchors("lab. A\u{1b}]0:title\u{7} 1\n").unwrap_err();
        assert_eq!(
            reason,
            "not a DNSKEY or DS record: lab. A\\u{1b}]0:title\\u{7} 1"
        );
    }

    /// Found by the `trust_anchor` fuzz target: a DNSKEY line with an algorithm hickory does
    /// not implement reached hickory's key decoder, which asserts a supported algorithm.
    #[test]
    fn dnskey_with_an_unsupported_algorithm_is_refused() {
        let reason =
            parse_trust_anchors("lab. DNSKEY 256 3 53 BL4vzcaEuW7MxzxkZYwlaUc=\n").unwrap_err();
        assert_eq!(
            reason,
            "DNSKEY algorithm 53 is not supported: lab. DNSKEY 256 3 53 BL4vzcaEuW7MxzxkZYwlaUc="
        );
        let reason = parse_trust_anchors("lab. DNSKEY 257 3 35 OPFiRjIJSJKSXm4B80B8F1D39A95aUc=\n")
            .unwrap_err();
        assert!(
            reason.starts_with("DNSKEY algorithm 35 is not supported"),
            "{reason}"
        );
        let reason = parse_trust_anchors("lab. DNSKEY 257 3\n").unwrap_err();
        assert_eq!(reason, "invalid DNSKEY record: lab. DNSKEY 257 3");
    }

    /// keymgr's output for one ed25519 KSK of `lab.` (knot 3): its DNSKEY and both DS lines.
    const LAB_DNSKEY: &str = "OPFiRjIJSJKSXmW1J7SqChYIOaaFouKePXlFXCAlmnA=";
    const LAB_DS: &str = "lab. DS 55568 15 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6
lab. 3600 IN DS 55568 15 4 4472dab90b3dc39b7c952378a635db06d34935449c4636737bd5bfd0abeb769d2f827461c6231876d6dd109a3dfdfc00
";

    fn lab_key(flags: u16) -> DNSKEY {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(LAB_DNSKEY)
            .unwrap();
        DNSKEY::with_flags(
            flags,
            hickory_resolver::proto::dnssec::PublicKeyBuf::new(
                bytes,
                hickory_resolver::proto::dnssec::Algorithm::ED25519,
            ),
        )
    }

    #[test]
    fn ds_lines_parse() {
        let file = parse_trust_anchors(LAB_DS).unwrap();
        assert!(file.keys.is_empty());
        let lab = Name::from_ascii("lab.").unwrap();
        assert_eq!(file.ds.len(), 2);
        assert!(
            file.ds
                .iter()
                .all(|(owner, ds)| *owner == lab && ds.key_tag() == 55568)
        );
        assert_eq!(file.ds[0].1.digest_type(), DigestType::SHA256);
        assert_eq!(file.ds[1].1.digest_type(), DigestType::SHA384);
        // DS and DNSKEY lines together; an owner without the final dot.
        let mixed = format!("lab DNSKEY 257 3 15 {LAB_DNSKEY}\n{LAB_DS}");
        let file = parse_trust_anchors(&mixed).unwrap();
        assert_eq!(file.ds.len(), 2);
        let bad = [
            "lab. DS 4711 15 2 0000",                                     // short digest
            "lab. DS 4711 15 1 00112233445566778899aabbccddeeff00112233", // SHA-1
            "lab. DS 4711 15 3 00",                                       // GOST / unknown
            "lab. DS 4711 15 2 zz",                                       // not hex
            "lab. DS 4711 15 2",                                          // no digest
            "DS 4711 15 2 00",                                            // no owner
            "lab. DS 4711 200 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6",
        ];
        for line in bad {
            assert!(parse_trust_anchors(line).is_err(), "{line}");
        }
        let odd =
            "lab. DS 4711 15 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6f";
        assert!(parse_trust_anchors(odd).is_err());
    }

    #[test]
    fn ds_digest_matches_keymgr_vector() {
        let lab = Name::from_ascii("lab.").unwrap();
        let key = lab_key(257);
        assert_eq!(key.calculate_key_tag().unwrap(), 55568);
        let file = parse_trust_anchors(LAB_DS).unwrap();
        for (owner, ds) in &file.ds {
            assert_eq!(
                key.to_digest(owner, ds.digest_type()).unwrap().as_ref(),
                ds.digest()
            );
            assert!(ds_matches(owner, ds, &key));
            // The owner name is part of the digest, case-insensitively.
            assert!(ds_matches(&Name::from_ascii("LAB.").unwrap(), ds, &key));
            assert!(!ds_matches(&Name::from_ascii("other.").unwrap(), ds, &key));
        }
        // Flags are in the digest and the key tag: the same key as a ZSK (256) is not named;
        // a key without the zone flag is never an anchor.
        let ds: Vec<&DS> = file.ds.iter().map(|(_, d)| d).collect();
        let keys = [lab_key(256), lab_key(1), key.clone()];
        let matched = ds_anchor_keys(&lab, &ds, &keys);
        assert_eq!(matched, vec![&key]);
        assert!(ds_anchor_keys(&lab, &ds, &keys[..2]).is_empty());
        // A DS with a changed digest, key tag or algorithm names nothing.
        let d = &file.ds[0].1;
        let mut digest = d.digest().to_vec();
        digest[0] ^= 1;
        let changed = [
            DS::new(d.key_tag(), d.algorithm(), d.digest_type(), digest),
            DS::new(
                d.key_tag() ^ 1,
                d.algorithm(),
                d.digest_type(),
                d.digest().to_vec(),
            ),
            DS::new(
                d.key_tag(),
                hickory_resolver::proto::dnssec::Algorithm::ECDSAP256SHA256,
                d.digest_type(),
                d.digest().to_vec(),
            ),
        ];
        for ds in &changed {
            assert!(!ds_matches(&lab, ds, &key), "{ds}");
        }
    }

    /// The root KSK-2017 (hickory's compiled-in root anchor) and its published DS.
    #[test]
    fn ds_digest_root_ksk_2017() {
        let anchors = TrustAnchors::default();
        let public = anchors.get(0).unwrap().clone();
        let key = DNSKEY::with_flags(257, public);
        assert_eq!(key.calculate_key_tag().unwrap(), 20326);
        let file = parse_trust_anchors(
            ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
        )
        .unwrap();
        let (root, ds) = &file.ds[0];
        assert!(root.is_root());
        assert!(ds_matches(root, ds, &key));
        assert_eq!(
            ds_anchor_keys(root, &[ds], std::slice::from_ref(&key)),
            vec![&key]
        );
    }
}
