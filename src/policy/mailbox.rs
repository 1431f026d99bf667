//! The one mailbox of an identity header field (`From:`, `Sender:`, `Resent-From:`,
//! `Resent-Sender:`), read strictly by the grammar of RFC 5322 section 3.4.
//!
//! The address Postern checks must be the address every reader shows, so this reader accepts
//! only the forms on which readers agree: `addr@dom`, `<addr@dom>`, and a display name of
//! atoms and quoted strings before one angle address, with comments that hold no address.
//! Everything else is [`Ambiguity`], never a guess: an unquoted `@`, `:`, `;`, `,` or `<`
//! in the display name (`bob@example.org <alice@example.org>` reads as bob in Python's
//! `email` package), groups (`x:bob@example.org;<alice@example.org>`), more than one
//! mailbox, text after the `>`, source routes, white space or comments inside the address,
//! unbalanced quotes, comments and brackets, control characters, and encoded words (RFC
//! 2047) whose decoded text holds an `@` or a control character (readers that decode before
//! they parse would find an address there).

use base64::Engine as _;

/// Why a header value is not one unambiguous mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// Nothing but white space and comments.
    Empty,
    /// A quoted string, comment, domain literal or angle address is not closed, or a `)` or
    /// `>` closes nothing.
    Unbalanced,
    /// A control character (C0 other than tab, DEL, C1).
    ControlCharacter,
    /// A comment holds an `@`: some readers show a comment as the sender's name.
    AddressInComment,
    /// A special (`@ : ; , < > [ ] \`) outside quotes in the display name.
    SpecialInDisplayName,
    /// More than one mailbox, a group, or text after the angle address.
    NotOneMailbox,
    /// The address is not `local@domain` written without white space or comments inside
    /// (a route, two `@`, an empty part, a stray dot).
    BadAddress,
    /// An encoded word in the display name decodes to an `@` or a control character.
    EncodedAddress,
}

/// The address of `value`, lower-cased, if it is exactly one unambiguous mailbox. A quoted
/// local part is returned with its quotes (`"a b"@x`), so it never equals a plain address.
pub fn single_mailbox(value: &str) -> Result<String, Ambiguity> {
    let tokens = lex(value)?;
    if tokens.is_empty() {
        return Err(Ambiguity::Empty);
    }
    let Some(open) = tokens.iter().position(|t| t.token == Token::Special('<')) else {
        if tokens
            .iter()
            .any(|t| matches!(t.token, Token::Special(',' | ':' | ';')))
        {
            return Err(Ambiguity::NotOneMailbox);
        }
        if tokens.iter().any(|t| t.token == Token::Special('>')) {
            return Err(Ambiguity::Unbalanced);
        }
        return addr_spec(&tokens);
    };
    check_display_name(&tokens[..open])?;
    let inside = &tokens[open + 1..];
    let Some(close) = inside.iter().position(|t| t.token == Token::Special('>')) else {
        return Err(Ambiguity::Unbalanced);
    };
    if inside[..close]
        .iter()
        .any(|t| t.token == Token::Special('<'))
    {
        return Err(Ambiguity::NotOneMailbox);
    }
    if close + 1 < inside.len() {
        return Err(Ambiguity::NotOneMailbox);
    }
    addr_spec(&inside[..close])
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    /// A run of `atext` (RFC 5322 section 3.2.3; non-ASCII too, RFC 6532).
    Atom(&'a str),
    /// A quoted string's content, escapes removed.
    Quoted(String),
    /// A domain literal with its brackets.
    Literal(&'a str),
    /// One of `< > : ; @ , . ] \`.
    Special(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lexeme<'a> {
    token: Token<'a>,
    /// White space or a comment stood right before it.
    spaced: bool,
}

fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !is_control(c))
}

fn lex(value: &str) -> Result<Vec<Lexeme<'_>>, Ambiguity> {
    let mut out = Vec::new();
    let mut spaced = false;
    let mut chars = value.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let token = match c {
            ' ' | '\t' => {
                spaced = true;
                continue;
            }
            '(' => {
                let mut depth = 1u32;
                while depth > 0 {
                    match chars.next().map(|(_, c)| c) {
                        None => return Err(Ambiguity::Unbalanced),
                        Some('\\') => match chars.next() {
                            None => return Err(Ambiguity::Unbalanced),
                            Some((_, c)) if is_control(c) => {
                                return Err(Ambiguity::ControlCharacter);
                            }
                            Some((_, '@')) => return Err(Ambiguity::AddressInComment),
                            Some(_) => {}
                        },
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some('@') => return Err(Ambiguity::AddressInComment),
                        Some(c) if is_control(c) => return Err(Ambiguity::ControlCharacter),
                        Some(_) => {}
                    }
                }
                spaced = true;
                continue;
            }
            ')' => return Err(Ambiguity::Unbalanced),
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        None => return Err(Ambiguity::Unbalanced),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(Ambiguity::Unbalanced),
                            Some((_, c)) if is_control(c) => {
                                return Err(Ambiguity::ControlCharacter);
                            }
                            Some((_, c)) => text.push(c),
                        },
                        Some(c) if is_control(c) => return Err(Ambiguity::ControlCharacter),
                        Some(c) => text.push(c),
                    }
                }
                Token::Quoted(text)
            }
            '[' => {
                let end = loop {
                    match chars.next() {
                        None => return Err(Ambiguity::Unbalanced),
                        Some((i, ']')) => break i + 1,
                        Some((_, '[' | '\\')) => return Err(Ambiguity::BadAddress),
                        Some((_, c)) if is_control(c) => return Err(Ambiguity::ControlCharacter),
                        Some(_) => {}
                    }
                };
                Token::Literal(&value[start..end])
            }
            '<' | '>' | ':' | ';' | '@' | ',' | '.' | ']' | '\\' => Token::Special(c),
            c if is_control(c) => return Err(Ambiguity::ControlCharacter),
            _ => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if !is_atext(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                Token::Atom(&value[start..end])
            }
        };
        out.push(Lexeme { token, spaced });
        spaced = false;
    }
    Ok(out)
}

/// A display name is a phrase: words (atoms, quoted strings), and dots after the first word
/// (RFC 5322 `obs-phrase`, as in `John Q. Public`). Its encoded words are checked on the
/// text as a reader joins it, dots included: lenient decoders take `=?utf-8?q?a=40b.c?=` as
/// one encoded word although the dot ends the atom.
fn check_display_name(tokens: &[Lexeme<'_>]) -> Result<(), Ambiguity> {
    let mut text = String::new();
    for (i, lexeme) in tokens.iter().enumerate() {
        if lexeme.spaced && i > 0 {
            text.push(' ');
        }
        match &lexeme.token {
            Token::Atom(word) => text.push_str(word),
            Token::Quoted(quoted) => text.push_str(quoted),
            Token::Special('.') if i > 0 => text.push('.'),
            Token::Special(_) | Token::Literal(_) => return Err(Ambiguity::SpecialInDisplayName),
        }
    }
    check_encoded_words(&text)
}

/// `local@domain`: a dot-atom or quoted string, `@`, a dot-atom or domain literal, with
/// nothing between the tokens (white space is allowed only before and after the whole).
fn addr_spec(tokens: &[Lexeme<'_>]) -> Result<String, Ambiguity> {
    if tokens.iter().skip(1).any(|t| t.spaced) {
        return Err(Ambiguity::BadAddress);
    }
    let mut at = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.token == Token::Special('@'))
        .map(|(i, _)| i);
    let (Some(at), None) = (at.next(), at.next()) else {
        return Err(Ambiguity::BadAddress);
    };
    let local = match &tokens[..at] {
        [
            Lexeme {
                token: Token::Quoted(text),
                ..
            },
        ] => format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
        dot_atom => dot_atom_text(dot_atom)?,
    };
    let domain = match &tokens[at + 1..] {
        // An address literal (RFC 5321 4.1.3: IPv4, `IPv6:...`, `tag:...`) and nothing else:
        // RFC 5322 lets a domain literal hold white space, `<`, `>` and `@`, which other
        // readers take for an address of its own.
        [
            Lexeme {
                token: Token::Literal(literal),
                ..
            },
        ] if literal[1..literal.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-')) =>
        {
            literal.to_string()
        }
        [
            Lexeme {
                token: Token::Literal(_),
                ..
            },
        ] => return Err(Ambiguity::BadAddress),
        dot_atom => dot_atom_text(dot_atom)?,
    };
    Ok(format!("{local}@{domain}").to_lowercase())
}

/// The text of `atom *("." atom)`.
fn dot_atom_text(tokens: &[Lexeme<'_>]) -> Result<String, Ambiguity> {
    if tokens.len().is_multiple_of(2) {
        return Err(Ambiguity::BadAddress);
    }
    let mut text = String::new();
    for (i, lexeme) in tokens.iter().enumerate() {
        match (&lexeme.token, i % 2) {
            (Token::Atom(atom), 0) => text.push_str(atom),
            (Token::Special('.'), 1) => text.push('.'),
            _ => return Err(Ambiguity::BadAddress),
        }
    }
    Ok(text)
}

/// Refuses encoded words (`=?charset?B|Q?text?=`) in `word` whose decoded bytes hold an `@` or
/// a control character. An encoded word that does not decode is left alone: no reader can
/// find an address in it.
fn check_encoded_words(word: &str) -> Result<(), Ambiguity> {
    let mut rest = word;
    while let Some(start) = rest.find("=?") {
        rest = &rest[start + 2..];
        let mut parts = rest.splitn(3, '?');
        let (Some(charset), Some(encoding), Some(tail)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Ok(());
        };
        let Some(end) = tail.find("?=") else {
            return Ok(());
        };
        let text = &tail[..end];
        let decoded = match encoding {
            "B" | "b" => base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
                .decode(text)
                .unwrap_or_default(),
            "Q" | "q" => decode_q(text),
            _ => Vec::new(),
        };
        if decoded.iter().any(|&b| b == b'@' || b < 0x20 || b == 0x7f) {
            return Err(Ambiguity::EncodedAddress);
        }
        rest = &rest[charset.len() + encoding.len() + 2 + end + 2..];
    }
    Ok(())
}

/// RFC 2047 section 4.2: `_` is a space, `=XX` a byte in hex.
fn decode_q(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'_', _) => out.push(b' '),
            (b'=', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `mailbox` fuzz target: a domain literal may hold an angle address, which
    /// the mailbox-list reader (and others) then took for the address.
    #[test]
    fn a_domain_literal_is_an_address_literal_only() {
        assert_eq!(
            single_mailbox("a@[912.0.2.A (c) <a.b@x.Y>1]"),
            Err(Ambiguity::BadAddress)
        );
        assert_eq!(
            single_mailbox("a@[192.0.2.1 <b@x.org>]"),
            Err(Ambiguity::BadAddress)
        );
        assert_eq!(
            single_mailbox("a@[192.0.2.1]").as_deref(),
            Ok("a@[192.0.2.1]")
        );
        assert_eq!(
            single_mailbox("A <a@[IPv6:2001:db8::1]>").as_deref(),
            Ok("a@[ipv6:2001:db8::1]")
        );
    }

    #[test]
    fn accepted_forms_give_the_address_every_reader_sees() {
        for (value, address) in [
            ("alice@example.org", "alice@example.org"),
            (" Alice@Example.ORG ", "alice@example.org"),
            ("<alice@example.org>", "alice@example.org"),
            ("Alice Example <alice@example.org>", "alice@example.org"),
            (
                "\"Example, Alice\" <alice@example.org>",
                "alice@example.org",
            ),
            (
                "\"alice@example.org\" <alice@example.org>",
                "alice@example.org",
            ),
            (
                "\"bob@example.org <x>; y:\" <alice@example.org>",
                "alice@example.org",
            ),
            (
                "\"A \\\"quoted\\\" name\" <alice@example.org>",
                "alice@example.org",
            ),
            ("alice@example.org (Alice Example)", "alice@example.org"),
            (
                "Alice (the (nested) one) <alice@example.org> (work)",
                "alice@example.org",
            ),
            ("John Q. Public <alice@example.org>", "alice@example.org"),
            (
                "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <alice@example.org>",
                "alice@example.org",
            ),
            (
                "=?UTF-8?B?SsO2cmcsIE3DvGxsZXI=?= <alice@example.org>",
                "alice@example.org",
            ),
            ("J\u{f6}rg <alice@example.org>", "alice@example.org"),
            ("Alice<alice@example.org>", "alice@example.org"),
            ("< alice@example.org >", "alice@example.org"),
            ("\tAlice\t<alice@example.org>", "alice@example.org"),
            (
                "<first.last+tag@sub.example.org>",
                "first.last+tag@sub.example.org",
            ),
            ("\"a b\"@example.org", "\"a b\"@example.org"),
            ("alice@[192.0.2.1]", "alice@[192.0.2.1]"),
        ] {
            assert_eq!(single_mailbox(value), Ok(address.to_string()), "{value}");
        }
    }

    #[test]
    fn ambiguous_forms_are_refused_with_their_reason() {
        use Ambiguity::*;
        for (value, why) in [
            ("", Empty),
            ("   ", Empty),
            ("(alice)", Empty),
            ("bob@example.org <alice@example.org>", SpecialInDisplayName),
            (
                "x:bob@example.org;<alice@example.org>",
                SpecialInDisplayName,
            ),
            ("x:bob@example.org;", NotOneMailbox),
            ("undisclosed-recipients:;", NotOneMailbox),
            ("Team: alice@example.org;", NotOneMailbox),
            ("alice@example.org, bob@example.org", NotOneMailbox),
            ("<alice@example.org>, <bob@example.org>", NotOneMailbox),
            ("Doe, John <alice@example.org>", SpecialInDisplayName),
            ("<bob@example.org><alice@example.org>", NotOneMailbox),
            ("<alice@example.org> bob@example.org", NotOneMailbox),
            ("<alice@example.org> <bob@example.org>", NotOneMailbox),
            ("Bob <bob@example.org> <alice@example.org>", NotOneMailbox),
            ("alice@example.org <bob@example.org>", SpecialInDisplayName),
            ("bob@example.org; <alice@example.org>", SpecialInDisplayName),
            ("bob:<alice@example.org>", SpecialInDisplayName),
            ("[bob] <alice@example.org>", SpecialInDisplayName),
            ("bob\\x <alice@example.org>", SpecialInDisplayName),
            (". Bob <alice@example.org>", SpecialInDisplayName),
            ("alice@example.org (bob@example.org)", AddressInComment),
            ("(bob@example.org) <alice@example.org>", AddressInComment),
            ("Bob (\\@) <alice@example.org>", AddressInComment),
            ("alice@example.org (unclosed", Unbalanced),
            ("alice@example.org )", Unbalanced),
            ("\"Bob <alice@example.org>", Unbalanced),
            ("<alice@example.org", Unbalanced),
            ("alice@example.org>", Unbalanced),
            ("alice@[192.0.2.1", Unbalanced),
            ("\"CEO\" <>", BadAddress),
            ("Alice", BadAddress),
            ("<@relay.example:alice@example.org>", BadAddress),
            ("alice@bob@example.org", BadAddress),
            ("alice @example.org", BadAddress),
            ("alice@ example.org", BadAddress),
            ("alice(x)@example.org", BadAddress),
            ("alice@example.org.", BadAddress),
            (".alice@example.org", BadAddress),
            ("alice..x@example.org", BadAddress),
            ("@example.org", BadAddress),
            ("alice@", BadAddress),
            ("Bob\u{1b}]0;x\u{7} <alice@example.org>", ControlCharacter),
            ("\"Bob\u{0}\" <alice@example.org>", ControlCharacter),
            ("alice\u{7f}@example.org", ControlCharacter),
            ("Bob\u{85} <alice@example.org>", ControlCharacter),
            (
                "=?utf-8?q?bob=40example.org?= <alice@example.org>",
                EncodedAddress,
            ),
            (
                "=?utf-8?Q?bob@example.org?= <alice@example.org>",
                SpecialInDisplayName,
            ),
            (
                "=?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?= <alice@example.org>",
                EncodedAddress,
            ),
            (
                "\"=?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?=\" <alice@example.org>",
                EncodedAddress,
            ),
            ("=?utf-8?q?Bob=00?= <alice@example.org>", EncodedAddress),
            (
                "Alice =?utf-8?q?x?= =?utf-8?b?QA==?= <alice@example.org>",
                EncodedAddress,
            ),
        ] {
            assert_eq!(single_mailbox(value), Err(why), "{value:?}");
        }
    }

    #[test]
    fn q_decoding() {
        assert_eq!(decode_q("a_b=3Dc=4"), b"a b=c=4");
        assert_eq!(decode_q("=+1=zz"), b"=+1=zz");
    }
}
