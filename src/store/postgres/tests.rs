//! The PostgreSQL store against a real server started by the test
//! ([`crate::testutil::postgres`]): the shared conformance cases, each on a fresh database,
//! then what only this backend has (the generation counter, NOTIFY, sealed DKIM keys,
//! migrations).

use super::*;
use crate::config::PgTlsMode;
use crate::keys::Algorithm;
use crate::policy::{EmailAddress, Plan, parse_address};
use crate::store::conformance;
use crate::store::{DirectoryAdmin, DkimAdmin, NewDkimKey};
use crate::testutil::postgres::{PASSWORD, PostgresServer};
use std::sync::atomic::AtomicUsize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn secret(byte: u8) -> SecretKeys {
    SecretKeys::new(
        sealing::SecretKey::from_bytes(&[byte; 32]).unwrap(),
        Vec::new(),
    )
}

fn settings(server: &PostgresServer, database: &str, keys: SecretKeys) -> PostgresSettings {
    PostgresSettings {
        pg: crate::config::parse_postgres_url(&server.url(database))
            .unwrap()
            .pg,
        password: Some(PASSWORD.to_string()),
        secret_keys: keys,
        pool_size: 4,
        timeout: Duration::from_secs(2),
        tls: PgTls::new(PgTlsMode::Disable, &PgTlsFiles::default()).unwrap(),
    }
}

/// A fresh, migrated database on `server`.
fn fresh(server: &PostgresServer, keys: SecretKeys) -> (String, PostgresStore) {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let database = format!("case{}", CASES.fetch_add(1, Ordering::Relaxed));
    server.create_database(&database);
    let store = PostgresStore::open(&settings(server, &database, keys)).unwrap();
    store.migrate_blocking().unwrap();
    (database, store)
}

/// Every conformance case on a database of its own; the second handle is a second pool, as
/// the CLI on another machine has.
struct Postgres {
    server: PostgresServer,
}

impl conformance::Backend for Postgres {
    type Store = PostgresStore;
    type Guard = ();

    fn open(&self, _case: &str) -> conformance::Fixture<PostgresStore, ()> {
        let (database, store) = fresh(&self.server, secret(1));
        let other = PostgresStore::open(&settings(&self.server, &database, secret(1))).unwrap();
        conformance::Fixture {
            store,
            other,
            guard: (),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_conformance() {
    conformance::run_all(&Postgres {
        server: PostgresServer::start(),
    })
    .await;
}

fn addr(text: &str) -> EmailAddress {
    parse_address(text).unwrap()
}

/// Every committed change moves the generation; a refused one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_moves_with_every_change_only() {
    let server = PostgresServer::start();
    let (_, store) = fresh(&server, secret(1));
    type Step = Box<dyn Fn(&PostgresStore) -> Result<(), StoreError>>;
    let a = || addr("alice@example.org");
    let sales = || addr("sales@example.org");
    let limit = QuotaIdentity::Address("alice@example.org".into());
    let steps: Vec<(&str, Step)> = vec![
        (
            "add address",
            Box::new(move |s| s.add_address(&a(), Plan::Starter)),
        ),
        ("add alias", Box::new(move |s| s.add_alias(&sales(), &a()))),
        (
            "add device",
            Box::new(move |s| s.add_device(&a(), "phone").map(drop)),
        ),
        (
            "rotate",
            Box::new(move |s| s.rotate_device(&a(), "phone").map(drop)),
        ),
        (
            "set limit",
            Box::new(move |s| s.set_limit(&limit, 10).map(drop)),
        ),
        ("revoke", Box::new(move |s| s.revoke_device(&a(), "phone"))),
        ("remove alias", Box::new(move |s| s.remove_alias(&sales()))),
        ("remove address", Box::new(move |s| s.remove_address(&a()))),
    ];
    let mut last = store.generation().await.unwrap();
    for (what, step) in steps {
        step(&store).unwrap();
        let now = store.generation().await.unwrap();
        assert!(now > last, "{what}: generation {now} after {last}");
        last = now;
        // The same step again is refused (exists already, or not found) and moves nothing,
        // except rotation, which succeeds again.
        if what != "rotate" && what != "set limit" {
            assert!(step(&store).is_err(), "{what} twice");
            assert_eq!(store.generation().await.unwrap(), last, "{what} refused");
        }
    }
}

/// A revoking change wakes a LISTENing replica, and the listener comes back
/// after its connection is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_changes_are_notified() {
    let server = PostgresServer::start();
    let (database, store) = fresh(&server, secret(1));
    let changed = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listeners = changes::Listeners {
        changed: changed.clone(),
        cache: None,
        revoking: Default::default(),
    };
    let task = tokio::spawn(changes::listen(store.clone(), listeners, shutdown.clone()));
    let wait = Duration::from_secs(10);
    // The first wake-up says it listens.
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    store.add_device(&a, "phone").unwrap();
    store.revoke_device(&a, "phone").unwrap();
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();

    // Killed: it reconnects, says so, and the next revocation arrives again.
    let killed = server.psql(
        &database,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()) t",
    );
    assert_eq!(killed, "1");
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    store.add_device(&a, "laptop").unwrap();
    store.revoke_all(&a).unwrap();
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    shutdown.cancel();
    task.await.unwrap();
}

/// The cache in front of PostgreSQL, with the `LISTEN` task telling it what it hears: a login
/// is answered from memory until a revocation's notification clears it (a TTL of 30 s is far
/// away), and nothing is served while the notification connection is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_cleared_by_notifications_and_idle_while_deaf() {
    use crate::store::cached::{CachedDirectory, DirectoryCache, LookupKind};
    let server = PostgresServer::start();
    let (database, store) = fresh(&server, secret(1));
    let cache = Arc::new(DirectoryCache::new(Duration::from_secs(30)).unwrap());
    let cached = CachedDirectory::new(
        Arc::new(store.clone()),
        cache.clone(),
        crate::metrics::Metrics::new(),
    );
    let changed = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listeners = changes::Listeners {
        changed: changed.clone(),
        cache: Some(cache.clone()),
        revoking: Default::default(),
    };
    let task = tokio::spawn(changes::listen(store.clone(), listeners, shutdown.clone()));
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, changed.notified())
        .await
        .unwrap();
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    let phone = store.add_device(&a, "phone").unwrap();
    assert!(!cache.serving(), "no generation check yet");
    cached.generation().await.unwrap();
    assert!(cache.serving());
    // Every write notifies: let those two arrive (they clear) before filling the cache.
    let settle = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cached.generation().await.unwrap();
    };
    settle().await;
    let login = || cached.authenticate("alice@example.org", phone.expose());
    assert!(login().await.unwrap().is_some());
    assert_eq!(cache.len(LookupKind::Login), 1);
    assert!(login().await.unwrap().is_some());
    assert_eq!(cache.len(LookupKind::Login), 1);

    // Revoked through another handle: the notification alone clears the cache (no generation
    // check is made here), so the next AUTH asks the store and fails.
    store.revoke_device(&a, "phone").unwrap();
    let until = |what: &'static str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + wait;
        let ok = loop {
            if done() {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(ok, "{what}");
    };
    until("cleared by the notification", &|| {
        cache.len(LookupKind::Login) == 0
    });
    assert!(login().await.unwrap().is_none());

    // The notification connection killed: nothing served until it listens again.
    let laptop = store.add_device(&a, "laptop").unwrap();
    settle().await;
    let laptop_login = || cached.authenticate("alice@example.org", laptop.expose());
    assert!(laptop_login().await.unwrap().is_some());
    assert_eq!(cache.len(LookupKind::Login), 1);
    server.psql(
        &database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    );
    until("deaf once the connection is gone", &|| !cache.serving());
    assert_eq!(cache.len(LookupKind::Login), 0);
    assert!(laptop_login().await.unwrap().is_some());
    assert_eq!(cache.len(LookupKind::Login), 0, "nothing kept while deaf");
    until("listening again", &|| cache.serving());
    shutdown.cancel();
    task.await.unwrap();
}

fn dkim_key(selector: &str) -> NewDkimKey {
    NewDkimKey {
        domain: "example.org".into(),
        selector: selector.into(),
        algorithm: Algorithm::Ed25519,
        bits: 256,
        private_key: format!("-----BEGIN PRIVATE KEY----- {selector} secret").into_bytes(),
        public_key: "p".into(),
        active: true,
    }
}

/// The table holds ciphertext; another secret key cannot read it and says so; rotation with
/// `previous_secret_key_files` and reencrypt moves every row to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_keys_are_sealed_and_rotate() {
    let server = PostgresServer::start();
    let (database, store) = fresh(&server, secret(1));
    store.add_dkim_key(&dkim_key("s1")).unwrap();
    let stored = server.psql(
        &database,
        "SELECT encode(sealed_key, 'escape') || secret_key_id FROM dkim_keys",
    );
    assert!(!stored.contains("BEGIN PRIVATE KEY"), "{stored}");
    assert!(!stored.contains("secret"), "{stored}");
    let plain = &dkim_key("s1").private_key;
    assert_eq!(
        store.active_dkim_keys("example.org").await.unwrap()[0].private_key,
        *plain
    );

    let settings_with = |keys| settings(&server, &database, keys);
    let wrong = PostgresStore::open(&settings_with(secret(2))).unwrap();
    let e = wrong
        .active_dkim_keys("example.org")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("DKIM key \"s1\" of domain \"example.org\""),
        "{e}"
    );
    assert!(e.contains("previous_secret_key_files"), "{e}");
    assert!(wrong.reencrypt_dkim_keys().is_err());

    let rotated = SecretKeys::new(
        sealing::SecretKey::from_bytes(&[2; 32]).unwrap(),
        vec![sealing::SecretKey::from_bytes(&[1; 32]).unwrap()],
    );
    let rotated = PostgresStore::open(&settings_with(rotated)).unwrap();
    assert_eq!(
        rotated.active_dkim_keys("example.org").await.unwrap()[0].private_key,
        *plain
    );
    rotated.add_dkim_key(&dkim_key("s2")).unwrap();
    assert_eq!(rotated.reencrypt_dkim_keys().unwrap(), 1);
    assert_eq!(rotated.reencrypt_dkim_keys().unwrap(), 0);
    // Now the new key alone reads both.
    assert_eq!(
        wrong.active_dkim_keys("example.org").await.unwrap()[0].private_key,
        dkim_key("s2").private_key
    );
    assert!(store.active_dkim_keys("example.org").await.is_err());
}

/// An empty database is refused until migrated, naming `postern migrate`; two migrations at
/// once leave one schema and one of them reports the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_checked_and_serialised() {
    let server = PostgresServer::start();
    server.create_database("empty");
    let open = || PostgresStore::open(&settings(&server, "empty", secret(1))).unwrap();
    let store = open();
    let e = store.list_addresses().unwrap_err();
    assert!(matches!(e, StoreError::Schema(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("schema version 0, older than"), "{e}");
    assert!(e.contains("postern migrate"), "{e}");

    let (one, two) = (open(), open());
    let (a, b) = tokio::join!(
        tokio::spawn(async move { one.migrate().await }),
        tokio::spawn(async move { two.migrate().await })
    );
    let mut froms = [a.unwrap().unwrap().from, b.unwrap().unwrap().from];
    froms.sort();
    assert_eq!(froms, [0, LATEST_VERSION]);
    assert_eq!(
        server.psql("empty", "SELECT count(*) FROM schema_version"),
        "1"
    );
    store.check().await.unwrap();
    assert!(store.list_addresses().unwrap().is_empty());

    server.psql("empty", "UPDATE schema_version SET version = version + 1");
    let e = open().check().await.unwrap_err().to_string();
    assert!(e.contains("newer than this postern's"), "{e}");
    let e = open().migrate().await.unwrap_err().to_string();
    assert!(e.contains("newer than this postern's"), "{e}");
}

/// PostgreSQL stopped: every call fails with a backend error, quickly; started again: the
/// same store answers without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_closed_and_recovers() {
    let server = PostgresServer::start();
    let (_, store) = fresh(&server, secret(1));
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    let p = store.add_device(&a, "phone").unwrap();
    server.stop();
    let e = store
        .authenticate(a.as_str(), p.expose())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    assert!(store.generation().await.is_err());
    assert!(
        store
            .hosting_account_for("192.0.2.1".parse().unwrap())
            .await
            .is_err()
    );
    server.start_again();
    let id = store.authenticate(a.as_str(), p.expose()).await.unwrap();
    assert_eq!(id.unwrap().device, "phone");
}

/// The password comes from the settings when the URL has none, and no message repeats it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_messages() {
    let server = PostgresServer::start();
    let (database, _) = fresh(&server, secret(1));
    let mut wrong = settings(&server, &database, secret(1));
    wrong.password = Some("not-the-password-9d1e".into());
    let e = PostgresStore::open(&wrong)
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-9d1e"), "{e}");
    let url = server.url(&database);
    let in_url = PostgresSettings {
        pg: crate::config::parse_postgres_url(
            &url.replace("postern@", &format!("postern:{PASSWORD}@")),
        )
        .unwrap()
        .pg,
        ..wrong
    };
    PostgresStore::open(&in_url).unwrap().check().await.unwrap();
    assert!(format!("{in_url:?}").find(PASSWORD).is_none());
}

/// Every delivery log conformance case on a database of its own (plain `#[test]`s: the log's
/// methods are synchronous and run on the store's own runtime, as in the writer thread).
struct PostgresLog {
    server: PostgresServer,
}

impl crate::store::delivery_log::conformance::Backend for PostgresLog {
    type Guard = ();

    fn open(&self, _case: &str) -> (Box<dyn crate::store::delivery_log::LogStore>, ()) {
        let (_, store) = fresh(&self.server, secret(1));
        (Box::new(store), ())
    }
}

#[test]
fn delivery_log_conformance() {
    crate::store::delivery_log::conformance::run_all(&PostgresLog {
        server: PostgresServer::start(),
    });
}

/// One replica purges at a time: while another session holds the purge lock a purge skips
/// and deletes nothing; once it is released the purge deletes, and leaves the lock free
/// (another session takes it at once). Migrate's lock is another key. Rows written by one
/// replica are read by another's handle; a NUL in a reply is stored as U+FFFD instead of
/// failing the batch.
#[test]
fn delivery_log_purge_lock_and_sharing() {
    use crate::store::delivery_log::conformance::record;
    use crate::store::delivery_log::{LogQuery, LogState, LogStore, Purge};
    assert_ne!(PURGE_LOCK, schema::MIGRATION_LOCK);
    let server = PostgresServer::start();
    let (database, mut one) = fresh(&server, secret(1));
    let mut two = PostgresStore::open(&settings(&server, &database, secret(1))).unwrap();
    let mut hostile = record(30, "a@example.org", "n@example.net", LogState::Bounced);
    hostile.reply = "said: 550 no\0body".into();
    hostile.replica = "relay-2".into();
    two.insert(&[record(
        10,
        "a@example.org",
        "b@example.net",
        LogState::Delivered,
    )])
    .unwrap();
    one.insert(std::slice::from_ref(&hostile)).unwrap();
    let rows = one.query(&LogQuery::default()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].reply, "said: 550 no\u{fffd}body");
    assert_eq!(
        rows.iter().map(|r| r.replica.as_str()).collect::<Vec<_>>(),
        ["relay-1", "relay-2"]
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let holder = runtime.block_on(async {
        let mut pg = crate::config::parse_postgres_url(&server.url(&database))
            .unwrap()
            .pg;
        pg.password(PASSWORD);
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    });
    let lock = |sql: &str| -> bool {
        runtime.block_on(async { holder.query_one(sql, &[&PURGE_LOCK]).await.unwrap().get(0) })
    };
    assert!(lock("SELECT pg_try_advisory_lock($1)"));
    assert_eq!(one.purge_before(20, 1).unwrap(), Purge::Skipped);
    assert_eq!(two.purge_before(u64::MAX, 1).unwrap(), Purge::Skipped);
    assert_eq!(one.query(&LogQuery::default()).unwrap().len(), 2);
    // Migrations do not wait for the purge lock.
    one.migrate_blocking().unwrap();
    assert!(lock("SELECT pg_advisory_unlock($1)"));
    assert_eq!(one.purge_before(20, 1).unwrap(), Purge::Deleted(1));
    assert!(
        lock("SELECT pg_try_advisory_lock($1)"),
        "the purge released its lock"
    );
    assert!(lock("SELECT pg_advisory_unlock($1)"));
    assert_eq!(
        two.query(&LogQuery::default()).unwrap(),
        vec![rows[1].clone()]
    );
}
