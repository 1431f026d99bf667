//! The hand-off listener's readers (`smtp/handoff.rs`, `session/handoff.rs`) and the control
//! socket's request reader (`control.rs`): what a peer replica, or anyone who reaches the
//! hand-off port or the socket, sends.
//!
//! Input: a MAIL line up to the first NUL, a RCPT line up to the next, then session lines
//! separated by LF; the same bytes are also read as one control request line.
//!
//! What must hold:
//! - an accepted MAIL or RCPT line, written out again, reads back equal, and its address has
//!   no control character and no `<` (it goes on command lines and into DSNs);
//! - the session answers every line with a reply of code 200-599, and no MAIL is accepted
//!   before a STARTTLS and an AUTH with the secret succeeded;
//! - an accepted control request, encoded again, reads back equal and is one line.

use super::Input;
use crate::control::{self, Request};
use crate::session::handoff::{HandoffSession, HandoffStep};
use crate::smtp::handoff::{HandoffMail, HandoffRcpt};

const SECRET: &str = "fuzz-fleet-secret-0123";

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mail = input.text(4096);
    let rcpt = input.text(4096);
    let rest = input.rest();

    if let Ok(parsed) = HandoffMail::parse(&mail) {
        assert!(
            !parsed.sender.chars().any(|c| c.is_control() || c == '<'),
            "{mail:?}"
        );
        let again = parsed.line();
        assert_eq!(
            HandoffMail::parse(again.trim_end_matches("\r\n")).as_ref(),
            Ok(&parsed)
        );
    }
    if let Ok(parsed) = HandoffRcpt::parse(&rcpt) {
        assert!(!parsed.address.is_empty());
        assert!(
            !parsed.address.chars().any(|c| c.is_control() || c == '<'),
            "{rcpt:?}"
        );
        let again = parsed.line();
        assert_eq!(
            HandoffRcpt::parse(again.trim_end_matches("\r\n")).as_ref(),
            Ok(&parsed)
        );
    }

    let mut session = HandoffSession::new("fuzz.example", SECRET, 5);
    let (mut tls, mut authenticated) = (false, false);
    for line in rest.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let is_mail = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL");
        let step = session.handle_line(line);
        let reply = match &step {
            HandoffStep::Reply(r)
            | HandoffStep::StartTls(r)
            | HandoffStep::ReceiveData(r)
            | HandoffStep::Close(r) => r.clone(),
        };
        assert!((200..600).contains(&reply.code), "{reply:?}");
        if is_mail && reply.code == 250 {
            assert!(tls && authenticated, "MAIL accepted before TLS and AUTH");
        }
        if reply.code == 235 {
            authenticated = true;
        }
        match step {
            HandoffStep::StartTls(_) => {
                session.tls_started();
                tls = true;
            }
            HandoffStep::ReceiveData(_) => {
                assert!(session.take_transaction().is_some());
            }
            HandoffStep::Close(_) => break,
            HandoffStep::Reply(_) => {}
        }
    }

    if let Ok(request) = control::decode::<Request>(data) {
        let line = control::encode(&request);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(control::decode::<Request>(&line).ok(), Some(request));
    }
}
