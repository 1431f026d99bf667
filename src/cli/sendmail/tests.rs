//! `postern sendmail` end to end: options and message in, a scripted SMTP server on loopback
//! as the relay, exit status and stderr out; plus the clap hand-over and the config checks.

use super::host::default_sender;
use super::submit::relay_server;
use super::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

pub(super) fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub(super) fn options(list: &[&str]) -> Options {
    parse_options(&args(list)).unwrap()
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
    let input = "To: bob@example.net\nBcc: eve@example.net\nFrom: shop@example.org\n\n.dot\nZoë\n";
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

    let (addr, _seen) = fake_server("421 4.3.2 shutting down\r\n", vec![("QUIT", "221 bye\r\n")]);
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
    let cli = Cli::try_parse_from(["postern", "sendmail", "--config", "/y.toml", "-t"]).unwrap();
    assert_eq!(cli.config.as_deref(), Some(Path::new("/y.toml")));
}

#[test]
fn default_sender_has_a_user_and_a_host() {
    let config = config_for("127.0.0.1:25".parse().unwrap());
    let sender = default_sender(&config);
    let (user, host) = sender.split_once('@').unwrap();
    assert!(!user.is_empty() && !host.is_empty(), "{sender}");
}
