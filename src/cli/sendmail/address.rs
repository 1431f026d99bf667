//! Addresses as `postern sendmail` finds them in arguments and header fields: address lists
//! with groups, and the cheap check that an address can go on a command line at all.

use crate::session::headers::{Where, mailbox_addresses, structured_chars};

/// The addresses of an address list (RFC 5322 section 3.4): mailboxes as
/// [`mailbox_addresses`] reads them, plus groups (`Team: a@x, b@y;`, `undisclosed-recipients:;`),
/// whose display names are dropped.
pub(super) fn address_list(value: &str) -> Vec<String> {
    // Rewrite groups into plain mailbox lists: drop `phrase:` and turn `;` into `,`, both only
    // outside quoted strings, comments and angle brackets.
    let mut flat = String::with_capacity(value.len());
    let mut item_start = 0;
    for (c, place) in structured_chars(value) {
        match (place, c) {
            (Where::Plain, ':') => flat.truncate(item_start),
            (Where::Plain, ';' | ',') => {
                flat.push(',');
                item_start = flat.len();
            }
            _ => flat.push(c),
        }
    }
    mailbox_addresses(&flat)
}

/// Good enough to put in `MAIL FROM:<>`/`RCPT TO:<>`: `local@domain`, both sides non-empty, no
/// white space, control characters or angle brackets. The relay applies the real rules.
pub(super) fn plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_with_groups() {
        assert_eq!(
            address_list(" undisclosed-recipients:;"),
            Vec::<String>::new()
        );
        assert_eq!(
            address_list(" Team: a@x.org, \"B, b\" <b@x.org>; c@y.org"),
            ["a@x.org", "b@x.org", "c@y.org"]
        );
        assert_eq!(
            address_list(" \"Doe: John\" <j@x.org> (a: comment), k@y.org"),
            ["j@x.org", "k@y.org"]
        );
        assert_eq!(
            address_list("<@relay.example:r@x.org>"),
            ["@relay.example:r@x.org"]
        );
    }
}
