//! DSN builder tests: the MIME structure parsed back, field values, RET, ORCPT/ENVID, NOTIFY.

use super::*;
use crate::spool::RecipientStatus;

fn envelope() -> Envelope {
    let mut bob = Recipient::new("bob@example.net".into());
    bob.orcpt = Some("Bob@Example.NET".into());
    Envelope {
        id: SpoolId("ORIG1".into()),
        sender: "alice@example.org".into(),
        recipients: vec![bob, Recipient::new("carol@example.net".into())],
        received_at_ms: 1_700_000_000_000,
        size: 200,
        dsn_envid: Some("QQ314159".into()),
        ..Envelope::default()
    }
}

const ORIGINAL: &[u8] = b"Received: from x\r\nFrom: alice@example.org\r\nSubject: hello\r\n\r\nBody line one.\r\nBody line two.\r\n";

fn failed_entry() -> Entry {
    Entry {
        address: "bob@example.net".into(),
        orcpt: Some("Bob@Example.NET".into()),
        status: EnhancedCode::new(5, 1, 1),
        remote_mta: Some("mx.example.net".into()),
        remote_reply: Some("550 5.1.1 Mailbox unavailable".into()),
        text: "mx.example.net[192.0.2.1] said: 550 5.1.1 Mailbox unavailable (in reply to RCPT TO)"
            .into(),
    }
}

fn report<'a>(env: &'a Envelope, id: &'a SpoolId, kind: Kind, returned: Returned) -> Report<'a> {
    Report {
        kind,
        hostname: "relay.example.com",
        original: env,
        entries: vec![failed_entry()],
        id,
        now: from_unix_ms(1_700_000_100_000),
        retry_until: None,
        returned,
        boundary: "BOUNDARY123".into(),
    }
}

/// A minimal MIME reader: header fields (unfolded) and body of an entity.
fn split(entity: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let text = std::str::from_utf8(entity).expect("utf-8");
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let body = &entity[head.len() + 4.min(entity.len() - head.len())..];
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            fields.last_mut().expect("continuation").1.push_str(line);
        } else {
            let (n, v) = line.split_once(':').expect("field");
            fields.push((n.to_string(), v.trim_start().to_string()));
        }
    }
    (fields, body)
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The parts of a multipart body with the given boundary.
fn parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let text = std::str::from_utf8(body).unwrap();
    let open = format!("--{boundary}\r\n");
    let delim = format!("\r\n--{boundary}");
    let start = text.find(&open).expect("first boundary") + open.len();
    let mut out = Vec::new();
    let mut rest = &text[start..];
    loop {
        let end = rest.find(&delim).expect("delimiter");
        out.push(&rest.as_bytes()[..end]);
        rest = &rest[end + delim.len()..];
        if rest.starts_with("--") {
            assert_eq!(rest, "--\r\n", "close delimiter then nothing");
            return out;
        }
        rest = rest.strip_prefix("\r\n").expect("CRLF after boundary");
    }
}

/// The field groups of a message/delivery-status body.
fn groups(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).unwrap();
    text.trim_end_matches("\r\n")
        .split("\r\n\r\n")
        .map(|g| split(format!("{g}\r\n\r\n").as_bytes()).0)
        .collect()
}

#[test]
fn failure_dsn_structure_and_fields() {
    let env = envelope();
    let id = SpoolId("DSN1".into());
    let dsn = build(&report(&env, &id, Kind::Failure, Returned::Full), ORIGINAL);
    assert!(
        dsn.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
        "only CRLF"
    );
    let (top, body) = split(&dsn);
    assert_eq!(
        get(&top, "From"),
        ["Mail Delivery System <MAILER-DAEMON@relay.example.com>"]
    );
    assert_eq!(get(&top, "To"), ["<alice@example.org>"]);
    assert_eq!(
        get(&top, "Subject"),
        ["Undelivered Mail Returned to Sender"]
    );
    assert_eq!(get(&top, "Auto-Submitted"), ["auto-replied"]);
    assert_eq!(get(&top, "Message-ID"), ["<DSN1@relay.example.com>"]);
    assert_eq!(get(&top, "Date"), ["Tue, 14 Nov 2023 22:15:00 +0000"]);
    assert_eq!(
        get(&top, "Content-Type"),
        ["multipart/report; report-type=delivery-status; boundary=\"BOUNDARY123\""]
    );
    let p = parts(body, "BOUNDARY123");
    assert_eq!(p.len(), 3);

    let (h1, b1) = split(p[0]);
    assert_eq!(get(&h1, "Content-Type"), ["text/plain; charset=us-ascii"]);
    let text = std::str::from_utf8(b1).unwrap();
    assert!(
        text.contains(
            "<bob@example.net>: mx.example.net[192.0.2.1] said: 550 5.1.1 Mailbox unavailable"
        ),
        "{text}"
    );
    assert!(text.contains("The message is attached."));

    let (h2, b2) = split(p[1]);
    assert_eq!(get(&h2, "Content-Type"), ["message/delivery-status"]);
    let g = groups(b2);
    assert_eq!(g.len(), 2, "{g:?}");
    assert_eq!(get(&g[0], "Reporting-MTA"), ["dns; relay.example.com"]);
    assert_eq!(get(&g[0], "Original-Envelope-Id"), ["QQ314159"]);
    assert_eq!(
        get(&g[0], "Arrival-Date"),
        ["Tue, 14 Nov 2023 22:13:20 +0000"]
    );
    assert_eq!(get(&g[1], "Final-Recipient"), ["rfc822; bob@example.net"]);
    assert_eq!(
        get(&g[1], "Original-Recipient"),
        ["rfc822; Bob@Example.NET"]
    );
    assert_eq!(get(&g[1], "Action"), ["failed"]);
    assert_eq!(get(&g[1], "Status"), ["5.1.1"]);
    assert_eq!(get(&g[1], "Remote-MTA"), ["dns; mx.example.net"]);
    assert_eq!(
        get(&g[1], "Diagnostic-Code"),
        ["smtp; 550 5.1.1 Mailbox unavailable"]
    );
    assert_eq!(
        get(&g[1], "Last-Attempt-Date"),
        ["Tue, 14 Nov 2023 22:15:00 +0000"]
    );
    assert!(get(&g[1], "Will-Retry-Until").is_empty());

    let (h3, b3) = split(p[2]);
    assert_eq!(get(&h3, "Content-Type"), ["message/rfc822"]);
    assert_eq!(b3, ORIGINAL, "the original, byte for byte");
}

#[test]
fn headers_only_and_no_envid_or_orcpt() {
    let mut env = envelope();
    env.dsn_envid = None;
    let id = SpoolId("DSN2".into());
    let mut r = report(&env, &id, Kind::Failure, Returned::Headers);
    r.entries[0].orcpt = None;
    let dsn = build(&r, ORIGINAL);
    let (_, body) = split(&dsn);
    let p = parts(body, "BOUNDARY123");
    let g = groups(split(p[1]).1);
    assert!(get(&g[0], "Original-Envelope-Id").is_empty());
    assert!(get(&g[1], "Original-Recipient").is_empty());
    let (h3, b3) = split(p[2]);
    assert_eq!(get(&h3, "Content-Type"), ["text/rfc822-headers"]);
    assert_eq!(
        b3,
        b"Received: from x\r\nFrom: alice@example.org\r\nSubject: hello\r\n"
    );
}

#[test]
fn unreadable_original_gives_a_two_part_report() {
    let env = envelope();
    let id = SpoolId("DSN9".into());
    let dsn = build(
        &report(&env, &id, Kind::Failure, Returned::Nothing),
        ORIGINAL,
    );
    let (_, body) = split(&dsn);
    let p = parts(body, "BOUNDARY123");
    assert_eq!(p.len(), 2, "{}", String::from_utf8_lossy(&dsn));
    assert!(String::from_utf8_lossy(p[0]).contains("could not be read back from the queue"));
    assert!(dsn.ends_with(b"\r\n--BOUNDARY123--\r\n"));
}

#[test]
fn delay_dsn_fields() {
    let env = envelope();
    let id = SpoolId("DSN3".into());
    let mut r = report(&env, &id, Kind::Delay, Returned::Headers);
    r.entries[0].status = EnhancedCode::new(4, 4, 1);
    r.entries[0].remote_mta = None;
    r.entries[0].remote_reply = None;
    r.retry_until = Some(from_unix_ms(1_700_432_000_000));
    let dsn = build(&r, ORIGINAL);
    let (top, body) = split(&dsn);
    assert_eq!(
        get(&top, "Subject"),
        ["Delivery Status Notification (Delay)"]
    );
    let p = parts(body, "BOUNDARY123");
    let g = groups(split(p[1]).1);
    assert_eq!(get(&g[1], "Action"), ["delayed"]);
    assert_eq!(get(&g[1], "Status"), ["4.4.1"]);
    assert!(get(&g[1], "Remote-MTA").is_empty());
    assert!(get(&g[1], "Diagnostic-Code").is_empty());
    assert_eq!(
        get(&g[1], "Will-Retry-Until"),
        ["Sun, 19 Nov 2023 22:13:20 +0000"]
    );
}

#[test]
fn several_recipients_one_report_and_long_fields_fold() {
    let env = envelope();
    let id = SpoolId("DSN4".into());
    let mut r = report(&env, &id, Kind::Failure, Returned::Headers);
    let long = format!("550 5.7.1 {}", "policy words ".repeat(20).trim_end());
    let mut second = failed_entry();
    second.address = "carol@example.net".into();
    second.orcpt = None;
    second.remote_reply = Some(long.clone());
    r.entries.push(second);
    let dsn = build(&r, ORIGINAL);
    for line in dsn.split(|&b| b == b'\n') {
        assert!(line.len() <= 998, "{}", String::from_utf8_lossy(line));
    }
    let (_, body) = split(&dsn);
    let status = split(parts(body, "BOUNDARY123")[1]).1;
    for line in status.split(|&b| b == b'\n') {
        assert!(line.len() <= 80, "{}", String::from_utf8_lossy(line));
    }
    let g = groups(status);
    assert_eq!(g.len(), 3);
    assert_eq!(get(&g[2], "Final-Recipient"), ["rfc822; carol@example.net"]);
    assert_eq!(get(&g[2], "Diagnostic-Code"), [format!("smtp; {long}")]);
}

#[test]
fn injected_line_breaks_are_neutralised() {
    let mut env = envelope();
    env.dsn_envid = Some("x\r\nBcc: evil@example.com".into());
    let id = SpoolId("DSN5".into());
    let mut r = report(&env, &id, Kind::Failure, Returned::Headers);
    r.entries[0].text = "bad\r\nSubject: x".into();
    let dsn = String::from_utf8(build(&r, ORIGINAL)).unwrap();
    assert!(!dsn.contains("\r\nBcc:") && !dsn.contains("\r\nSubject: x"));
}

/// Found by the `dsn` fuzz target: a remote server's UTF-8 reply went into the
/// `message/delivery-status` part of a 7-bit DSN, which declares no 8-bit transfer encoding.
#[test]
fn a_utf8_reply_in_a_7bit_report_is_made_ascii() {
    let env = envelope();
    let id = SpoolId("DSN6".into());
    let mut r = report(&env, &id, Kind::Failure, Returned::Headers);
    r.entries[0].remote_reply = Some("550 5.1.1 Empfänger unbekannt".into());
    r.entries[0].text = "mx.example.net said: 550 5.1.1 Empfänger unbekannt".into();
    let dsn = String::from_utf8(build(&r, ORIGINAL)).unwrap();
    let (_, body) = split(dsn.as_bytes());
    let p = parts(body, "BOUNDARY123");
    let status = std::str::from_utf8(p[1]).unwrap();
    assert!(status.is_ascii(), "{status}");
    assert!(status.contains("\r\nDiagnostic-Code: smtp; 550 5.1.1 Empf?nger unbekannt\r\n"));
    // The reason for people keeps the text, in a part that says it is UTF-8.
    let human = std::str::from_utf8(p[0]).unwrap();
    assert!(human.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(human.contains("Empfänger unbekannt"));
    // An 8-bit original's report is 8-bit anyway: the reply stays as it was.
    let mut env = envelope();
    env.body_8bit = true;
    let mut r = report(&env, &id, Kind::Failure, Returned::Headers);
    r.entries[0].remote_reply = Some("550 5.1.1 Empfänger unbekannt".into());
    let dsn = String::from_utf8(build(&r, ORIGINAL)).unwrap();
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 Empfänger unbekannt\r\n"));
}

#[test]
fn notify_rules() {
    use Kind::*;
    for (notify, failure, delay, success) in [
        (None, true, true, false),
        (Some("NEVER"), false, false, false),
        (Some("FAILURE"), true, false, false),
        (Some("DELAY"), false, true, false),
        (Some("SUCCESS"), false, false, true),
        (Some("SUCCESS,FAILURE,DELAY"), true, true, true),
        (Some("failure,delay"), true, true, false),
    ] {
        assert_eq!(wants(notify, Failure), failure, "{notify:?}");
        assert_eq!(wants(notify, Delay), delay, "{notify:?}");
        assert_eq!(wants(notify, Success), success, "{notify:?}");
    }
}

#[test]
fn ret_rules() {
    let max = 210_763_776;
    let mut env = envelope();
    let check = |env: &Envelope, kind| returned(kind, env, max);
    assert_eq!(check(&env, Kind::Failure), Returned::Full, "small, no RET");
    assert_eq!(check(&env, Kind::Delay), Returned::Headers);
    assert_eq!(check(&env, Kind::Success), Returned::Headers);
    env.size = FULL_RETURN_MAX + 1;
    assert_eq!(
        check(&env, Kind::Failure),
        Returned::Headers,
        "large, no RET"
    );
    env.dsn_ret = Some("FULL".into());
    assert_eq!(check(&env, Kind::Failure), Returned::Full);
    env.size = max - 1000;
    assert_eq!(
        check(&env, Kind::Failure),
        Returned::Headers,
        "would not fit"
    );
    env.size = 10;
    env.dsn_ret = Some("HDRS".into());
    assert_eq!(check(&env, Kind::Failure), Returned::Headers);
}

#[test]
fn requiretls_originals_return_only_their_header() {
    let max = 210_763_776;
    let mut env = envelope();
    env.require_tls = true;
    env.dsn_ret = Some("FULL".into());
    assert_eq!(returned(Kind::Failure, &env, max), Returned::Headers);
    env.dsn_ret = None;
    assert_eq!(returned(Kind::Failure, &env, max), Returned::Headers);
    let id = SpoolId("DSN1".into());
    let (front, _) = render(&report(&env, &id, Kind::Failure, Returned::Headers));
    assert!(front.contains("The message was sent with REQUIRETLS: only its header is attached."));
    assert!(!front.contains("too large"));
}

#[test]
fn header_section_without_body_and_large_header_cut() {
    let env = envelope();
    let id = SpoolId("DSN6".into());
    let r = report(&env, &id, Kind::Failure, Returned::Headers);
    let dsn = build(&r, b"Subject: only headers\r\n");
    let (_, body) = split(&dsn);
    let p = parts(body, "BOUNDARY123");
    assert_eq!(split(p[2]).1, b"Subject: only headers\r\n");
}

#[test]
fn delay_retry_moves_to_the_warning_instant() {
    let mut config = DeliveryConfig {
        delay_warning: Duration::from_secs(4 * 3600),
        ..DeliveryConfig::default()
    };
    let env = envelope();
    let received = from_unix_ms(env.received_at_ms);
    let now = received + Duration::from_secs(3 * 3600);
    let later = received + Duration::from_secs(7 * 3600);
    let warn = received + Duration::from_secs(4 * 3600);
    assert_eq!(retry_for_delay_notice(&config, &env, now, later), warn);
    let soon = now + Duration::from_secs(60);
    assert_eq!(retry_for_delay_notice(&config, &env, now, soon), soon);
    let mut told = env.clone();
    for r in &mut told.recipients {
        r.delay_notified = true;
    }
    assert_eq!(retry_for_delay_notice(&config, &told, now, later), later);
    let mut done = env.clone();
    for r in &mut done.recipients {
        r.status = RecipientStatus::Failed;
    }
    assert_eq!(retry_for_delay_notice(&config, &done, now, later), later);
    let mut null = env;
    null.sender.clear();
    assert_eq!(retry_for_delay_notice(&config, &null, now, later), later);
    config.delay_warning = Duration::ZERO;
    assert_eq!(
        retry_for_delay_notice(&config, &envelope(), now, later),
        later
    );
}

/// The streaming path (`enqueue`, reading the original from a real spool, data files on both
/// sides) writes exactly what `build` makes from the same bytes, for both RET forms.
#[tokio::test]
async fn enqueue_streams_what_build_makes() {
    use crate::config::SpoolConfig;
    use tokio::io::AsyncReadExt;
    let dir = crate::testutil::TempDir::new("dsn-test");
    let config = SpoolConfig {
        path: dir.path().to_path_buf(),
        inline_max_bytes: 1024,
        commit_batch: 64,
        segment_max_bytes: 64 * 1024 * 1024,
    };
    let spool = Spool::open(&config, Metrics::new()).unwrap();
    let mut data = b"From: alice@example.org\r\nSubject: big\r\n\r\n".to_vec();
    for n in 0..200 {
        data.extend_from_slice(format!("line {n} of the body, long enough\r\n").as_bytes());
    }
    let mut original = envelope();
    original.id = spool.new_id();
    original.prefix = "Received: by relay.example.com\r\n".into();
    let mut body = spool.new_body(&original.id);
    body.write(&data).await.unwrap();
    spool.commit(original.clone(), body).await.unwrap();
    let stored = spool.next_due().await.envelope;
    assert!(stored.data_file.is_some(), "original kept in a data file");
    let whole = [original.prefix.as_bytes(), &data].concat();

    for returned in [Returned::Full, Returned::Headers] {
        let id = spool.new_id();
        let r = report(&stored, &id, Kind::Failure, returned);
        enqueue(&spool, &r).await.unwrap();
        let dsn = spool.next_due().await.envelope;
        assert_eq!(dsn.id, id);
        assert_eq!(dsn.sender, "");
        assert_eq!(dsn.recipients[0].address, "alice@example.org");
        let mut got = Vec::new();
        spool
            .open_message(&dsn)
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, build(&r, &whole), "{returned:?}");
    }
    // The spool's files go before the directory that holds them.
    drop(spool);
    drop(dir);
}

/// `postern queue delete`: only pending recipients that want FAILURE notices are reported,
/// with 5.0.0; a null sender or nothing to report gives no DSN.
#[tokio::test]
async fn removed_messages_bounce_their_pending_recipients() {
    let dir = crate::testutil::TempDir::new("dsn-removed");
    let text = format!(
        "[listen]\nsubmission = \"127.0.0.1:2587\"\n[store]\npath = \"{0}/s.db\"\n[spool]\npath = \"{0}/spool\"\n",
        dir.path().display()
    );
    let config = Config::parse(&text).unwrap();
    let spool = Spool::open(&config.spool, Metrics::new()).unwrap();
    let mut original = envelope();
    original.id = spool.new_id();
    let mut delivered = Recipient::new("dave@example.net".into());
    delivered.status = RecipientStatus::Delivered;
    let mut never = Recipient::new("erin@example.net".into());
    never.notify = Some("NEVER".into());
    original.recipients.extend([delivered, never]);
    let now = from_unix_ms(1_700_000_100_000);

    let id = bounce_removed(&spool, &config, &Metrics::new(), &original, now)
        .await
        .unwrap()
        .expect("a DSN");
    let dsn = spool.envelope(&id).unwrap();
    assert_eq!(dsn.sender, "");
    assert_eq!(dsn.recipients[0].address, "alice@example.org");
    let mut text = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut spool.open_message(&dsn).await.unwrap(), &mut text)
        .await
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    for want in [
        "Final-Recipient: rfc822; bob@example.net",
        "Final-Recipient: rfc822; carol@example.net",
        "Status: 5.0.0",
        "Action: failed",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    for absent in ["dave@example.net", "erin@example.net"] {
        assert!(!text.contains(&format!("rfc822; {absent}")), "{absent}");
    }

    let mut bounce = original.clone();
    bounce.sender = String::new();
    assert_eq!(
        bounce_removed(&spool, &config, &Metrics::new(), &bounce, now)
            .await
            .unwrap(),
        None
    );
    let mut done = original.clone();
    done.recipients
        .retain(|r| r.status != RecipientStatus::Pending);
    assert_eq!(
        bounce_removed(&spool, &config, &Metrics::new(), &done, now)
            .await
            .unwrap(),
        None
    );
    drop(spool);
    drop(dir);
}
