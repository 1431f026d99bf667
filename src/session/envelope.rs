//! The envelope as the client wrote it, where smtp-proto's parsed form loses what matters:
//! the ESMTP parameter keywords of a MAIL or RCPT line (so unadvertised ones can be refused,
//! RFC 5321 section 4.1.1.11), and the quoting of a local part (smtp-proto hands back
//! `john doe@example.net` for `"john doe"@example.net`, which no server can parse).

/// Longest parameter name echoed in a reply.
const MAX_NAME_IN_REPLY: usize = 64;

/// The ESMTP parameter keywords of a `MAIL FROM:` or `RCPT TO:` command line, upper-cased, in
/// the order given: what follows the path's closing `>` (quoted local parts may hold `>` and
/// spaces), one keyword per space-separated `KEYWORD[=value]`.
pub fn parameter_names(line: &[u8]) -> Vec<String> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Vec::new();
    };
    let rest = &line[colon + 1..];
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let rest = &rest[start..];
    let after_path = if rest.first() == Some(&b'<') {
        match path_end(rest) {
            Some(end) => &rest[end..],
            None => return Vec::new(),
        }
    } else {
        // No angle brackets (not RFC 5321, but smtp-proto reads it): the path is the first word.
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        &rest[end..]
    };
    after_path
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|word| !word.is_empty())
        .map(|word| {
            let name = word.split(|&b| b == b'=').next().unwrap_or(word);
            // The name goes into a reply line: printable ASCII only, and not a line's worth.
            name.iter()
                .take(MAX_NAME_IN_REPLY)
                .map(|&b| {
                    if b.is_ascii_graphic() {
                        char::from(b.to_ascii_uppercase())
                    } else {
                        '?'
                    }
                })
                .collect()
        })
        .collect()
}

/// The offset just past the `>` closing the path that starts at `path[0] == b'<'`, skipping
/// quoted strings (with their backslash escapes).
fn path_end(path: &[u8]) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in path.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `address` (as smtp-proto unquoted it) with its local part quoted again where RFC 5321
/// section 4.1.2 needs it: a local part that is not a Dot-string becomes a Quoted-string
/// (`"john doe"@example.net`, backslash before `"` and `\`), so it is relayed, logged and
/// bounced to as the client wrote it. A Dot-string stays as it is (`"alice"@x` and `alice@x`
/// are the same mailbox, and ownership compares the plain form).
pub fn quote_local_part(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_string();
    };
    if is_dot_string(local) {
        return address.to_string();
    }
    let mut quoted = String::with_capacity(address.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push_str("\"@");
    quoted.push_str(domain);
    quoted
}

/// RFC 5321 Dot-string: atoms of atext (RFC 6531 adds UTF-8 to it) joined by single dots.
fn is_dot_string(local: &str) -> bool {
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom.chars().all(|c| {
                    !c.is_ascii() || c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
                })
        })
}

/// Whether the domain of `address` is an address literal (`[192.0.2.1]`, `[IPv6:...]`), also
/// when the client quoted it (`x@"[10.0.0.5]"`, which smtp-proto unquotes to the same text).
pub fn has_address_literal(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_after_the_path() {
        assert_eq!(
            parameter_names(b"MAIL FROM:<a@b.c> SIZE=10 body=8bitmime SMTPUTF8\r\n"),
            ["SIZE", "BODY", "SMTPUTF8"]
        );
        assert_eq!(
            parameter_names(b"RCPT TO:<\"x> FOO=1\"@b.c>  requiretls foo=bar\r\n"),
            ["REQUIRETLS", "FOO"]
        );
        assert_eq!(
            parameter_names(b"MAIL FROM: <\"a\\\" >\"@b.c> RET=FULL\r\n"),
            ["RET"]
        );
        assert!(parameter_names(b"MAIL FROM:<>\r\n").is_empty());
        assert_eq!(parameter_names(b"MAIL FROM:a@b.c X=1\r\n"), ["X"]);
        assert_eq!(parameter_names(b"MAIL FROM:<> \x1b]0;\xff\r\n"), ["?]0;?"]);
    }

    #[test]
    fn local_parts_that_need_quotes_get_them_back() {
        assert_eq!(
            quote_local_part("john doe@example.net"),
            "\"john doe\"@example.net"
        );
        assert_eq!(quote_local_part("a\"b\\c@x.y"), "\"a\\\"b\\\\c\"@x.y");
        assert_eq!(quote_local_part("a@b@x.y"), "\"a@b\"@x.y");
        assert_eq!(quote_local_part("..@x.y"), "\"..\"@x.y");
        assert_eq!(quote_local_part("first.last+tag@x.y"), "first.last+tag@x.y");
        assert_eq!(quote_local_part("pelé@x.y"), "pelé@x.y");
        assert_eq!(quote_local_part(""), "");
    }

    #[test]
    fn address_literals() {
        assert!(has_address_literal("x@[10.0.0.5]"));
        assert!(has_address_literal("x@[IPv6:::1]"));
        assert!(!has_address_literal("x@example.net"));
        assert!(!has_address_literal("\"x@[10.0.0.5]\"@example.net"));
    }
}
