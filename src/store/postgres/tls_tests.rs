//! TLS to a real PostgreSQL with `ssl = on` and a certificate of a test CA
//! ([`PostgresServer::start_tls`]): each mode against the right CA, a wrong CA, a certificate
//! for another name, a server without TLS, channel binding and client certificates.

use super::*;
use crate::config::PgTlsMode;
use crate::store::DirectoryAdmin;
use crate::testutil::TempDir;
use crate::testutil::postgres::{MTLS_DATABASE, PASSWORD, PostgresServer, TestCa};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A directory of PEM files for one test.
struct Files(TempDir);

impl Files {
    fn new() -> Self {
        let dir = TempDir::new("pgtls-files");
        std::fs::create_dir_all(dir.path()).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn keys() -> SecretKeys {
    SecretKeys::new(
        sealing::SecretKey::from_bytes(&[7; 32]).unwrap(),
        Vec::new(),
    )
}

fn settings(
    server: &PostgresServer,
    database: &str,
    mode: PgTlsMode,
    files: &PgTlsFiles,
) -> PostgresSettings {
    PostgresSettings {
        pg: crate::config::parse_postgres_url(&server.url(database))
            .unwrap()
            .pg,
        password: Some(PASSWORD.to_string()),
        secret_keys: keys(),
        pool_size: 2,
        timeout: Duration::from_secs(2),
        tls: PgTls::new(mode, files).unwrap(),
    }
}

fn new_database(server: &PostgresServer) -> String {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let database = format!("tls{}", CASES.fetch_add(1, Ordering::Relaxed));
    server.create_database(&database);
    database
}

/// Whether the store's connection is encrypted, as the server sees it.
async fn encrypted(store: &PostgresStore) -> bool {
    let client = store.inner.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Migrates (the connection `postern migrate` uses) and checks; the error text otherwise.
async fn connects(settings: &PostgresSettings) -> Result<PostgresStore, String> {
    let store = PostgresStore::open(settings).unwrap();
    store.migrate().await.map_err(|e| e.to_string())?;
    store.check().await.map_err(|e| e.to_string())?;
    Ok(store)
}

fn with_ca(path: PathBuf) -> PgTlsFiles {
    PgTlsFiles {
        ca_file: Some(path),
        client: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_binds_the_channel_and_listens() {
    let server = PostgresServer::start_tls(&["127.0.0.1"]);
    let files = Files::new();
    let right = with_ca(files.write("ca.pem", server.ca().pem()));
    let database = new_database(&server);

    let mut full = settings(&server, &database, PgTlsMode::VerifyFull, &right);
    // SCRAM-SHA-256-PLUS or no connection: the stream's channel binding is right.
    full.pg
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let store = connects(&full).await.unwrap();
    assert!(encrypted(&store).await);

    // The LISTEN connection goes through TLS too, and hears a revocation.
    let changed = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listeners = changes::Listeners {
        changed: changed.clone(),
        cache: None,
        revoking: Default::default(),
    };
    let task = tokio::spawn(changes::listen(store.clone(), listeners, shutdown.clone()));
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    let listening = server.psql(
        &database,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.query LIKE 'LISTEN%' AND s.ssl",
    );
    assert_eq!(listening, "1");
    let alice = crate::policy::parse_address("alice@example.org").unwrap();
    store
        .add_address(&alice, crate::policy::Plan::Starter)
        .unwrap();
    store.add_device(&alice, "phone").unwrap();
    store.revoke_device(&alice, "phone").unwrap();
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    shutdown.cancel();
    task.await.unwrap();

    // prefer and require use TLS when the server has it.
    for mode in [PgTlsMode::Prefer, PgTlsMode::Require] {
        let files = PgTlsFiles::default();
        let store = connects(&settings(&server, &database, mode, &files))
            .await
            .unwrap();
        assert!(encrypted(&store).await, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_naming_host_and_reason() {
    let server = PostgresServer::start_tls(&["127.0.0.1"]);
    let files = Files::new();
    let wrong = with_ca(files.write("wrong.pem", TestCa::new("Someone else").pem()));
    let database = new_database(&server);
    for mode in [
        PgTlsMode::VerifyFull,
        PgTlsMode::VerifyCa,
        PgTlsMode::Require,
    ] {
        let e = connects(&settings(&server, &database, mode, &wrong))
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode:?} accepted a certificate of another CA"));
        let host = format!(
            "PostgreSQL postern@127.0.0.1:{}/{database}: ",
            server.port()
        );
        assert!(e.contains(&host), "{e}");
        assert!(
            e.contains("error performing TLS handshake")
                && e.contains("invalid peer certificate: UnknownIssuer"),
            "{e}"
        );
        assert!(!e.contains(PASSWORD), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_fails_verify_full_only() {
    let server = PostgresServer::start_tls(&["db.internal"]);
    let files = Files::new();
    let right = with_ca(files.write("ca.pem", server.ca().pem()));
    let database = new_database(&server);
    let e = connects(&settings(&server, &database, PgTlsMode::VerifyFull, &right))
        .await
        .expect_err("verify-full accepted a certificate for db.internal at 127.0.0.1");
    assert!(e.contains("certificate not valid for name"), "{e}");
    assert!(e.contains("127.0.0.1"), "{e}");
    for mode in [PgTlsMode::VerifyCa, PgTlsMode::Require] {
        let store = connects(&settings(&server, &database, mode, &right))
            .await
            .unwrap();
        assert!(encrypted(&store).await, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_refused_unless_prefer_or_disable() {
    let server = PostgresServer::start();
    let files = Files::new();
    let any_ca = with_ca(files.write("ca.pem", TestCa::new("Unused").pem()));
    let database = new_database(&server);
    for (mode, ca) in [
        (PgTlsMode::Require, PgTlsFiles::default()),
        (PgTlsMode::VerifyCa, any_ca.clone()),
        (PgTlsMode::VerifyFull, any_ca),
    ] {
        let e = connects(&settings(&server, &database, mode, &ca))
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode:?} went on in plaintext"));
        assert!(e.contains("server does not support TLS"), "{e}");
    }
    for mode in [PgTlsMode::Prefer, PgTlsMode::Disable] {
        let files = PgTlsFiles::default();
        let store = connects(&settings(&server, &database, mode, &files))
            .await
            .unwrap();
        assert!(!encrypted(&store).await, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_opens_a_database_that_requires_one() {
    let server = PostgresServer::start_tls(&["127.0.0.1"]);
    server.create_database(MTLS_DATABASE);
    let files = Files::new();
    let ca_file = files.write("ca.pem", server.ca().pem());
    let without = with_ca(ca_file.clone());
    let e = connects(&settings(
        &server,
        MTLS_DATABASE,
        PgTlsMode::VerifyFull,
        &without,
    ))
    .await
    .expect_err("no client certificate, yet connected");
    assert!(e.contains("certificate"), "{e}");

    let (cert, key) = server.ca().issue("postern", &[]);
    let with = PgTlsFiles {
        ca_file: Some(ca_file),
        client: Some((
            files.write("client.crt", &cert),
            files.write("client.key", &key),
        )),
    };
    let store = connects(&settings(
        &server,
        MTLS_DATABASE,
        PgTlsMode::VerifyFull,
        &with,
    ))
    .await
    .unwrap();
    assert!(encrypted(&store).await);
}
