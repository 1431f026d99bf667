//! The header facts (`session/headers.rs`), the `Received:` prefix built from client-chosen
//! names, and the strict mailbox reader (`policy/mailbox.rs`).
//!
//! What must hold:
//! - every address the facts report is lower case and is itself one unambiguous mailbox,
//!   read back unchanged, bare or in angle brackets; counts agree with the addresses;
//! - the header section end is where a blank line ends;
//! - the prefix Postern puts in front of a message is header fields only: CRLF lines, folded
//!   with a tab, one `Received:` field whatever the client called itself, no `From:` and no
//!   identity field, and `Message-ID:` and `Date:` exactly when the message lacks them;
//! - a mailbox the strict reader accepts is read as the same single address by the lenient
//!   mailbox-list reader (`postern sendmail -t`): two readers that disagree about one address
//!   are the confusion the strict reader exists to prevent.

use std::time::{Duration, UNIX_EPOCH};

use super::Input;
use crate::policy::mailbox::single_mailbox;
use crate::session::headers::{
    HeaderFacts, TraceInfo, blank_line_end, build_prefix, header_section_end, mailbox_addresses,
    scan_headers,
};

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let helo = input.text(300);
    let client_ip = input.text(60);
    let seconds = input.u32();
    let section = input.rest();

    if let Some(end) = header_section_end(section) {
        assert!(end <= section.len());
        assert!(
            section[..end].ends_with(b"\r\n\r\n") || (end == 2 && section.starts_with(b"\r\n")),
            "section end {end} is not after a blank line"
        );
    }
    if let Some(end) = blank_line_end(section) {
        assert!(section[..end].ends_with(b"\r\n\r\n"));
    }

    let facts = scan_headers(section);
    check_facts(&facts);

    let trace = TraceInfo {
        helo: &helo,
        client_ip: &client_ip,
        hostname: "postern.test",
        protocol: "ESMTPSA",
        id: "0123456789ABCDEF01234",
        tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384"),
    };
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(seconds));
    let prefix = build_prefix(&facts, &trace, now);
    let joined = prefix.joined();
    for line in joined.split_inclusive('\n') {
        let text = line
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("a prefix line without CRLF: {line:?}"));
        assert!(!text.contains('\r'), "a bare CR in the prefix: {line:?}");
        assert!(!text.is_empty(), "an empty line in the prefix");
        assert!(
            text.chars().all(|c| !c.is_control() || c == '\t'),
            "a control character in the prefix: {line:?}"
        );
        assert!(text.len() <= 998, "a prefix line over 998 octets");
    }
    let added = scan_headers(joined.as_bytes());
    assert_eq!(
        added.received_fields, 1,
        "the prefix is not one Received field"
    );
    assert_eq!(added.from_fields, 0);
    assert!(added.identities.is_empty());
    assert_eq!(added.has_message_id, !facts.has_message_id);
    assert_eq!(added.has_date, !facts.has_date);
}

fn check_facts(facts: &HeaderFacts) {
    assert!(facts.from.len() <= facts.from_fields);
    assert_eq!(
        facts.from.len() < facts.from_fields,
        facts.from_malformed,
        "From counts disagree"
    );
    let identities = facts.identities.iter().filter_map(|f| f.address.as_ref());
    for address in facts.from.iter().chain(identities) {
        check_accepted(address);
    }
}

/// What a mailbox the strict reader returned must be.
fn check_accepted(address: &str) {
    assert!(
        !address.chars().any(|c| c.is_ascii_uppercase()),
        "not lower case: {address:?}"
    );
    assert!(address.contains('@'), "no @ in {address:?}");
    // Tab is folding white space, allowed in a quoted local part (RFC 5322 3.2.4).
    assert!(
        !address.chars().any(|c| c.is_control() && c != '\t'),
        "a control character in {address:?}"
    );
    assert_eq!(
        single_mailbox(address).as_deref(),
        Ok(address),
        "the address alone reads differently"
    );
    assert_eq!(
        single_mailbox(&format!("<{address}>")).as_deref(),
        Ok(address),
        "the address in angle brackets reads differently"
    );
    assert_eq!(
        single_mailbox(&format!("Someone <{address}>")).as_deref(),
        Ok(address),
        "the address after a display name reads differently"
    );
}

pub(super) fn run_mailbox(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(address) = single_mailbox(value) else {
        return;
    };
    check_accepted(&address);
    // A quoted local part keeps its quotes here; the lenient reader drops quoted text.
    // It folds ASCII case only; the strict reader folds all of it.
    if !address.contains('"') {
        let lenient: Vec<String> = mailbox_addresses(value)
            .iter()
            .map(|a| a.to_lowercase())
            .collect();
        assert_eq!(
            lenient,
            vec![address.clone()],
            "the mailbox-list reader reads {value:?} differently"
        );
    }
    // As a From field, the one mailbox is the one the session checks.
    let facts = scan_headers(format!("From:{value}\r\n").as_bytes());
    assert_eq!(facts.from, vec![address]);
}
