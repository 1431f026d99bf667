//! Every reply Postern sends, in one catalogue.
//!
//! Handlers never spell reply bytes: they pick a constant or constructor here, so the texts the
//! provider's FAQ promises (`573 Antispam: ...`, `452 4.5.3 Too many recipients`, ...) live in
//! one place and tests can assert whole lines. Every reply carries an RFC 3463 enhanced status
//! code except the FAQ's `573`, whose exact text clients and the FAQ already know.
//!
//! Each refusal also names its [`Rejection`] (the `reason` of `postern_smtp_rejections_total`),
//! so the mapping from replies to the bounded reason set is this file: a new refusal is built
//! with `refuse` and its reason, never with `one`, unless it answers no command (timeouts,
//! shutdown, revocation, PROXY header refusals).

use crate::metrics::Rejection;
use std::borrow::Cow;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Text of each line, without the code (the enhanced code, where any, starts the text).
    pub lines: Vec<Cow<'static, str>>,
    /// Why this reply refuses something, for `postern_smtp_rejections_total`; `None` for
    /// positive replies and for the 421s that answer no command (timeouts, shutdown,
    /// revocation, PROXY header refusals).
    refusal: Option<Rejection>,
}

impl Reply {
    fn one(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
            refusal: None,
        }
    }

    /// A refusal: `one` with the reason it is counted under.
    fn refuse(code: u16, reason: Rejection, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            refusal: Some(reason),
            ..Self::one(code, text)
        }
    }

    /// The reason this reply refuses a command or a connection, if it does.
    pub fn refusal(&self) -> Option<Rejection> {
        self.refusal
    }

    /// Whether the code is 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form (`CODE-text` continuation lines, `CODE text` last, CRLF each).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
    }

    /// The first line as text, for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(|l| l.as_ref()).unwrap_or("")
        )
    }

    /// `220 HOST ESMTP Postern`
    pub fn greeting(hostname: &str) -> Self {
        Self::one(220, format!("{hostname} ESMTP Postern"))
    }

    /// The EHLO reply: host name, then one extension per line.
    pub fn ehlo(hostname: &str, extensions: Vec<String>) -> Self {
        let mut lines: Vec<Cow<'static, str>> = vec![hostname.to_string().into()];
        lines.extend(extensions.into_iter().map(Cow::Owned));
        Self {
            code: 250,
            lines,
            refusal: None,
        }
    }

    /// `250 HOST` for HELO.
    pub fn helo(hostname: &str) -> Self {
        Self::one(250, hostname.to_string())
    }

    /// `250 2.1.0 Ok`
    pub fn mail_ok() -> Self {
        Self::one(250, "2.1.0 Ok")
    }

    /// `250 2.1.5 Ok`
    pub fn rcpt_ok() -> Self {
        Self::one(250, "2.1.5 Ok")
    }

    /// `354 End data with <CR><LF>.<CR><LF>`
    pub fn start_data() -> Self {
        Self::one(354, "End data with <CR><LF>.<CR><LF>")
    }

    /// `250 2.0.0 Ok: queued as ID`
    pub fn queued(id: &str) -> Self {
        Self::one(250, format!("2.0.0 Ok: queued as {id}"))
    }

    /// `250 2.0.0 Ok: N octets received` (a BDAT chunk that is not the last).
    pub fn chunk_ok(octets: u64) -> Self {
        Self::one(250, format!("2.0.0 Ok: {octets} octets received"))
    }

    /// `250 2.0.0 Ok`
    pub fn ok() -> Self {
        Self::one(250, "2.0.0 Ok")
    }

    /// `221 2.0.0 Bye`
    pub fn bye() -> Self {
        Self::one(221, "2.0.0 Bye")
    }

    /// `214 2.0.0 ...`
    pub fn help() -> Self {
        Self::one(
            214,
            "2.0.0 See RFC 5321 and RFC 6409; submission needs AUTH after STARTTLS",
        )
    }

    /// `252 2.5.2 ...` (VRFY is never answered truthfully: RFC 5321 section 7.3)
    pub fn cannot_vrfy() -> Self {
        Self::one(
            252,
            "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `220 2.0.0 Ready to start TLS`
    pub fn ready_for_tls() -> Self {
        Self::one(220, "2.0.0 Ready to start TLS")
    }

    /// `334 TEXT` (SASL challenge, already base64).
    pub fn auth_challenge(base64: &'static str) -> Self {
        Self::one(334, base64)
    }

    /// `235 2.7.0 Authentication successful`
    pub fn auth_ok() -> Self {
        Self::one(235, "2.7.0 Authentication successful")
    }

    /// `535 5.7.0 authentication failed` (wording from the provider's FAQ).
    pub fn auth_failed() -> Self {
        Self::refuse(
            535,
            Rejection::BadCredentials,
            "5.7.0 authentication failed",
        )
    }

    /// `454 4.7.0 Temporary authentication failure` (the store did not answer).
    pub fn auth_unavailable() -> Self {
        Self::refuse(
            454,
            Rejection::DirectoryUnavailable,
            "4.7.0 Temporary authentication failure, try again later",
        )
    }

    /// `530 5.7.0 Authentication required`
    pub fn auth_required() -> Self {
        Self::refuse(
            530,
            Rejection::AuthRequired,
            "5.7.0 Authentication required",
        )
    }

    /// `538 5.7.11 ...` (RFC 4954 section 6: AUTH before STARTTLS on the submission port)
    pub fn encryption_required() -> Self {
        Self::refuse(
            538,
            Rejection::TlsRequired,
            "5.7.11 Encryption required for requested authentication mechanism",
        )
    }

    /// The FAQ's answer to AUTH on port 25, word for word.
    pub fn auth_on_relay_port() -> Self {
        Self::refuse(
            573,
            Rejection::AuthRequired,
            "Antispam: Authenticated connection not possible. Please use port 587 instead of port 25.",
        )
    }

    /// `504 5.5.4 Unrecognized authentication type`
    pub fn auth_mechanism_unknown() -> Self {
        Self::refuse(
            504,
            Rejection::BadSyntax,
            "5.5.4 Unrecognized authentication type",
        )
    }

    /// `501 5.0.0 Authentication cancelled`
    pub fn auth_cancelled() -> Self {
        Self::refuse(501, Rejection::BadSyntax, "5.0.0 Authentication cancelled")
    }

    /// `501 5.5.2 Invalid base64 data`
    pub fn auth_bad_base64() -> Self {
        Self::refuse(501, Rejection::BadSyntax, "5.5.2 Invalid base64 data")
    }

    /// `503 5.5.1 Already authenticated`
    pub fn already_authenticated() -> Self {
        Self::refuse(503, Rejection::BadSequence, "5.5.1 Already authenticated")
    }

    /// `550 5.7.1 Relaying denied`
    pub fn relaying_denied() -> Self {
        Self::refuse(550, Rejection::RelayDenied, "5.7.1 Relaying denied")
    }

    /// The FAQ's quota: `450 4.7.1 Daily sending limit reached (LIMIT recipients per 24 hours);
    /// retry after HH:MM UTC`.
    pub fn daily_limit_reached(limit: u32, retry_after: &str) -> Self {
        Self::refuse(
            450,
            Rejection::Quota,
            format!(
                "4.7.1 Daily sending limit reached ({limit} recipients per 24 hours); retry after {retry_after} UTC"
            ),
        )
    }

    /// `451 4.3.0 Quota service unavailable, try again later`
    pub fn quota_unavailable() -> Self {
        Self::refuse(
            451,
            Rejection::QuotaUnavailable,
            "4.3.0 Quota service unavailable, try again later",
        )
    }

    /// `450 4.7.1 ...` (the per-minute message brake)
    pub fn message_rate_exceeded() -> Self {
        Self::refuse(
            450,
            Rejection::Brake,
            "4.7.1 Too many messages in a short time, retry in a minute",
        )
    }

    /// `421 4.7.0 ...` (the per-minute connection brake)
    pub fn connection_rate_exceeded() -> Self {
        Self::refuse(
            421,
            Rejection::Brake,
            "4.7.0 Too many connections from your address in a short time, retry in a minute",
        )
    }

    /// `550 5.7.1 Sender address rejected: domain not allowed for hosting account ACCOUNT`
    pub fn hosting_domain_not_allowed(account: &str) -> Self {
        Self::refuse(
            550,
            Rejection::SenderNotOwned,
            format!(
                "5.7.1 Sender address rejected: domain not allowed for hosting account {account}"
            ),
        )
    }

    /// `452 4.5.3 Too many recipients`
    pub fn too_many_recipients() -> Self {
        Self::refuse(
            452,
            Rejection::TooManyRecipients,
            "4.5.3 Too many recipients",
        )
    }

    /// `552 5.3.4 Message size exceeds fixed maximum message size`
    pub fn message_too_big() -> Self {
        Self::refuse(
            552,
            Rejection::Size,
            "5.3.4 Message size exceeds fixed maximum message size",
        )
    }

    /// `550 5.7.1 Sender address rejected: not owned by user ADDRESS`
    pub fn sender_not_owned(user: &str) -> Self {
        Self::refuse(
            550,
            Rejection::SenderNotOwned,
            format!("5.7.1 Sender address rejected: not owned by user {user}"),
        )
    }

    /// `550 5.6.0 Message has no From header field`
    pub fn missing_from_header() -> Self {
        Self::refuse(
            550,
            Rejection::SenderNotOwned,
            "5.6.0 Message has no From header field (RFC 5322 section 3.6)",
        )
    }

    /// `550 5.6.0 ...` (a From: field that is not one unambiguous mailbox, or two)
    pub fn malformed_from_header() -> Self {
        Self::malformed_identity_header("From")
    }

    /// `550 5.6.0 Malformed or repeated FIELD header field (RFC 5322 section 3.6)`: a `From:`,
    /// `Sender:`, `Resent-From:` or `Resent-Sender:` field that is not one unambiguous
    /// mailbox, or a second `From:` or `Sender:`.
    pub fn malformed_identity_header(field: &str) -> Self {
        Self::refuse(
            550,
            Rejection::SenderNotOwned,
            format!("5.6.0 Malformed or repeated {field} header field (RFC 5322 section 3.6)"),
        )
    }

    /// `554 5.4.6 Too many hops` (more `Received:` fields than `[limits] max_received_headers`:
    /// a mail loop, RFC 5321 section 6.3)
    pub fn too_many_hops() -> Self {
        Self::refuse(554, Rejection::BadSyntax, "5.4.6 Too many hops")
    }

    /// `554 5.6.0 Header section starts with a continuation line (RFC 5322 section 2.2.3)`
    pub fn header_starts_folded() -> Self {
        Self::refuse(
            554,
            Rejection::BadSyntax,
            "5.6.0 Header section starts with a continuation line (RFC 5322 section 2.2.3)",
        )
    }

    /// `554 5.6.0 Header section too large`
    pub fn header_too_large() -> Self {
        Self::refuse(554, Rejection::Size, "5.6.0 Header section too large")
    }

    /// `555 5.5.4 MAIL FROM parameter NAME not supported` (or `RCPT TO`): a parameter EHLO
    /// did not advertise (RFC 5321 section 4.1.1.11).
    pub fn parameter_not_supported(command: &str, name: &str) -> Self {
        Self::refuse(
            555,
            Rejection::BadSyntax,
            format!("5.5.4 {command} parameter {name} not supported"),
        )
    }

    /// `553 5.6.7 SMTPUTF8 required for a non-ASCII address` (RFC 6531 section 3.4)
    pub fn smtputf8_required() -> Self {
        Self::refuse(
            553,
            Rejection::BadSyntax,
            "5.6.7 SMTPUTF8 required for a non-ASCII address",
        )
    }

    /// `550 5.1.2 Address literal recipients are not accepted` (unless `[delivery]
    /// allow_address_literals`)
    pub fn address_literal_refused() -> Self {
        Self::refuse(
            550,
            Rejection::RelayDenied,
            "5.1.2 Address literal recipients are not accepted",
        )
    }

    /// `501 5.1.3 Bad recipient address syntax`
    pub fn bad_recipient_syntax() -> Self {
        Self::refuse(
            501,
            Rejection::BadSyntax,
            "5.1.3 Bad recipient address syntax",
        )
    }

    /// `501 5.1.7 Bad sender address syntax`
    pub fn bad_sender_syntax() -> Self {
        Self::refuse(501, Rejection::BadSyntax, "5.1.7 Bad sender address syntax")
    }

    /// `554 5.6.0 Bare LF or CR in message data`
    pub fn bare_newline_in_data() -> Self {
        Self::refuse(
            554,
            Rejection::Smuggling,
            "5.6.0 Bare LF or CR in message data",
        )
    }

    /// `554 5.6.0 NUL byte in message data` (RFC 5321 sections 2.3.8 and 4.5.2)
    pub fn nul_in_data() -> Self {
        Self::refuse(554, Rejection::BadSyntax, "5.6.0 NUL byte in message data")
    }

    /// `554 5.6.0 Line longer than 998 octets`
    pub fn data_line_too_long() -> Self {
        Self::refuse(
            554,
            Rejection::BadSyntax,
            "5.6.0 Line longer than 998 octets",
        )
    }

    /// `500 5.5.2 Bare LF not allowed, use CRLF`
    pub fn bare_newline_in_command() -> Self {
        Self::refuse(
            500,
            Rejection::BadSyntax,
            "5.5.2 Bare LF not allowed, use CRLF",
        )
    }

    /// `500 5.5.2 Line too long`
    pub fn command_too_long() -> Self {
        Self::refuse(500, Rejection::BadSyntax, "5.5.2 Line too long")
    }

    /// `500 5.5.1 Command unrecognized`
    pub fn unrecognized() -> Self {
        Self::refuse(500, Rejection::BadSyntax, "5.5.1 Command unrecognized")
    }

    /// `502 5.5.1 Command not implemented`
    pub fn not_implemented() -> Self {
        Self::refuse(502, Rejection::BadSyntax, "5.5.1 Command not implemented")
    }

    /// `501 5.5.4 Syntax error in parameters`
    pub fn syntax_error() -> Self {
        Self::refuse(
            501,
            Rejection::BadSyntax,
            "5.5.4 Syntax error in parameters",
        )
    }

    /// `503 5.5.1 Bad sequence of commands`
    pub fn bad_sequence() -> Self {
        Self::refuse(
            503,
            Rejection::BadSequence,
            "5.5.1 Bad sequence of commands",
        )
    }

    /// `554 5.5.1 No valid recipients`
    pub fn no_recipients() -> Self {
        Self::refuse(554, Rejection::BadSequence, "5.5.1 No valid recipients")
    }

    /// `421 4.7.0 Too many errors, closing connection`
    pub fn too_many_errors() -> Self {
        Self::refuse(
            421,
            Rejection::BadSyntax,
            "4.7.0 Too many errors, closing connection",
        )
    }

    /// `421 4.7.0 Too many authentication failures, closing connection`
    pub fn too_many_auth_failures() -> Self {
        Self::refuse(
            421,
            Rejection::BadCredentials,
            "4.7.0 Too many authentication failures, closing connection",
        )
    }

    /// `421 4.7.0 Credentials revoked, closing connection`
    pub fn credentials_revoked() -> Self {
        Self::one(421, "4.7.0 Credentials revoked, closing connection")
    }

    /// `421 4.7.0 Too many connections, try again later`
    pub fn too_many_connections() -> Self {
        Self::refuse(
            421,
            Rejection::ConnectionLimit,
            "4.7.0 Too many connections, try again later",
        )
    }

    /// `421 4.7.0 Too many connections from your address, try again later`
    pub fn too_many_connections_from_ip() -> Self {
        Self::refuse(
            421,
            Rejection::ConnectionLimit,
            "4.7.0 Too many connections from your address, try again later",
        )
    }

    /// `421 4.7.0 Too many connections from your network, try again later` (the IPv6 /48 cap)
    pub fn too_many_connections_from_network() -> Self {
        Self::refuse(
            421,
            Rejection::ConnectionLimit,
            "4.7.0 Too many connections from your network, try again later",
        )
    }

    /// `421 4.7.0 Too many failed logins from your network, try again later` (the failed-login
    /// brake of an IPv4 /24 or IPv6 /48)
    pub fn too_many_failed_logins_from_network() -> Self {
        Self::refuse(
            421,
            Rejection::Brake,
            "4.7.0 Too many failed logins from your network, try again later",
        )
    }

    /// `421 4.7.0 Too many failed logins from your address, try again later`
    pub fn too_many_failed_logins_from_ip() -> Self {
        Self::refuse(
            421,
            Rejection::Brake,
            "4.7.0 Too many failed logins from your address, try again later",
        )
    }

    /// `421 4.7.0 PROXY protocol header required, closing connection`: a source in `[listen]
    /// proxy_protocol` sent no valid header. 4xx: the fault is the balancer's configuration,
    /// and mail retried once it is fixed is not lost.
    pub fn proxy_header_required() -> Self {
        Self::one(
            421,
            "4.7.0 PROXY protocol header required, closing connection",
        )
    }

    /// `421 4.7.0 PROXY protocol header not accepted from your address, closing connection`:
    /// a source not in `[listen] proxy_protocol` sent one (a balancer missing from the list
    /// retries, a spoofer learns nothing new).
    pub fn proxy_header_not_accepted() -> Self {
        Self::one(
            421,
            "4.7.0 PROXY protocol header not accepted from your address, closing connection",
        )
    }

    /// `421 4.4.2 Timeout, closing connection`
    pub fn timeout() -> Self {
        Self::one(421, "4.4.2 Timeout, closing connection")
    }

    /// `421 4.4.2 Session time limit exceeded, closing connection` (`[timeouts] session`)
    pub fn session_time_exceeded() -> Self {
        Self::one(421, "4.4.2 Session time limit exceeded, closing connection")
    }

    /// `421 4.4.2 Message transfer time limit exceeded, closing connection` (`[timeouts]
    /// data_total`: the whole DATA or BDAT transfer)
    pub fn data_time_exceeded() -> Self {
        Self::one(
            421,
            "4.4.2 Message transfer time limit exceeded, closing connection",
        )
    }

    /// `421 4.3.2 Service shutting down`
    pub fn shutting_down() -> Self {
        Self::one(421, "4.3.2 Service shutting down, try again later")
    }

    /// `452 4.3.1 Insufficient system storage` (the spool's file system is full: RFC 3463
    /// 4.3.1, Mail system full; the client retries later, the session goes on)
    pub fn insufficient_storage() -> Self {
        Self::refuse(
            452,
            Rejection::SpoolFull,
            "4.3.1 Insufficient system storage",
        )
    }

    /// `451 4.3.0 ...` (the spool could not keep the message)
    pub fn spool_failed() -> Self {
        Self::refuse(
            451,
            Rejection::SpoolError,
            "4.3.0 Error: queue file write error, try again later",
        )
    }

    /// `451 4.3.0 ...` as [`Reply::spool_failed`] (the client needs no more detail), counted
    /// as a DKIM failure: signing failed and the message was refused rather than sent unsigned.
    pub fn signing_failed() -> Self {
        Self::refuse(
            451,
            Rejection::DkimError,
            "4.3.0 Error: queue file write error, try again later",
        )
    }

    /// `503 5.5.1 TLS already active`
    pub fn tls_already_active() -> Self {
        Self::refuse(503, Rejection::BadSequence, "5.5.1 TLS already active")
    }

    /// `530 5.7.0 Must issue a STARTTLS command first` (RFC 3207 section 4: the hand-off
    /// listener takes nothing but EHLO, STARTTLS, NOOP, RSET and QUIT before TLS).
    pub fn starttls_first() -> Self {
        Self::refuse(
            530,
            Rejection::TlsRequired,
            "5.7.0 Must issue a STARTTLS command first",
        )
    }

    /// `535 5.7.8 Authentication credentials invalid` (RFC 4954 section 6): the hand-off
    /// listener's answer to a wrong fleet secret.
    pub fn handoff_auth_failed() -> Self {
        Self::refuse(
            535,
            Rejection::BadCredentials,
            "5.7.8 Authentication credentials invalid",
        )
    }

    /// `501 5.5.4 Hand-off: REASON`: a MAIL or RCPT line the hand-off reader refused.
    pub fn handoff_bad_line(reason: &str) -> Self {
        Self::refuse(
            501,
            Rejection::BadSyntax,
            format!("5.5.4 Hand-off: {reason}"),
        )
    }

    /// `554 5.7.1 Hand-off not accepted from your address` (the greeting to a client outside
    /// `[handoff] networks`; the connection is then closed).
    pub fn handoff_network_refused() -> Self {
        Self::refuse(
            554,
            Rejection::RelayDenied,
            "5.7.1 Hand-off not accepted from your address",
        )
    }
}
