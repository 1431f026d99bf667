//! `postern sendmail`: a sendmail(8)-compatible entry point, for PHP's `sendmail_path` and the
//! tools that call `/usr/sbin/sendmail`.
//!
//! ```text
//! postern [--config PATH] sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RECIPIENT...]
//! ```
//!
//! It reads one message on standard input and submits it over plain SMTP (EHLO, MAIL, RCPT...,
//! DATA) to the relay listener of the config (`listen.relay`; an unspecified address such as
//! `0.0.0.0` means this machine's loopback). It is the client side of the port-25 path: the
//! relay decides by the client's network which hosting account sends, and counts the
//! recipients against that account's daily limit.
//!
//! # Options
//! - `-t`: also take recipients from the `To:`, `Cc:` and `Bcc:` fields (unfolded, full
//!   address-list syntax: display names, quoted strings, comments, groups). If the message has
//!   `Resent-To:`/`Resent-Cc:`/`Resent-Bcc:` fields, those are used instead (RFC 5322 section
//!   3.6.6). Recipients named as arguments are added to these (as Postfix does).
//! - `-i`, `-oi`: a line with a single `.` does not end the input (without it, such a line
//!   ends the message, as in sendmail).
//! - `-f SENDER` (also `-fSENDER`, `-r`): the envelope sender; `-f '<>'` is the null sender.
//!   Default: the first address of the `From:` field, else `$USER@hostname`.
//! - `-F NAME`: the display name of the `From:` field that is added when the message has none.
//! - Accepted and ignored: `-v`, `-m`, `-n`, `-bm`, `-o` options other than `-oi` (`-odi`,
//!   `-oem`, ...), `-O`, `-B`, `-N`, `-R`, `-V`. Anything else is a usage error.
//!
//! # What is done to the message
//! Line ends are made CRLF (a bare LF or a bare CR ends a line, as written by PHP on Unix),
//! `Bcc:` (and `Resent-Bcc:`) fields are removed, a `From:` field is added if there is none,
//! and lines starting with `.` are dot-stuffed on the wire. Nothing else is changed: the relay
//! adds `Received:`, `Message-ID:` and `Date:`.
//!
//! # Exit status (sysexits.h)
//! | status | when |
//! |---|---|
//! | 0 `EX_OK` | the relay accepted the message (`250` after the data) |
//! | 64 `EX_USAGE` | unknown option, missing option value, no recipients |
//! | 65 `EX_DATAERR` | a `To:`/`Cc:`/`Bcc:` address that is not an address |
//! | 69 `EX_UNAVAILABLE` | a 5xx reply (e.g. sender domain not allowed), or a message over `limits.max_message_size` |
//! | 74 `EX_IOERR` | standard input cannot be read |
//! | 75 `EX_TEMPFAIL` | a 4xx reply (e.g. the daily limit's `450`), or the relay cannot be reached or drops the connection: try again later |
//! | 76 `EX_PROTOCOL` | a reply that is not SMTP |
//! | 78 `EX_CONFIG` | the config cannot be loaded or has no relay listener |
//!
//! Delivery is all or nothing: at the first refused recipient the transaction is abandoned
//! (QUIT, which releases what the relay held), so that the caller may retry the whole message
//! without sending it twice to the recipients before the refused one. On failure the server's
//! reply is printed on stderr, one line per reply line:
//! `postern sendmail: RCPT TO:<bob@example.net>: 450 4.7.1 Daily sending limit reached ...`.
//!
//! Blocking `std::net` on purpose: one message, one connection, no runtime to start.

use crate::config::Config;
use crate::session::headers::{Where, mailbox_addresses, structured_chars};
use base64::Engine;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Bad usage.
const EX_USAGE: u8 = 64;
/// Bad input data.
const EX_DATAERR: u8 = 65;
/// Permanent refusal.
const EX_UNAVAILABLE: u8 = 69;
/// Local I/O error.
const EX_IOERR: u8 = 74;
/// Temporary failure: retry later.
const EX_TEMPFAIL: u8 = 75;
/// Remote protocol error.
const EX_PROTOCOL: u8 = 76;
/// Configuration error.
const EX_CONFIG: u8 = 78;

/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for each reply but the last (RFC 5321 section 4.5.3.2 asks for at least 5 minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for the reply to the end of data (RFC 5321: 10 minutes).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest reply line read (RFC 5321 allows 512 octets; generous).
const MAX_REPLY_LINE: u64 = 4096;
/// Most lines of one reply.
const MAX_REPLY_LINES: usize = 200;

/// The usage line printed with usage errors.
const USAGE: &str = "usage: postern sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RECIPIENT...]";

/// `postern sendmail ...`: everything after `sendmail` is parsed here, sendmail-style (bundled
/// flags, `-fSENDER` and `-f SENDER`, `-oi`), not by clap.
#[derive(Debug, clap::Args)]
pub(super) struct SendmailArgs {
    /// Options and recipients: [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RECIPIENT...]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

/// The parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Options {
    /// `-t`
    extract: bool,
    /// `-i`, `-oi`
    ignore_dots: bool,
    /// `-f`, `-r`: `Some("")` is the null sender.
    sender: Option<String>,
    /// `-F`
    full_name: Option<String>,
    /// Recipient arguments, split into addresses.
    recipients: Vec<String>,
}

/// Why the submission failed; each kind has its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// 64
    Usage(String),
    /// 65
    Data(String),
    /// 69, without a server reply.
    Unavailable(String),
    /// 74
    Input(String),
    /// 75: cannot connect, connection lost, timeout.
    Network(String),
    /// 76
    Protocol(String),
    /// 78
    Config(String),
    /// A refusal by the server: 4xx gives 75, 5xx 69, anything else 76.
    Refused {
        /// What was refused, e.g. `RCPT TO:<a@example.org>`.
        stage: String,
        /// The reply.
        reply: Reply,
    },
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Self::Usage(_) => EX_USAGE,
            Self::Data(_) => EX_DATAERR,
            Self::Unavailable(_) => EX_UNAVAILABLE,
            Self::Input(_) => EX_IOERR,
            Self::Network(_) => EX_TEMPFAIL,
            Self::Protocol(_) => EX_PROTOCOL,
            Self::Config(_) => EX_CONFIG,
            Self::Refused { reply, .. } => match reply.code / 100 {
                4 => EX_TEMPFAIL,
                5 => EX_UNAVAILABLE,
                _ => EX_PROTOCOL,
            },
        }
    }

    /// Writes the failure to stderr: one line, or one line per reply line.
    fn report(&self, err: &mut dyn Write) {
        let _ = match self {
            Self::Usage(m) => writeln!(err, "postern sendmail: {m}\n{USAGE}"),
            Self::Data(m)
            | Self::Unavailable(m)
            | Self::Input(m)
            | Self::Network(m)
            | Self::Protocol(m)
            | Self::Config(m) => writeln!(err, "postern sendmail: {m}"),
            Self::Refused { stage, reply } => reply
                .lines
                .iter()
                .try_for_each(|line| writeln!(err, "postern sendmail: {stage}: {line}")),
        };
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    /// The three-digit code.
    code: u16,
    /// Every line as received, without CRLF (`250-PIPELINING`, `250 OK`).
    lines: Vec<String>,
}

/// Runs `postern sendmail`: parses the options, loads the config at `config_path`, reads the
/// message from `input` and submits it. Returns a sysexits status; failures go to `err`.
pub(super) fn main(
    args: SendmailArgs,
    config_path: &Path,
    input: &mut dyn Read,
    err: &mut dyn Write,
) -> u8 {
    let result = parse_options(&args.args).and_then(|options| {
        let config = Config::load(config_path).map_err(|e| Failure::Config(e.to_string()))?;
        run(&options, &config, input, &default_sender(&config))
    });
    match result {
        Ok(()) => 0,
        Err(failure) => {
            failure.report(err);
            failure.status()
        }
    }
}

/// Reads, prepares and submits one message.
fn run(
    options: &Options,
    config: &Config,
    input: &mut dyn Read,
    default_sender: &str,
) -> Result<(), Failure> {
    if !options.extract && options.recipients.is_empty() {
        return Err(Failure::Usage("no recipients given".to_string()));
    }
    let server = relay_server(config)?;
    let max = config.limits.max_message_size;
    let mut raw = Vec::new();
    input
        .take(max.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| Failure::Input(format!("cannot read the message from standard input: {e}")))?;
    if u64::try_from(raw.len()).unwrap_or(u64::MAX) > max {
        return Err(Failure::Unavailable(format!(
            "the message is larger than the relay's limit of {max} bytes"
        )));
    }
    let message = prepare(&raw, options, default_sender)?;
    submit(server, &helo_name(config), &message)
}

/// Parses sendmail options (see the module documentation).
fn parse_options(args: &[String]) -> Result<Options, Failure> {
    let usage = |m: String| Failure::Usage(m);
    let mut options = Options::default();
    let mut args = args.iter();
    let mut only_recipients = false;
    while let Some(arg) = args.next() {
        if only_recipients || !arg.starts_with('-') {
            options
                .recipients
                .extend(argument_recipients(arg).map_err(usage)?);
            continue;
        }
        if arg == "--" {
            only_recipients = true;
            continue;
        }
        if arg == "-" || arg.starts_with("--") {
            return Err(usage(format!("unknown option {arg}")));
        }
        let flags = &arg[1..];
        for (at, flag) in flags.char_indices() {
            match flag {
                't' => options.extract = true,
                'i' => options.ignore_dots = true,
                'v' | 'm' | 'n' => {}
                'f' | 'r' | 'F' | 'o' | 'O' | 'B' | 'N' | 'R' | 'V' | 'b' => {
                    let rest = &flags[at + flag.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next()
                            .cloned()
                            .ok_or_else(|| usage(format!("option -{flag} needs a value")))?
                    } else {
                        rest.to_string()
                    };
                    apply_valued(&mut options, flag, value).map_err(usage)?;
                    break;
                }
                other => return Err(usage(format!("unknown option -{other}"))),
            }
        }
    }
    Ok(options)
}

/// Applies an option that takes a value.
fn apply_valued(options: &mut Options, flag: char, value: String) -> Result<(), String> {
    match flag {
        'f' | 'r' => {
            let trimmed = value.trim();
            let sender = if trimmed.is_empty() || trimmed == "<>" {
                String::new()
            } else {
                let addresses = mailbox_addresses(trimmed);
                match addresses.as_slice() {
                    [one] if plausible_address(one) => one.clone(),
                    _ => return Err(format!("invalid sender address {value:?}")),
                }
            };
            options.sender = Some(sender);
        }
        'F' => {
            if value.chars().any(char::is_control) {
                return Err(format!("invalid full name {value:?}"));
            }
            options.full_name = Some(value);
        }
        'o' if value == "i" => options.ignore_dots = true,
        'b' if value == "m" => {}
        'b' => {
            return Err(format!(
                "-b{value} is not supported: only -bm (read a message from standard input)"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The addresses of a recipient argument (`a@x`, `a@x,b@y`, `Name <a@x>`).
fn argument_recipients(arg: &str) -> Result<Vec<String>, String> {
    let addresses = address_list(arg);
    if let Some(bad) = addresses.iter().find(|a| !plausible_address(a)) {
        return Err(format!("invalid recipient {bad:?}"));
    }
    if addresses.is_empty() {
        return Err(format!("invalid recipient {arg:?}"));
    }
    Ok(addresses)
}

/// The addresses of an address list (RFC 5322 section 3.4): mailboxes as
/// [`mailbox_addresses`] reads them, plus groups (`Team: a@x, b@y;`, `undisclosed-recipients:;`),
/// whose display names are dropped.
fn address_list(value: &str) -> Vec<String> {
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
fn plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
}

/// A message ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prepared {
    /// `MAIL FROM`; empty for the null sender.
    sender: String,
    /// `RCPT TO`s, without duplicates, in order of first appearance.
    recipients: Vec<String>,
    /// The message with CRLF line ends, not yet dot-stuffed, ending in CRLF.
    data: Vec<u8>,
}

/// One header field: its lower-case name and its lines (the first, then continuations).
struct Field<'a> {
    name: String,
    lines: Vec<&'a [u8]>,
}

impl Field<'_> {
    /// The unfolded value (everything after the colon, continuation lines joined).
    fn value(&self) -> String {
        let mut value = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                value.extend_from_slice(line.get(colon + 1..).unwrap_or_default());
            } else {
                value.extend_from_slice(line);
            }
        }
        String::from_utf8_lossy(&value).into_owned()
    }
}

/// Splits the input into lines: CRLF, bare LF and bare CR all end a line. Without `-i`, a line
/// holding a single `.` ends the input.
fn split_lines(input: &[u8], ignore_dots: bool) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        let end = match input[i] {
            b'\n' => Some(i + 1),
            b'\r' if input.get(i + 1) == Some(&b'\n') => Some(i + 2),
            b'\r' => Some(i + 1),
            _ => None,
        };
        match end {
            Some(next) => {
                let line = &input[start..i];
                if !ignore_dots && line == b"." {
                    return lines;
                }
                lines.push(line);
                start = next;
                i = next;
            }
            None => i += 1,
        }
    }
    if start < input.len() {
        let line = &input[start..];
        if ignore_dots || line != b"." {
            lines.push(line);
        }
    }
    lines
}

/// A line that starts a header field: a name of printable ASCII without `:`, then `:`.
fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

/// Builds the envelope and the data from the raw input.
fn prepare(input: &[u8], options: &Options, default_sender: &str) -> Result<Prepared, Failure> {
    let lines = split_lines(input, options.ignore_dots);

    // The header section: fields and their continuation lines, up to an empty line or the
    // first line that is neither (which then starts the body).
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut body_start = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            body_start = i + 1;
            break;
        }
        if matches!(line[0], b' ' | b'\t') && !fields.is_empty() {
            if let Some(field) = fields.last_mut() {
                field.lines.push(line);
            }
            continue;
        }
        if is_field_start(line) {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
            fields.push(Field {
                name: String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                lines: vec![line],
            });
            continue;
        }
        body_start = i;
        break;
    }
    let body = lines.get(body_start..).unwrap_or_default();

    let mut recipients: Vec<String> = Vec::new();
    if options.extract {
        let resent = fields
            .iter()
            .any(|f| matches!(f.name.as_str(), "resent-to" | "resent-cc" | "resent-bcc"));
        let wanted: [&str; 3] = if resent {
            ["resent-to", "resent-cc", "resent-bcc"]
        } else {
            ["to", "cc", "bcc"]
        };
        for field in fields.iter().filter(|f| wanted.contains(&f.name.as_str())) {
            for address in address_list(&field.value()) {
                if !plausible_address(&address) {
                    return Err(Failure::Data(format!(
                        "invalid recipient {address:?} in the {} field",
                        field.name
                    )));
                }
                recipients.push(address);
            }
        }
    }
    recipients.extend(options.recipients.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.clone()));
    if recipients.is_empty() {
        return Err(Failure::Usage(
            "no recipients: none given, and none in To, Cc or Bcc (with -t)".to_string(),
        ));
    }

    let from: Vec<String> = fields
        .iter()
        .filter(|f| f.name == "from")
        .flat_map(|f| mailbox_addresses(&f.value()))
        .collect();
    let has_from = fields.iter().any(|f| f.name == "from");
    let sender = match &options.sender {
        Some(sender) => sender.clone(),
        None => from
            .iter()
            .find(|a| plausible_address(a))
            .cloned()
            .unwrap_or_else(|| default_sender.to_string()),
    };

    let mut data = Vec::with_capacity(input.len() + lines.len() + 128);
    if !has_from {
        let address = if sender.is_empty() {
            default_sender
        } else {
            &sender
        };
        let from = match &options.full_name {
            Some(name) => format!("From: {} <{address}>", display_name(name)),
            None => format!("From: {address}"),
        };
        data.extend_from_slice(from.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    for field in &fields {
        if matches!(field.name.as_str(), "bcc" | "resent-bcc") {
            continue;
        }
        for line in &field.lines {
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
    }
    data.extend_from_slice(b"\r\n");
    for line in body {
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    Ok(Prepared {
        sender,
        recipients,
        data,
    })
}

/// A display name as a quoted string, or as an RFC 2047 encoded word when it is not ASCII.
fn display_name(name: &str) -> String {
    if name.is_ascii() {
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

/// Where to submit: `sendmail.server` (a web-hosting machine names the relay there), else
/// this config's own `listen.relay` with an unspecified address replaced by loopback.
fn relay_server(config: &Config) -> Result<SocketAddr, Failure> {
    if let Some(server) = &config.sendmail.server {
        use std::net::ToSocketAddrs;
        return server
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Failure::Config(format!("sendmail.server {server}: cannot resolve")));
    }
    let Some(mut addr) = config.listen.relay else {
        return Err(Failure::Config(
            "the config has no relay listener (listen.relay) to submit to".to_string(),
        ));
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or the config's `server.hostname`.
fn local_hostname(config: &Config) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        })
        .unwrap_or_else(|| config.server.hostname.clone())
}

/// The name for EHLO.
fn helo_name(config: &Config) -> String {
    local_hostname(config)
}

/// `$USER@hostname`: the sender when neither `-f` nor `From:` gives one. `USER`, else
/// `LOGNAME`, else the name of the process's user in `/etc/passwd` (PHP-FPM clears the
/// environment), else `nobody`.
fn default_sender(config: &Config) -> String {
    let valid = |name: &String| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(valid)
        .or_else(|| passwd_name().filter(valid))
        .unwrap_or_else(|| "nobody".to_string());
    format!("{user}@{}", local_hostname(config))
}

/// The `/etc/passwd` name of the user owning this process (the owner of `/proc/self`).
fn passwd_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut parts = line.split(':');
        let name = parts.next()?;
        (parts.nth(1)? == uid).then(|| name.to_string())
    })
}

/// One SMTP connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    server: SocketAddr,
}

impl Client {
    fn connect(server: SocketAddr) -> Result<Self, Failure> {
        let stream = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT).map_err(|e| {
            Failure::Network(format!("cannot connect to the relay at {server}: {e}"))
        })?;
        let lost = |e: std::io::Error| Failure::Network(format!("connection to {server}: {e}"));
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(lost)?;
        stream
            .set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(lost)?;
        let _ = stream.set_nodelay(true);
        let reader = BufReader::new(stream.try_clone().map_err(lost)?);
        Ok(Self {
            reader,
            writer: BufWriter::new(stream),
            server,
        })
    }

    fn lost(&self, e: &std::io::Error) -> Failure {
        Failure::Network(format!(
            "connection to the relay at {} lost: {e}",
            self.server
        ))
    }

    /// Reads one reply, all its lines.
    fn reply(&mut self) -> Result<Reply, Failure> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut raw)
                .map_err(|e| self.lost(&e))?;
            if n == 0 {
                return Err(Failure::Network(format!(
                    "the relay at {} closed the connection",
                    self.server
                )));
            }
            if raw.last() != Some(&b'\n') {
                return Err(Failure::Protocol(format!(
                    "the relay at {} sent a reply line longer than {MAX_REPLY_LINE} bytes",
                    self.server
                )));
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let code = line
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c));
            let more = line.as_bytes().get(3) == Some(&b'-');
            let separator_ok = matches!(line.as_bytes().get(3), None | Some(b' ' | b'-'));
            let Some(code) = code.filter(|_| separator_ok) else {
                return Err(Failure::Protocol(format!(
                    "the relay at {} does not speak SMTP: {line:?}",
                    self.server
                )));
            };
            if let Some(first) = lines.first().and_then(|l: &String| l.get(..3))
                && first != &line[..3]
            {
                return Err(Failure::Protocol(format!(
                    "the relay at {} changed the reply code within a reply: {line:?}",
                    self.server
                )));
            }
            lines.push(line);
            if !more {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(Failure::Protocol(format!(
                    "the relay at {} sent a reply of more than {MAX_REPLY_LINES} lines",
                    self.server
                )));
            }
        }
    }

    /// Sends a command line and reads its reply.
    fn command(&mut self, line: &str) -> Result<Reply, Failure> {
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\r\n"))
            .and_then(|()| self.writer.flush())
            .map_err(|e| self.lost(&e))?;
        self.reply()
    }

    /// A reply of class `class` (2 or 3), else the failure naming `stage`.
    fn expect(reply: Reply, class: u16, stage: &str) -> Result<Reply, Failure> {
        if reply.code / 100 == class {
            Ok(reply)
        } else {
            Err(Failure::Refused {
                stage: stage.to_string(),
                reply,
            })
        }
    }

    /// Sends the data, dot-stuffed, and the end-of-data marker.
    fn send_data(&mut self, data: &[u8]) -> Result<(), Failure> {
        let mut write = || -> std::io::Result<()> {
            for line in data.split_inclusive(|&b| b == b'\n') {
                if line.first() == Some(&b'.') {
                    self.writer.write_all(b".")?;
                }
                self.writer.write_all(line)?;
            }
            self.writer.write_all(b".\r\n")?;
            self.writer.flush()
        };
        write().map_err(|e| self.lost(&e))
    }

    /// QUIT, ignoring the outcome: the transaction is over either way.
    fn quit(&mut self) {
        if self.writer.write_all(b"QUIT\r\n").is_ok() && self.writer.flush().is_ok() {
            let _ = self
                .reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(5)));
            let _ = self.reply();
        }
    }
}

/// One SMTP transaction: all recipients accepted and the data accepted, or a failure.
fn submit(server: SocketAddr, helo: &str, message: &Prepared) -> Result<(), Failure> {
    let mut client = Client::connect(server)?;
    let result = transaction(&mut client, helo, message);
    // On success or failure alike: a refused transaction's holds are released by the relay.
    if !matches!(result, Err(Failure::Network(_))) {
        client.quit();
    }
    result
}

fn transaction(client: &mut Client, helo: &str, message: &Prepared) -> Result<(), Failure> {
    let greeting = client.reply()?;
    Client::expect(greeting, 2, "greeting")?;
    let ehlo = client.command(&format!("EHLO {helo}"))?;
    let extensions: Vec<String> = if ehlo.code / 100 == 2 {
        ehlo.lines
            .iter()
            .skip(1)
            .filter_map(|l| l.get(4..))
            .map(|k| {
                k.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase()
            })
            .collect()
    } else {
        let helo_reply = client.command(&format!("HELO {helo}"))?;
        Client::expect(helo_reply, 2, "HELO")?;
        Vec::new()
    };
    let eight_bit = message.data.iter().any(|&b| b >= 0x80);
    let body = if eight_bit && extensions.iter().any(|k| k == "8BITMIME") {
        " BODY=8BITMIME"
    } else {
        ""
    };
    let mail = format!("MAIL FROM:<{}>", message.sender);
    let reply = client.command(&format!("{mail}{body}"))?;
    Client::expect(reply, 2, &mail)?;
    for recipient in &message.recipients {
        let rcpt = format!("RCPT TO:<{recipient}>");
        let reply = client.command(&rcpt)?;
        Client::expect(reply, 2, &rcpt)?;
    }
    let reply = client.command("DATA")?;
    Client::expect(reply, 3, "DATA")?;
    let _ = client
        .reader
        .get_ref()
        .set_read_timeout(Some(DATA_END_TIMEOUT));
    client.send_data(&message.data)?;
    let reply = client.reply()?;
    Client::expect(reply, 2, "end of data")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn options(list: &[&str]) -> Options {
        parse_options(&args(list)).unwrap()
    }

    fn usage_error(list: &[&str]) -> String {
        match parse_options(&args(list)) {
            Err(Failure::Usage(m)) => m,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn php_style_options() {
        let o = options(&["-t", "-i"]);
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender, None);
        let o = options(&[
            "-ti",
            "-oi",
            "-fwww@example.org",
            "-F",
            "Web Shop",
            "a@x.org",
        ]);
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("www@example.org"));
        assert_eq!(o.full_name.as_deref(), Some("Web Shop"));
        assert_eq!(o.recipients, ["a@x.org"]);
        let o = options(&[
            "-f",
            "Shop <Shop@Example.org>",
            "-oi",
            "b@y.org, \"C\" <c@z.org>",
        ]);
        assert_eq!(o.sender.as_deref(), Some("shop@example.org"));
        assert!(o.ignore_dots && !o.extract);
        assert_eq!(o.recipients, ["b@y.org", "c@z.org"]);
        assert_eq!(
            options(&["-f", "<>", "a@x.org"]).sender.as_deref(),
            Some("")
        );
        assert_eq!(
            options(&["-r", "s@x.org", "a@x.org"]).sender.as_deref(),
            Some("s@x.org")
        );
        let o = options(&[
            "-odi",
            "-oem",
            "-v",
            "-bm",
            "-N",
            "never",
            "-B8BITMIME",
            "--",
            "a@x.org",
        ]);
        assert!(!o.ignore_dots);
        assert_eq!(o.recipients, ["a@x.org"]);
        assert!(options(&["-Fname", "a@x.org"]).full_name.as_deref() == Some("name"));
    }

    #[test]
    fn bad_options_are_usage_errors() {
        assert_eq!(usage_error(&["-x", "a@x.org"]), "unknown option -x");
        assert_eq!(usage_error(&["-tq"]), "unknown option -q");
        assert_eq!(usage_error(&["--help"]), "unknown option --help");
        assert_eq!(usage_error(&["-"]), "unknown option -");
        assert_eq!(usage_error(&["a@x.org", "-f"]), "option -f needs a value");
        assert!(usage_error(&["-bs"]).starts_with("-bs is not supported"));
        assert_eq!(
            usage_error(&["-f", "not an address"]),
            "invalid sender address \"not an address\""
        );
        assert_eq!(usage_error(&["root"]), "invalid recipient \"root\"");
        assert_eq!(usage_error(&[","]), "invalid recipient \",\"");
        assert_eq!(
            parse_options(&args(&["-x"])).unwrap_err().status(),
            EX_USAGE
        );
    }

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

    #[test]
    fn lines_are_split_on_any_line_end() {
        assert_eq!(
            split_lines(b"a\nb\r\nc\rd", true),
            [&b"a"[..], b"b", b"c", b"d"]
        );
        assert_eq!(split_lines(b"a\n\n", true), [&b"a"[..], b""]);
        assert_eq!(split_lines(b"a\n.\nb\n", false), [&b"a"[..]]);
        assert_eq!(split_lines(b"a\n.\nb\n", true), [&b"a"[..], b".", b"b"]);
        assert_eq!(split_lines(b"a\n.", false), [&b"a"[..]]);
        assert_eq!(split_lines(b"a\n..\n", false), [&b"a"[..], b".."]);
    }

    const PHP: &[u8] = b"To: Bob <bob@example.net>, carol@example.net\n\
Cc: \"Dave\" <dave@example.net>\n\
Bcc: eve@example.net,\n  Frank <frank@example.net>\n\
Subject: Hello\n\
From: Shop <shop@example.org>\n\
\n\
Line one\n\
.hidden dot\n\
\n\
end\n";

    #[test]
    fn extract_recipients_and_remove_bcc() {
        let message = prepare(PHP, &options(&["-t", "-i"]), "www-data@web1").unwrap();
        assert_eq!(message.sender, "shop@example.org");
        assert_eq!(
            message.recipients,
            [
                "bob@example.net",
                "carol@example.net",
                "dave@example.net",
                "eve@example.net",
                "frank@example.net"
            ]
        );
        assert_eq!(
            String::from_utf8(message.data).unwrap(),
            "To: Bob <bob@example.net>, carol@example.net\r\n\
Cc: \"Dave\" <dave@example.net>\r\n\
Subject: Hello\r\n\
From: Shop <shop@example.org>\r\n\
\r\n\
Line one\r\n\
.hidden dot\r\n\
\r\n\
end\r\n"
        );
    }

    #[test]
    fn arguments_add_to_headers_and_duplicates_go() {
        let message = prepare(
            PHP,
            &options(&[
                "-t",
                "-f",
                "bounce@example.org",
                "bob@example.net",
                "zed@example.net",
            ]),
            "x@y",
        )
        .unwrap();
        assert_eq!(message.sender, "bounce@example.org");
        assert_eq!(message.recipients.len(), 6);
        assert_eq!(message.recipients[5], "zed@example.net");
        // Without -t the header recipients are not used, but Bcc is still removed.
        let message = prepare(PHP, &options(&["only@example.net"]), "x@y").unwrap();
        assert_eq!(message.recipients, ["only@example.net"]);
        assert!(!String::from_utf8_lossy(&message.data).contains("Bcc"));
    }

    #[test]
    fn resent_fields_win_with_t() {
        let input =
            b"Resent-To: r@example.net\nResent-Bcc: s@example.net\nTo: t@example.net\n\nx\n";
        let message = prepare(input, &options(&["-t"]), "x@y").unwrap();
        assert_eq!(message.recipients, ["r@example.net", "s@example.net"]);
        let text = String::from_utf8(message.data).unwrap();
        assert!(
            text.contains("To: t@example.net") && !text.contains("Resent-Bcc"),
            "{text}"
        );
    }

    #[test]
    fn from_is_added_when_missing() {
        let input = b"To: a@example.net\nSubject: s\n\nbody";
        let message = prepare(
            input,
            &options(&["-t", "-F", "Web \"Shop\""]),
            "www-data@web1",
        )
        .unwrap();
        assert_eq!(message.sender, "www-data@web1");
        assert!(
            message.data.starts_with(
                b"From: \"Web \\\"Shop\\\"\" <www-data@web1>\r\nTo: a@example.net\r\n"
            )
        );
        assert!(message.data.ends_with(b"\r\n\r\nbody\r\n"));
        let message = prepare(
            input,
            &options(&["-t", "-f", "s@example.org", "-F", "Zoë"]),
            "u@h",
        )
        .unwrap();
        assert!(
            message
                .data
                .starts_with(b"From: =?UTF-8?B?Wm/Dqw==?= <s@example.org>\r\n")
        );
        let message = prepare(input, &options(&["-t", "-f", "<>"]), "u@h").unwrap();
        assert_eq!(message.sender, "");
        assert!(message.data.starts_with(b"From: u@h\r\n"));
        // -F does not touch an existing From.
        let message = prepare(PHP, &options(&["-t", "-F", "Other"]), "u@h").unwrap();
        assert!(!String::from_utf8_lossy(&message.data).contains("Other"));
    }

    #[test]
    fn header_section_edge_cases() {
        // Headers only: an empty line is added.
        let message = prepare(b"To: a@example.net", &options(&["-t"]), "u@h").unwrap();
        assert_eq!(message.data, b"From: u@h\r\nTo: a@example.net\r\n\r\n");
        // A line that is not a field starts the body; the separator is inserted.
        let message = prepare(
            b"Subject: s\nnot a header\nmore\n",
            &options(&["a@example.net"]),
            "u@h",
        )
        .unwrap();
        assert_eq!(
            message.data,
            b"From: u@h\r\nSubject: s\r\n\r\nnot a header\r\nmore\r\n"
        );
        // No recipients at all.
        let e = prepare(b"Subject: s\n\nx\n", &options(&["-t"]), "u@h").unwrap_err();
        assert_eq!(e.status(), EX_USAGE);
        // A To: that is not an address.
        let e = prepare(b"To: John Smith\n\nx\n", &options(&["-t"]), "u@h").unwrap_err();
        assert_eq!(
            e,
            Failure::Data("invalid recipient \"john smith\" in the to field".into())
        );
        assert_eq!(e.status(), EX_DATAERR);
        // Without -i, a lone dot ends the message.
        let message = prepare(b"To: a@example.net\n\nx\n.\ny\n", &options(&["-t"]), "u@h").unwrap();
        assert!(message.data.ends_with(b"\r\n\r\nx\r\n"));
    }

    /// A scripted SMTP server on loopback: answers each command with the next reply of the
    /// script (after the greeting), records what it received, and hands it back at the end.
    fn fake_server(
        greeting: &'static str,
        replies: Vec<(&'static str, &'static str)>,
    ) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = String::new();
            writer.write_all(greeting.as_bytes()).unwrap();
            let mut replies = replies.into_iter();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                seen.push_str(&line);
                let Some((expect, reply)) = replies.next() else {
                    break;
                };
                assert!(
                    line.starts_with(expect),
                    "expected {expect:?}, got {line:?}"
                );
                if expect == "DATA" && reply.starts_with("354") {
                    writer.write_all(reply.as_bytes()).unwrap();
                    loop {
                        let mut data = String::new();
                        if reader.read_line(&mut data).unwrap_or(0) == 0 {
                            break;
                        }
                        seen.push_str(&data);
                        if data == ".\r\n" {
                            break;
                        }
                    }
                    let (_, end) = replies.next().unwrap();
                    writer.write_all(end.as_bytes()).unwrap();
                    continue;
                }
                writer.write_all(reply.as_bytes()).unwrap();
            }
            let _ = tx.send(seen);
        });
        (addr, rx)
    }

    fn config_for(relay: SocketAddr) -> Config {
        Config::parse(&format!(
            "[listen]\nrelay = \"{relay}\"\n[store]\npath = \"/nonexistent/store.db\"\n\
             [spool]\npath = \"/nonexistent/spool\"\n[limits]\nmax_message_size = 4096\n"
        ))
        .unwrap()
    }

    fn send(relay: SocketAddr, list: &[&str], input: &[u8]) -> (u8, String) {
        let config = config_for(relay);
        let mut err = Vec::new();
        let result = parse_options(&args(list)).and_then(|o| {
            run(
                &o,
                &config,
                &mut std::io::Cursor::new(input.to_vec()),
                "www-data@web1",
            )
        });
        let status = match result {
            Ok(()) => 0,
            Err(f) => {
                f.report(&mut err);
                f.status()
            }
        };
        (status, String::from_utf8(err).unwrap())
    }

    #[test]
    fn submits_over_smtp() {
        let (addr, seen) = fake_server(
            "220 relay ESMTP\r\n",
            vec![
                ("EHLO ", "250-relay\r\n250-8BITMIME\r\n250 SIZE 1000\r\n"),
                (
                    "MAIL FROM:<shop@example.org> BODY=8BITMIME",
                    "250 2.1.0 Ok\r\n",
                ),
                ("RCPT TO:<bob@example.net>", "250 2.1.5 Ok\r\n"),
                ("RCPT TO:<eve@example.net>", "250 2.1.5 Ok\r\n"),
                ("DATA", "354 go ahead\r\n"),
                ("", "250 2.0.0 Ok: queued as 1\r\n"),
                ("QUIT", "221 bye\r\n"),
            ],
        );
        let input =
            "To: bob@example.net\nBcc: eve@example.net\nFrom: shop@example.org\n\n.dot\nZoë\n";
        let (status, err) = send(addr, &["-t", "-i"], input.as_bytes());
        assert_eq!((status, err.as_str()), (0, ""));
        let seen = seen.recv().unwrap();
        assert!(
            seen.ends_with(
                "DATA\r\nTo: bob@example.net\r\nFrom: shop@example.org\r\n\r\n..dot\r\nZoë\r\n.\r\nQUIT\r\n"
            ),
            "{seen}"
        );
        assert!(seen.starts_with("EHLO "), "{seen}");
    }

    #[test]
    fn quota_refusal_exits_75_with_the_reply() {
        let (addr, seen) = fake_server(
            "220 relay ESMTP\r\n",
            vec![
                ("EHLO ", "250 relay\r\n"),
                ("MAIL FROM:<shop@example.org>", "250 2.1.0 Ok\r\n"),
                ("RCPT TO:<a@example.net>", "250 2.1.5 Ok\r\n"),
                (
                    "RCPT TO:<b@example.net>",
                    "450 4.7.1 Daily sending limit reached (50 recipients per 24 hours); retry after 10:16 UTC\r\n",
                ),
                ("QUIT", "221 bye\r\n"),
            ],
        );
        let (status, err) = send(
            addr,
            &[
                "-f",
                "shop@example.org",
                "a@example.net",
                "b@example.net",
                "c@example.net",
            ],
            b"Subject: s\n\nx\n",
        );
        assert_eq!(status, EX_TEMPFAIL);
        assert_eq!(
            err,
            "postern sendmail: RCPT TO:<b@example.net>: 450 4.7.1 Daily sending limit reached (50 \
             recipients per 24 hours); retry after 10:16 UTC\n"
        );
        let seen = seen.recv().unwrap();
        assert!(
            seen.ends_with("RCPT TO:<b@example.net>\r\nQUIT\r\n"),
            "{seen}"
        );
        assert!(!seen.contains("DATA"));
    }

    #[test]
    fn permanent_refusal_exits_69() {
        let (addr, _seen) = fake_server(
            "220 relay ESMTP\r\n",
            vec![
                ("EHLO ", "250 relay\r\n"),
                (
                    "MAIL FROM:<x@other.example>",
                    "550-5.7.1 Sender address rejected:\r\n550 5.7.1 domain not allowed for hosting account web1\r\n",
                ),
                ("QUIT", "221 bye\r\n"),
            ],
        );
        let (status, err) = send(addr, &["-f", "x@other.example", "a@example.net"], b"x\n");
        assert_eq!(status, EX_UNAVAILABLE);
        assert_eq!(
            err,
            "postern sendmail: MAIL FROM:<x@other.example>: 550-5.7.1 Sender address rejected:\n\
             postern sendmail: MAIL FROM:<x@other.example>: 550 5.7.1 domain not allowed for hosting account web1\n"
        );
    }

    #[test]
    fn helo_fallback_and_refused_data() {
        let (addr, _seen) = fake_server(
            "220 old relay\r\n",
            vec![
                ("EHLO ", "502 what?\r\n"),
                ("HELO ", "250 hi\r\n"),
                ("MAIL FROM:<www-data@web1>", "250 Ok\r\n"),
                ("RCPT TO:<a@example.net>", "250 Ok\r\n"),
                ("DATA", "354 go\r\n"),
                ("", "554 5.6.0 Line longer than 998 octets\r\n"),
                ("QUIT", "221 bye\r\n"),
            ],
        );
        let (status, err) = send(addr, &["a@example.net"], b"hello\n");
        assert_eq!(status, EX_UNAVAILABLE);
        assert!(err.contains("end of data: 554 5.6.0"), "{err}");
    }

    #[test]
    fn connection_failures_exit_75_and_garbage_76() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let (status, err) = send(closed, &["a@example.net"], b"x\n");
        assert_eq!(status, EX_TEMPFAIL);
        assert!(
            err.starts_with("postern sendmail: cannot connect to the relay at 127.0.0.1:"),
            "{err}"
        );

        let (addr, _seen) = fake_server("HTTP/1.1 400 Bad Request\r\n", vec![]);
        let (status, err) = send(addr, &["a@example.net"], b"x\n");
        assert_eq!(status, EX_PROTOCOL, "{err}");
        assert!(err.contains("does not speak SMTP"), "{err}");

        let (addr, _seen) =
            fake_server("421 4.3.2 shutting down\r\n", vec![("QUIT", "221 bye\r\n")]);
        let (status, err) = send(addr, &["a@example.net"], b"x\n");
        assert_eq!(status, EX_TEMPFAIL);
        assert_eq!(err, "postern sendmail: greeting: 421 4.3.2 shutting down\n");
    }

    #[test]
    fn local_refusals_do_not_connect() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let (status, err) = send(closed, &["-t"], b"Subject: none\n\nx\n");
        assert_eq!(status, EX_USAGE);
        assert!(err.ends_with(&format!("{USAGE}\n")), "{err}");
        let (status, _) = send(closed, &[], b"x\n");
        assert_eq!(status, EX_USAGE);
        let (status, err) = send(closed, &["a@example.net"], &[b'x'; 5000]);
        assert_eq!(status, EX_UNAVAILABLE);
        assert!(
            err.contains("larger than the relay's limit of 4096 bytes"),
            "{err}"
        );
    }

    #[test]
    fn config_problems_exit_78() {
        let mut err = Vec::new();
        let status = main(
            SendmailArgs {
                args: args(&["a@example.net"]),
            },
            Path::new("/nonexistent/postern.toml"),
            &mut std::io::Cursor::new(b"x\n".to_vec()),
            &mut err,
        );
        assert_eq!(status, EX_CONFIG);
        assert!(String::from_utf8(err).unwrap().contains("cannot read"));
        let config = Config::parse(
            "[listen]\nsubmission = \"127.0.0.1:2587\"\n[store]\npath = \"s.db\"\n[spool]\npath = \"sp\"\n",
        )
        .unwrap();
        let e = run(
            &options(&["a@example.net"]),
            &config,
            &mut std::io::Cursor::new(Vec::new()),
            "u@h",
        )
        .unwrap_err();
        assert_eq!(e.status(), EX_CONFIG);
        let relay = config_for("0.0.0.0:25".parse().unwrap());
        assert_eq!(
            relay_server(&relay).unwrap(),
            "127.0.0.1:25".parse().unwrap()
        );
    }

    #[test]
    fn clap_hands_everything_to_the_sendmail_parser() {
        use super::super::{Cli, Command};
        use clap::Parser;
        let parsed = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Sendmail(a) => a.args,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parsed(&[
                "postern", "--config", "/x.toml", "sendmail", "-t", "-i", "-f", "a@b.org", "--",
                "c@d.org"
            ]),
            ["-t", "-i", "-f", "a@b.org", "--", "c@d.org"]
        );
        assert_eq!(parsed(&["postern", "sendmail", "-oi", "-t"]), ["-oi", "-t"]);
        assert_eq!(
            parsed(&["postern", "sendmail", "-V", "id", "-h"]),
            ["-V", "id", "-h"]
        );
        assert!(parsed(&["postern", "sendmail"]).is_empty());
        let cli =
            Cli::try_parse_from(["postern", "sendmail", "--config", "/y.toml", "-t"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("/y.toml")));
    }

    #[test]
    fn default_sender_has_a_user_and_a_host() {
        let config = config_for("127.0.0.1:25".parse().unwrap());
        let sender = default_sender(&config);
        let (user, host) = sender.split_once('@').unwrap();
        assert!(!user.is_empty() && !host.is_empty(), "{sender}");
    }
}
