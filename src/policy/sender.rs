//! Sender ownership: after AUTH, the envelope sender (`MAIL FROM`) and every address in the
//! header `From:` must be the authenticated address or one of its aliases.
//!
//! One function serves both checks so they can never disagree. Comparison is on the
//! lower-cased address: the provider treats local parts case-insensitively, and so do
//! the store's canonical forms.

/// Whether `address` is one the user may send as. `senders` holds the login address and its
/// aliases, lower case. The null sender (`<>`) is never owned: bounces come from Postern.
pub fn may_send_as(senders: &[String], address: &str) -> bool {
    !address.is_empty() && senders.iter().any(|s| s.eq_ignore_ascii_case(address))
}

/// Whether `address` holds a control character (C0, DEL or C1). RFC 5321's path grammar has
/// none anywhere, quoted local parts included (`qtextSMTP` and `quoted-pairSMTP` are printable
/// ASCII; RFC 6531 adds only non-ASCII text), and one that got through would reach DSNs, logs
/// and the next hop.
pub fn has_control_characters(address: &str) -> bool {
    address.chars().any(char::is_control)
}

/// Whether a RCPT address can be delivered anywhere: no control characters, a non-empty local
/// part, an `@`, and a domain with at least one dot or an address literal.
pub fn is_routable_recipient(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !has_control_characters(address)
        && !local.is_empty()
        && !domain.is_empty()
        && (domain.contains('.') || domain.starts_with('['))
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership() {
        let senders = vec![
            "alice@example.org".to_string(),
            "sales@example.org".to_string(),
        ];
        assert!(may_send_as(&senders, "alice@example.org"));
        assert!(may_send_as(&senders, "Sales@Example.org"));
        assert!(!may_send_as(&senders, "bob@example.org"));
        assert!(!may_send_as(&senders, ""));
    }

    #[test]
    fn routable() {
        assert!(is_routable_recipient("b@example.net"));
        assert!(is_routable_recipient("\"john doe\"@example.net"));
        for hostile in [
            "\"a\u{1b}]0;x\u{7}\"@example.net",
            "a\u{7f}b@example.net",
            "a@ex\u{9b}.net",
        ] {
            assert!(has_control_characters(hostile), "{hostile:?}");
            assert!(!is_routable_recipient(hostile), "{hostile:?}");
        }
        assert!(is_routable_recipient("b@[192.0.2.1]"));
        assert!(!is_routable_recipient("postmaster"));
        assert!(!is_routable_recipient("b@localhost"));
        assert!(!is_routable_recipient("@example.net"));
    }
}
