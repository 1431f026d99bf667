//! Submission through `lettre`, a Rust SMTP client crate nobody here wrote: STARTTLS on the
//! submission port and implicit TLS on the submissions port, AUTH PLAIN and LOGIN, against the
//! real `postern` binary started on free ports. The black-box suite in `tests/py/` covers the
//! other clients (smtplib, swaks, curl); this file is the Rust client's view.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, address::Envelope};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

struct Server {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    submission: u16,
    submissions: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn admin(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start(name: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("postern-lettre-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (submission, submissions) = (free_port(), free_port());
    let config = dir.join("postern.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
hostname = "postern.test"
[listen]
submission = "127.0.0.1:{submission}"
submissions = "127.0.0.1:{submissions}"
[store]
path = "{dir}/store.db"
[spool]
path = "{dir}/spool"
[delivery]
workers = 0
[limits]
auth_failure_delay = "10ms"
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("postern.log")).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", submissions)).is_err() {
        assert!(Instant::now() < deadline, "postern did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        dir,
        config,
        submission,
        submissions,
    }
}

fn transport(
    port: u16,
    tls: Tls,
    user: &str,
    password: &str,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new(user.into(), password.into()))
        .authentication(vec![mechanism])
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn tls_params() -> TlsParameters {
    // The test server's certificate is self-signed; trust is not what this test is about.
    TlsParameters::builder("postern.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap()
}

fn message(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: bob@example.net\r\nSubject: lettre\r\n\r\nHello from lettre.\r\n")
        .into_bytes()
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_plain_and_login() {
    let server = start("ok");
    admin(&server.config, &["address", "add", "alice@example.org"]);
    let out = admin(
        &server.config,
        &["device", "add", "alice@example.org", "--name", "phone"],
    );
    let password = out.lines().last().unwrap().trim().to_string();
    let envelope = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();

    for (port, tls, mechanism) in [
        (
            server.submission,
            Tls::Required(tls_params()),
            Mechanism::Plain,
        ),
        (
            server.submission,
            Tls::Required(tls_params()),
            Mechanism::Login,
        ),
        (
            server.submissions,
            Tls::Wrapper(tls_params()),
            Mechanism::Plain,
        ),
        (
            server.submissions,
            Tls::Wrapper(tls_params()),
            Mechanism::Login,
        ),
    ] {
        let smtp = transport(port, tls, "alice@example.org", &password, mechanism);
        let response = smtp
            .send_raw(&envelope, &message("alice@example.org"))
            .await
            .unwrap();
        assert_eq!(response.code().to_string(), "250");
        let text = response.message().collect::<Vec<_>>().join(" ");
        assert!(text.starts_with("2.0.0 Ok: queued as "), "{text}");
    }
    let journal = std::fs::read_dir(server.dir.join("spool/journal")).unwrap();
    let bytes: usize = journal
        .map(|e| std::fs::read(e.unwrap().path()).unwrap().len())
        .sum();
    assert!(bytes > 4 * 100, "four messages in the journal");
}

#[tokio::test]
async fn wrong_password_is_535_and_foreign_sender_550() {
    let server = start("refusals");
    admin(&server.config, &["address", "add", "alice@example.org"]);
    let out = admin(
        &server.config,
        &["device", "add", "alice@example.org", "--name", "phone"],
    );
    let password = out.lines().last().unwrap().trim().to_string();

    let smtp = transport(
        server.submissions,
        Tls::Wrapper(tls_params()),
        "alice@example.org",
        "not-it",
        Mechanism::Plain,
    );
    let envelope = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let err = smtp
        .send_raw(&envelope, &message("alice@example.org"))
        .await
        .unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("535".into()),
        "{err}"
    );

    let smtp = transport(
        server.submissions,
        Tls::Wrapper(tls_params()),
        "alice@example.org",
        &password,
        Mechanism::Plain,
    );
    let envelope = Envelope::new(
        Some("mallory@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let err = smtp
        .send_raw(&envelope, &message("mallory@example.org"))
        .await
        .unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("550".into()),
        "{err}"
    );
}
