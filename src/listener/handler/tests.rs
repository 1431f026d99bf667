//! The event handler against a real embedded store, embedded quota and spool in a temp
//! directory, fed by a real [`Session`]: client lines in, replies, spool records, quota
//! counts and metrics out. No sockets: the socket's events are collected instead.

use super::*;
use crate::config::Config;
use crate::listener::brakes::Brakes;
use crate::listener::driver::new_session;
use crate::listener::guard::{Admission, SessionRegistry};
use crate::listener::metering::RelayClient;
use crate::metrics::Metrics;
use crate::policy::{EmailAddress, Plan};
use crate::spool::Spool;
use crate::store::embedded::EmbeddedStore;
use crate::store::quota::QuotaKey;
use crate::store::quota::builder::{QuotaBackend, QuotaStoreConfig, open_quota_store};
use crate::store::{DirectoryAdmin, QuotaIdentity};
use crate::testutil::TempDir;
use std::sync::Arc;
use std::time::Duration;

const ALICE: &str = "alice@example.org";

struct Fixture {
    shared: Shared,
    store: EmbeddedStore,
    _dir: TempDir,
}

impl Fixture {
    /// A `Shared` as `serve` builds it, with `extra` appended to a minimal config.
    async fn new(extra: &str) -> Self {
        let dir = TempDir::new("listener-handler");
        std::fs::create_dir_all(dir.path()).unwrap();
        let text = format!(
            r#"
            [listen]
            submission = "127.0.0.1:0"
            [store]
            path = "{}"
            [spool]
            path = "{}"
            [limits]
            auth_failure_delay = "0s"
            {extra}
            "#,
            dir.join("store.db").display(),
            dir.join("spool").display(),
        );
        let config = Arc::new(Config::parse(&text).unwrap());
        let metrics = Metrics::new();
        let store = EmbeddedStore::open(config.store.path.as_ref().unwrap()).unwrap();
        let spool = Spool::open(&config.spool, metrics.clone()).unwrap();
        let shared = Shared {
            directory: Arc::new(store.clone()),
            signer: Arc::new(crate::dkim::Signer::new(
                Arc::new(store.clone()),
                metrics.clone(),
            )),
            // The embedded quota store as `serve` opens it for this config (default window).
            quota: open_quota_store(&QuotaStoreConfig::new(QuotaBackend::Embedded {
                path: config.quota_path(),
            }))
            .await
            .unwrap(),
            brakes: Brakes::new(
                &config.brakes,
                &config.limits,
                Arc::new(crate::store::brakes::memory::MemoryBrakes::new()),
            ),
            spool,
            metrics,
            tls: crate::listener::tls::acceptor(&config).unwrap(),
            admission: Admission::from_limits(&config.limits),
            registry: Arc::new(SessionRegistry::default()),
            shutdown: CancellationToken::new(),
            directory_generation: Default::default(),
            directory_changed: Default::default(),
            revocation_written_ms: Default::default(),
            config,
        };
        Self {
            shared,
            store,
            _dir: dir,
        }
    }

    /// Alice with one device; returns its password.
    fn add_alice(&self) -> String {
        let alice: EmailAddress = ALICE.parse().unwrap();
        self.store.add_address(&alice, Plan::default()).unwrap();
        let password = self.store.add_device(&alice, "phone").unwrap();
        password.expose().to_string()
    }

    /// A session on `role` from `peer`, with its handler, as the driver starts them.
    async fn connect(&self, role: Role, peer: &str) -> Transcript<'_> {
        let peer: SocketAddr = peer.parse().unwrap();
        let relay = if role == Role::Relay {
            RelayClient::identify(&self.shared, peer).await
        } else {
            RelayClient {
                relay_allowed: false,
                hosting: None,
                metering: Metering::UntilAuth,
            }
        };
        let session = new_session(&self.shared, role, relay.relay_allowed, relay.hosting);
        let mut handler = EventHandler::new(&self.shared, Client::new(peer, role), relay.metering);
        if role == Role::Submissions {
            handler.tls_started(Some("version=TLSv1_3 cipher=TEST".into()));
        }
        let mut t = Transcript {
            session,
            handler,
            closed: false,
        };
        let greeting = t.pump().await;
        assert_eq!(greeting, vec!["220 localhost ESMTP Postern".to_string()]);
        t
    }

    /// The value of one metric series, 0 when it was never touched.
    fn metric(&self, series: &str) -> f64 {
        self.shared
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Recipients counted and held for `key`.
    async fn usage(&self, key: QuotaKey) -> (u32, u32) {
        let now = unix_ms(SystemTime::now());
        let usage = self.shared.quota.usage(&key, 1000, now).await.unwrap();
        (usage.used, usage.held)
    }

    /// The next message the spool would deliver.
    async fn spooled(&self) -> Envelope {
        let next = tokio::time::timeout(Duration::from_secs(5), self.shared.spool.next_due());
        next.await.expect("a spooled message").envelope
    }
}

/// A session and its handler, pumped the way the driver pumps them.
struct Transcript<'a> {
    session: Session,
    handler: EventHandler<'a>,
    closed: bool,
}

impl Transcript<'_> {
    /// Carries out the session's events; returns the first line of each reply.
    async fn pump(&mut self) -> Vec<String> {
        let mut replies = Vec::new();
        while let Some(event) = self.session.poll_event() {
            match self.handler.handle(&mut self.session, event).await {
                None => {}
                Some(SocketEvent::Reply(reply)) => replies.push(reply.summary()),
                Some(SocketEvent::StartTls) => panic!("no STARTTLS in these transcripts"),
                Some(SocketEvent::Close) => self.closed = true,
            }
        }
        replies
    }

    async fn send(&mut self, bytes: &str) -> Vec<String> {
        self.session.handle_input(bytes.as_bytes());
        self.pump().await
    }

    /// One command line; its reply.
    async fn line(&mut self, line: &str) -> String {
        let replies = self.send(&format!("{line}\r\n")).await;
        assert_eq!(replies.len(), 1, "{line}: {replies:?}");
        replies[0].clone()
    }

    async fn login(&mut self, password: &str) -> String {
        self.line("EHLO client.test").await;
        let plain = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("\0{ALICE}\0{password}"),
        );
        self.line(&format!("AUTH PLAIN {plain}")).await
    }
}

fn message(from: &str) -> String {
    format!("From: {from}\r\nSubject: test\r\n\r\nhello\r\n.\r\n")
}

fn queue_id(reply: &str) -> String {
    reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not queued: {reply}"))
        .to_string()
}

#[tokio::test]
async fn trusted_relay_message_is_spooled_with_trace_and_submitter() {
    let f = Fixture::new("[relay]\nnetworks = [\"192.0.2.0/24\"]").await;
    let mut t = f.connect(Role::Relay, "192.0.2.7:40000").await;
    t.line("EHLO web.client.test").await;
    assert_eq!(t.line("MAIL FROM:<app@site.example>").await, "250 2.1.0 Ok");
    assert_eq!(t.line("RCPT TO:<a@dest.example>").await, "250 2.1.5 Ok");
    assert_eq!(
        t.line("RCPT TO:<b@dest.example> NOTIFY=FAILURE").await,
        "250 2.1.5 Ok"
    );
    t.line("DATA").await;
    let replies = t.send(&message("app@site.example")).await;
    let id = queue_id(&replies[0]);

    let envelope = f.spooled().await;
    assert_eq!(envelope.id.0, id);
    assert_eq!(envelope.sender, "app@site.example");
    let recipients: Vec<_> = envelope
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.notify.as_deref()))
        .collect();
    assert_eq!(
        recipients,
        vec![
            ("a@dest.example", None),
            ("b@dest.example", Some("FAILURE"))
        ]
    );
    assert_eq!(
        envelope.submitter,
        Submitter {
            address: None,
            device: None,
            client_ip: "192.0.2.7".into(),
            listener: "relay".into(),
        }
    );
    assert!(
        envelope.prefix.starts_with(&format!(
            "Received: from web.client.test (192.0.2.7)\r\n\tby localhost (Postern) with ESMTP id {id};"
        )),
        "{}",
        envelope.prefix
    );
    assert_eq!(
        f.metric(r#"postern_smtp_messages_total{result="accepted"}"#),
        1.0
    );
    assert_eq!(
        f.metric(r#"postern_smtp_recipients_total{result="accepted"}"#),
        2.0
    );
}

#[tokio::test]
async fn recipient_outcomes_are_counted_by_the_session_label() {
    let f = Fixture::new("").await;
    let mut t = f.connect(Role::Relay, "198.51.100.9:40000").await;
    t.line("EHLO stranger.test").await;
    t.line("MAIL FROM:<x@stranger.test>").await;
    assert_eq!(
        t.line("RCPT TO:<a@dest.example>").await,
        "550 5.7.1 Relaying denied"
    );
    assert_eq!(
        f.metric(r#"postern_smtp_recipients_total{result="relay_denied"}"#),
        1.0
    );
    assert_eq!(
        f.metric(r#"postern_smtp_recipients_total{result="accepted"}"#),
        0.0
    );
}

#[tokio::test]
async fn auth_registers_the_session_and_meters_it_until_the_end() {
    let f = Fixture::new("").await;
    let password = f.add_alice();
    let mut t = f.connect(Role::Submissions, "127.0.0.1:40000").await;
    // Before AUTH nothing can be held: the identity whose quota counts is unknown.
    assert_eq!(t.handler.hold_recipient().await, HoldOutcome::Unavailable);
    assert_eq!(
        t.login("wrong-password").await,
        "535 5.7.0 authentication failed"
    );
    assert_eq!(
        f.metric(r#"postern_smtp_auth_attempts_total{mechanism="plain",result="failed"}"#),
        1.0
    );
    assert!(f.shared.registry.credentials().is_empty());

    assert_eq!(
        t.login(&password).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(f.shared.registry.credentials().len(), 1);
    t.line(&format!("MAIL FROM:<{ALICE}>")).await;
    t.line("RCPT TO:<a@dest.example>").await;
    let alice = QuotaKey::Address(ALICE.into());
    assert_eq!(f.usage(alice.clone()).await, (0, 1));

    // However the session ends, its holds go back and it leaves the registry.
    t.handler.finish().await;
    assert_eq!(f.usage(alice).await, (0, 0));
    assert!(f.shared.registry.credentials().is_empty());
}

#[tokio::test]
async fn authenticated_message_is_counted_and_traced_as_esmtpsa() {
    let f = Fixture::new("").await;
    let password = f.add_alice();
    let mut t = f.connect(Role::Submissions, "127.0.0.1:40000").await;
    t.login(&password).await;
    t.line(&format!("MAIL FROM:<{ALICE}>")).await;
    t.line("RCPT TO:<a@dest.example>").await;
    t.line("RCPT TO:<b@dest.example>").await;
    t.line("DATA").await;
    let id = queue_id(&t.send(&message(ALICE)).await[0]);
    assert_eq!(f.usage(QuotaKey::Address(ALICE.into())).await, (2, 0));

    let envelope = f.spooled().await;
    assert_eq!(envelope.id.0, id);
    assert_eq!(envelope.submitter.address.as_deref(), Some(ALICE));
    assert_eq!(envelope.submitter.device.as_deref(), Some("phone"));
    assert_eq!(envelope.submitter.listener, "submissions");
    assert!(
        envelope.prefix.contains(&format!(
            "with ESMTPSA id {id}\r\n\t(version=TLSv1_3 cipher=TEST);"
        )),
        "{}",
        envelope.prefix
    );
}

#[tokio::test]
async fn refusals_are_counted_by_the_session_reason_and_release_the_holds() {
    let f = Fixture::new("").await;
    let password = f.add_alice();
    let mut t = f.connect(Role::Submissions, "127.0.0.1:40000").await;
    t.login(&password).await;
    let alice = QuotaKey::Address(ALICE.into());
    for (body, reply, label) in [
        (
            "Subject: no from\r\n\r\nx\r\n.\r\n".to_string(),
            "550 5.6.0 Message has no From header field (RFC 5322 section 3.6)",
            "sender_not_owned",
        ),
        (
            message("boss@example.org"),
            "550 5.7.1 Sender address rejected: not owned by user alice@example.org",
            "sender_not_owned",
        ),
        (
            format!("From: {ALICE}\r\n\r\nbare\nlf\r\n.\r\n"),
            "554 5.6.0 Bare LF or CR in message data",
            "malformed",
        ),
    ] {
        let before = f.metric(&format!(
            "postern_smtp_messages_total{{result=\"{label}\"}}"
        ));
        t.line(&format!("MAIL FROM:<{ALICE}>")).await;
        t.line("RCPT TO:<a@dest.example>").await;
        assert_eq!(f.usage(alice.clone()).await, (0, 1));
        t.line("DATA").await;
        assert_eq!(t.send(&body).await, vec![reply.to_string()]);
        let after = f.metric(&format!(
            "postern_smtp_messages_total{{result=\"{label}\"}}"
        ));
        assert_eq!(after, before + 1.0, "{reply}");
        assert_eq!(f.usage(alice.clone()).await, (0, 0), "{reply}");
    }
    assert!(f.shared.spool.is_empty());
}

#[tokio::test]
async fn quota_limit_at_n_and_n_plus_one_and_reset_releases() {
    let f = Fixture::new("").await;
    let password = f.add_alice();
    let identity = QuotaIdentity::Address(ALICE.into());
    f.store.set_limit(&identity, 2).unwrap();
    let mut t = f.connect(Role::Submissions, "127.0.0.1:40000").await;
    t.login(&password).await;
    t.line(&format!("MAIL FROM:<{ALICE}>")).await;
    assert_eq!(t.line("RCPT TO:<a@dest.example>").await, "250 2.1.5 Ok");
    assert_eq!(t.line("RCPT TO:<b@dest.example>").await, "250 2.1.5 Ok");
    let refused = t.line("RCPT TO:<c@dest.example>").await;
    assert!(
        refused.starts_with(
            "450 4.7.1 Daily sending limit reached (2 recipients per 24 hours); retry after "
        ),
        "{refused}"
    );
    assert_eq!(
        f.metric(r#"postern_smtp_recipients_total{result="quota"}"#),
        1.0
    );
    // RSET gives the holds back: the same two fit again.
    assert_eq!(t.line("RSET").await, "250 2.0.0 Ok");
    assert_eq!(f.usage(QuotaKey::Address(ALICE.into())).await, (0, 0));
    t.line(&format!("MAIL FROM:<{ALICE}>")).await;
    assert_eq!(t.line("RCPT TO:<a@dest.example>").await, "250 2.1.5 Ok");
    assert_eq!(t.line("RCPT TO:<b@dest.example>").await, "250 2.1.5 Ok");
    t.line("DATA").await;
    queue_id(&t.send(&message(ALICE)).await[0]);
    t.line(&format!("MAIL FROM:<{ALICE}>")).await;
    assert!(
        t.line("RCPT TO:<d@dest.example>")
            .await
            .starts_with("450 4.7.1 Daily sending limit reached (2 recipients")
    );
}

#[tokio::test]
async fn hosting_client_is_metered_by_its_account() {
    let f = Fixture::new("").await;
    f.store
        .add_hosting_account(
            "web42",
            &["203.0.113.0/24".parse().unwrap()],
            &["site.example".to_string()],
        )
        .unwrap();
    let mut t = f.connect(Role::Relay, "203.0.113.5:40000").await;
    t.line("EHLO web42.test").await;
    assert_eq!(
        t.line("MAIL FROM:<app@other.example>").await,
        "550 5.7.1 Sender address rejected: domain not allowed for hosting account web42"
    );
    t.line("MAIL FROM:<app@site.example>").await;
    t.line("RCPT TO:<a@dest.example>").await;
    t.line("DATA").await;
    queue_id(&t.send(&message("app@site.example")).await[0]);
    assert_eq!(f.usage(QuotaKey::Hosting("web42".into())).await, (1, 0));
    assert_eq!(f.spooled().await.submitter.listener, "relay");
}

#[tokio::test]
async fn quit_hands_close_to_the_socket() {
    let f = Fixture::new("").await;
    let mut t = f.connect(Role::Submission, "127.0.0.1:40000").await;
    assert_eq!(t.line("QUIT").await, "221 2.0.0 Bye");
    assert!(t.closed);
}

#[test]
fn protocol_names_follow_rfc_3848() {
    assert_eq!(protocol(false, false), "ESMTP");
    assert_eq!(protocol(true, false), "ESMTPS");
    assert_eq!(protocol(false, true), "ESMTPA");
    assert_eq!(protocol(true, true), "ESMTPSA");
}

#[test]
fn only_a_single_well_formed_from_names_a_signing_domain() {
    let one = headers::scan_headers(b"From: a@example.org\r\n\r\n");
    assert_eq!(signing_from(&one), ["a@example.org".to_string()]);
    let two = headers::scan_headers(b"From: a@example.org\r\nFrom: b@example.org\r\n\r\n");
    assert!(signing_from(&two).is_empty());
    let none = headers::scan_headers(b"Subject: x\r\n\r\n");
    assert!(signing_from(&none).is_empty());
}
