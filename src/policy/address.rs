//! Email address syntax as the provider accepts it for its own mailboxes and aliases.
//!
//! RFC 5321 (section 4.1.2) and RFC 5322 (section 3.4.1) allow far more than a mailbox
//! provider will create: quoted local parts, `!#$%&'*+/=?^{|}~`, IP literals. The provider FAQ
//! ("Discover the allowed characters for an email address") narrows that down, and these rules
//! are what [`parse_address`] enforces:
//!
//! - local part: 1 to 64 ASCII letters, digits, `-`, `_` and `.`; `-` neither first nor last;
//!   `.` neither first, last nor doubled. Everything else (space, `!#$%^&*()=[]<>,;"/?`, a second
//!   `@`, non-ASCII, control characters) is refused.
//! - domain: at least two dot-separated labels of ASCII letters, digits and `-`, each 1 to 63
//!   characters without a leading or trailing `-`, 253 characters in all (RFC 1035 section
//!   2.3.4, RFC 5321 section 4.5.3.1.2). No trailing root dot, no IP literal, no IDN in U-label
//!   form (an A-label `xn--...` passes, since it is plain LDH).
//!
//! Addresses are case-insensitive in practice, so the result is lowercased: the store, AUTH
//! logins and sender checks all compare canonical forms.
//!
//! This is the policy for addresses the provider *hosts* (logins, senders, aliases). It is not a
//! parser for arbitrary envelope recipients on the Internet, which may legitimately use
//! characters refused here; the session parses those with its own, RFC-wide rules.
//!
//! Errors name the first offending character and its 1-based position in the text as given,
//! counted in characters, so an operator can fix a typo without counting bytes.

use std::fmt;
use std::str::FromStr;

/// Longest local part, in characters (RFC 5321 section 4.5.3.1.1 and the FAQ).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest domain, in characters (RFC 5321 section 4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest domain label, in characters (RFC 1035 section 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Inputs longer than this are shortened in error messages, which may end up in logs.
const MAX_QUOTED_INPUT: usize = 400;

/// A syntactically valid, lowercase `local@domain` address.
///
/// The only way to build one is [`parse_address`] (or [`str::parse`]), so holding one means
/// every rule of this module has been checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress {
    text: String,
    at: usize,
}

impl EmailAddress {
    /// The part before `@`, lowercase.
    pub fn local(&self) -> &str {
        &self.text[..self.at]
    }

    /// The part after `@`, lowercase.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// The whole canonical address.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The whole canonical address, by value.
    pub fn into_string(self) -> String {
        self.text
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl FromStr for EmailAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_address(text)
    }
}

/// Which side of the `@` a problem is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Before the `@`.
    Local,
    /// After the `@`.
    Domain,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Local => "local part",
            Part::Domain => "domain",
        })
    }
}

/// What is wrong with an address. Positions are 1-based, in characters of the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressProblem {
    /// Nothing at all.
    Empty,
    /// No `@` anywhere.
    MissingAt,
    /// Nothing before the `@`.
    EmptyLocal,
    /// Nothing after the `@`.
    EmptyDomain,
    /// A character that may not appear in this part at all.
    Forbidden {
        /// The character.
        ch: char,
        /// Its position.
        position: usize,
        /// Where it is.
        part: Part,
    },
    /// `-` or `.` as the first character of the local part.
    LocalStartsWith {
        /// The character.
        ch: char,
    },
    /// `-` or `.` as the last character of the local part.
    LocalEndsWith {
        /// The character.
        ch: char,
        /// Its position.
        position: usize,
    },
    /// A `.` right after another `.` in the local part.
    DoubleDot {
        /// Position of the second dot.
        position: usize,
    },
    /// The local part is longer than [`MAX_LOCAL_LEN`].
    LocalTooLong {
        /// Its length in characters.
        len: usize,
    },
    /// The domain is longer than [`MAX_DOMAIN_LEN`].
    DomainTooLong {
        /// Its length in characters.
        len: usize,
    },
    /// An empty label: a domain starting or ending with `.`, or with `..` inside.
    EmptyLabel {
        /// Position of the `.` (or of the end) where the label is missing.
        position: usize,
    },
    /// A label longer than [`MAX_LABEL_LEN`].
    LabelTooLong {
        /// Position of the label's first character.
        position: usize,
        /// Its length in characters.
        len: usize,
    },
    /// A label that starts or ends with `-`.
    LabelHyphen {
        /// Position of the hyphen.
        position: usize,
    },
    /// A domain of one label only, such as `localhost`.
    SingleLabel,
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the address is empty"),
            Self::MissingAt => f.write_str("there is no '@' between local part and domain"),
            Self::EmptyLocal => f.write_str("the local part (before '@') is empty"),
            Self::EmptyDomain => f.write_str("the domain (after '@') is empty"),
            Self::Forbidden { ch, position, part } => {
                write!(
                    f,
                    "character {ch:?} at position {position} is not allowed in the {part}"
                )
            }
            Self::LocalStartsWith { ch } => {
                write!(f, "the local part must not start with {ch:?} (position 1)")
            }
            Self::LocalEndsWith { ch, position } => {
                write!(
                    f,
                    "the local part must not end with {ch:?} (position {position})"
                )
            }
            Self::DoubleDot { position } => {
                write!(
                    f,
                    "character '.' at position {position} follows another '.' in the local part"
                )
            }
            Self::LocalTooLong { len } => {
                write!(
                    f,
                    "the local part is {len} characters long, the limit is {MAX_LOCAL_LEN}"
                )
            }
            Self::DomainTooLong { len } => {
                write!(
                    f,
                    "the domain is {len} characters long, the limit is {MAX_DOMAIN_LEN}"
                )
            }
            Self::EmptyLabel { position } => {
                write!(f, "the domain has an empty label at position {position}")
            }
            Self::LabelTooLong { position, len } => write!(
                f,
                "the domain label at position {position} is {len} characters long, the limit is {MAX_LABEL_LEN}"
            ),
            Self::LabelHyphen { position } => write!(
                f,
                "character '-' at position {position} may not start or end a domain label"
            ),
            Self::SingleLabel => {
                f.write_str("the domain needs at least two labels, such as example.org")
            }
        }
    }
}

/// An address refused by [`parse_address`]. Displays as one line:
/// `invalid address "a!b@example.org": character '!' at position 2 is not allowed in the local part`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {}: {problem}", quoted(.input))]
pub struct AddressError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub problem: AddressProblem,
}

/// The input in double quotes with control characters escaped, shortened if huge.
fn quoted(input: &str) -> String {
    if input.chars().count() <= MAX_QUOTED_INPUT {
        format!("{input:?}")
    } else {
        let head: String = input.chars().take(MAX_QUOTED_INPUT).collect();
        format!("{head:?}...")
    }
}

/// Parses and lowercases an address the provider may host.
///
/// # Errors
/// The first rule the text breaks (see the module documentation), with the position of the
/// offending character where there is one.
pub fn parse_address(text: &str) -> Result<EmailAddress, AddressError> {
    check(text).map_err(|problem| AddressError {
        input: text.to_string(),
        problem,
    })?;
    let text = text.to_ascii_lowercase();
    let at = text.rfind('@').expect("checked: one '@'");
    Ok(EmailAddress { text, at })
}

/// The domain of `addr`: everything after the last `@`, as written (no check, no lowercasing).
/// `None` when there is no `@` or nothing after it.
pub fn domain_of(addr: &str) -> Option<&str> {
    let (_, domain) = addr.rsplit_once('@')?;
    if domain.is_empty() {
        None
    } else {
        Some(domain)
    }
}

fn check(text: &str) -> Result<(), AddressProblem> {
    if text.is_empty() {
        return Err(AddressProblem::Empty);
    }
    // Split at the last '@': an earlier one is then reported as a forbidden character of the
    // local part, with its position, which reads better than "the domain contains '@'".
    let Some(at) = text.rfind('@') else {
        return Err(AddressProblem::MissingAt);
    };
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.is_empty() {
        return Err(AddressProblem::EmptyLocal);
    }
    let local_chars = check_local(local)?;
    // Positions of domain characters continue after the local part and the '@'.
    check_domain(domain, local_chars + 2)
}

/// Checks the local part; returns its length in characters.
fn check_local(local: &str) -> Result<usize, AddressProblem> {
    let mut previous = None;
    let mut count = 0;
    for (i, ch) in local.chars().enumerate() {
        let position = i + 1;
        count = position;
        match ch {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => {}
            '-' | '.' if position == 1 => return Err(AddressProblem::LocalStartsWith { ch }),
            '.' if previous == Some('.') => return Err(AddressProblem::DoubleDot { position }),
            '-' | '.' => {}
            _ => {
                return Err(AddressProblem::Forbidden {
                    ch,
                    position,
                    part: Part::Local,
                });
            }
        }
        previous = Some(ch);
    }
    if let Some(ch @ ('-' | '.')) = previous {
        return Err(AddressProblem::LocalEndsWith {
            ch,
            position: count,
        });
    }
    if count > MAX_LOCAL_LEN {
        return Err(AddressProblem::LocalTooLong { len: count });
    }
    Ok(count)
}

/// Checks the domain; `first` is the position of its first character in the whole text.
fn check_domain(domain: &str, first: usize) -> Result<(), AddressProblem> {
    if domain.is_empty() {
        return Err(AddressProblem::EmptyDomain);
    }
    let mut labels = 0;
    let mut label_start = first;
    let mut label_len = 0;
    let mut previous = None;
    let mut end = first;
    for (i, ch) in domain.chars().enumerate() {
        let position = first + i;
        end = position + 1;
        match ch {
            'a'..='z' | 'A'..='Z' | '0'..='9' => {}
            '-' if label_len == 0 => return Err(AddressProblem::LabelHyphen { position }),
            '-' => {}
            '.' => {
                if label_len == 0 {
                    return Err(AddressProblem::EmptyLabel { position });
                }
                if previous == Some('-') {
                    return Err(AddressProblem::LabelHyphen {
                        position: position - 1,
                    });
                }
                check_label_len(label_start, label_len)?;
                labels += 1;
                label_start = position + 1;
                label_len = 0;
                previous = Some(ch);
                continue;
            }
            _ => {
                return Err(AddressProblem::Forbidden {
                    ch,
                    position,
                    part: Part::Domain,
                });
            }
        }
        label_len += 1;
        previous = Some(ch);
    }
    if label_len == 0 {
        // Trailing dot: the missing label would start right after it.
        return Err(AddressProblem::EmptyLabel { position: end - 1 });
    }
    if previous == Some('-') {
        return Err(AddressProblem::LabelHyphen { position: end - 1 });
    }
    check_label_len(label_start, label_len)?;
    labels += 1;
    let len = end - first;
    if len > MAX_DOMAIN_LEN {
        return Err(AddressProblem::DomainTooLong { len });
    }
    if labels < 2 {
        return Err(AddressProblem::SingleLabel);
    }
    Ok(())
}

fn check_label_len(position: usize, len: usize) -> Result<(), AddressProblem> {
    if len > MAX_LABEL_LEN {
        return Err(AddressProblem::LabelTooLong { position, len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> AddressProblem {
        parse_address(text).unwrap_err().problem
    }

    fn message(text: &str) -> String {
        parse_address(text).unwrap_err().to_string()
    }

    #[test]
    fn valid_addresses_are_lowercased() {
        let a = parse_address("John.Doe_1-x@Mail.Example.ORG").unwrap();
        assert_eq!(a.as_str(), "john.doe_1-x@mail.example.org");
        assert_eq!(a.local(), "john.doe_1-x");
        assert_eq!(a.domain(), "mail.example.org");
        assert_eq!(a.to_string(), "john.doe_1-x@mail.example.org");
        assert_eq!("a@b.co".parse::<EmailAddress>().unwrap().as_str(), "a@b.co");
        assert!(parse_address("a@xn--bcher-kva.example").is_ok());
        assert!(parse_address("a@123.example").is_ok());
        assert!(parse_address("a-b@a-b.c-d").is_ok());
        assert!(parse_address("_@example.org").is_ok());
    }

    #[test]
    fn example_message_from_the_brief() {
        assert_eq!(
            message("a!b@example.org"),
            "invalid address \"a!b@example.org\": character '!' at position 2 is not allowed in the local part"
        );
    }

    #[test]
    fn local_part_at_64_and_65() {
        let ok = format!("{}@example.org", "a".repeat(64));
        assert_eq!(parse_address(&ok).unwrap().local().len(), 64);
        let long = format!("{}@example.org", "a".repeat(65));
        assert_eq!(problem(&long), AddressProblem::LocalTooLong { len: 65 });
        assert!(message(&long).ends_with("the local part is 65 characters long, the limit is 64"));
    }

    #[test]
    fn every_forbidden_character_of_the_faq() {
        for ch in [
            ' ', '!', '#', '$', '%', '^', '&', '*', '(', ')', '=', '[', ']', '<', '>', ',', ';',
            '"', '/', '?', '+', '\'', '\\', '`', '{', '}', '|', '~', ':', 'é', 'ß', 'я', '\u{7}',
            '\t', '\0', '\u{7f}',
        ] {
            let text = format!("ab{ch}c@example.org");
            assert_eq!(
                problem(&text),
                AddressProblem::Forbidden {
                    ch,
                    position: 3,
                    part: Part::Local
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn control_characters_are_escaped_in_the_message() {
        let m = message("a\u{7}b@example.org");
        assert_eq!(
            m,
            "invalid address \"a\\u{7}b@example.org\": character '\\u{7}' at position 2 is not allowed in the local part"
        );
        assert!(!m.contains('\u{7}'));
    }

    #[test]
    fn non_ascii_positions_count_characters() {
        assert_eq!(
            problem("éa!@example.org"),
            AddressProblem::Forbidden {
                ch: 'é',
                position: 1,
                part: Part::Local
            }
        );
        assert_eq!(
            problem("ab@exämple.org"),
            AddressProblem::Forbidden {
                ch: 'ä',
                position: 6,
                part: Part::Domain
            }
        );
    }

    #[test]
    fn at_sign_rules() {
        assert_eq!(problem(""), AddressProblem::Empty);
        assert_eq!(problem("example.org"), AddressProblem::MissingAt);
        assert_eq!(problem("@example.org"), AddressProblem::EmptyLocal);
        assert_eq!(problem("a@"), AddressProblem::EmptyDomain);
        assert_eq!(
            problem("a@b@example.org"),
            AddressProblem::Forbidden {
                ch: '@',
                position: 2,
                part: Part::Local
            }
        );
        assert!(message("example.org").contains("no '@'"));
    }

    #[test]
    fn hyphen_rules_in_local_part() {
        assert_eq!(
            problem("-a@example.org"),
            AddressProblem::LocalStartsWith { ch: '-' }
        );
        assert_eq!(
            problem("a-@example.org"),
            AddressProblem::LocalEndsWith {
                ch: '-',
                position: 2
            }
        );
        assert_eq!(
            problem("-@example.org"),
            AddressProblem::LocalStartsWith { ch: '-' }
        );
        assert!(parse_address("a--b@example.org").is_ok());
    }

    #[test]
    fn dot_rules_in_local_part() {
        assert_eq!(
            problem(".a@example.org"),
            AddressProblem::LocalStartsWith { ch: '.' }
        );
        assert_eq!(
            problem("a.@example.org"),
            AddressProblem::LocalEndsWith {
                ch: '.',
                position: 2
            }
        );
        assert_eq!(
            problem("a..b@example.org"),
            AddressProblem::DoubleDot { position: 3 }
        );
        assert_eq!(
            message("a..b@example.org"),
            "invalid address \"a..b@example.org\": character '.' at position 3 follows another '.' in the local part"
        );
        assert!(parse_address("a.b.c@example.org").is_ok());
    }

    #[test]
    fn domain_labels() {
        assert_eq!(
            problem("a@exa_mple.org"),
            AddressProblem::Forbidden {
                ch: '_',
                position: 6,
                part: Part::Domain
            }
        );
        assert_eq!(
            problem("a@.example.org"),
            AddressProblem::EmptyLabel { position: 3 }
        );
        assert_eq!(
            problem("a@example..org"),
            AddressProblem::EmptyLabel { position: 11 }
        );
        assert_eq!(
            problem("a@example.org."),
            AddressProblem::EmptyLabel { position: 14 }
        );
        assert_eq!(
            problem("a@-example.org"),
            AddressProblem::LabelHyphen { position: 3 }
        );
        assert_eq!(
            problem("a@example-.org"),
            AddressProblem::LabelHyphen { position: 10 }
        );
        assert_eq!(
            problem("a@example.org-"),
            AddressProblem::LabelHyphen { position: 14 }
        );
        assert_eq!(problem("a@localhost"), AddressProblem::SingleLabel);
        assert_eq!(
            problem("a@[192.0.2.1]"),
            AddressProblem::Forbidden {
                ch: '[',
                position: 3,
                part: Part::Domain
            }
        );
    }

    #[test]
    fn label_at_63_and_64() {
        let ok = format!("a@{}.org", "b".repeat(63));
        assert!(parse_address(&ok).is_ok());
        let long = format!("a@{}.org", "b".repeat(64));
        assert_eq!(
            problem(&long),
            AddressProblem::LabelTooLong {
                position: 3,
                len: 64
            }
        );
        let long_last = format!("a@example.{}", "c".repeat(64));
        assert_eq!(
            problem(&long_last),
            AddressProblem::LabelTooLong {
                position: 11,
                len: 64
            }
        );
    }

    #[test]
    fn domain_at_253_and_254() {
        // 4 labels of 63 plus 3 dots = 255; trim to exact sizes with a shorter last label.
        let domain = |len: usize| {
            let mut d = format!("{0}.{0}.{0}.", "d".repeat(63));
            let rest = len - d.len();
            d.push_str(&"e".repeat(rest));
            d
        };
        let ok = format!("a@{}", domain(253));
        assert!(parse_address(&ok).is_ok(), "{ok}");
        let long = format!("a@{}", domain(254));
        assert_eq!(problem(&long), AddressProblem::DomainTooLong { len: 254 });
    }

    #[test]
    fn huge_input_is_shortened_in_messages() {
        let text = "!".repeat(10_000);
        let m = message(&text);
        assert!(m.len() < 600, "{}", m.len());
    }

    #[test]
    fn domain_of_takes_the_part_after_the_last_at() {
        assert_eq!(domain_of("a@Example.org"), Some("Example.org"));
        assert_eq!(domain_of("\"a@b\"@example.org"), Some("example.org"));
        assert_eq!(domain_of("a@"), None);
        assert_eq!(domain_of("example.org"), None);
    }
}
