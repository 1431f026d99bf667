//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary directory and
//! `pg_ctl start` on a free loopback port, with `fsync=off` (the data dies with the test), run
//! as the `postgres` user through `runuser` when the tests run as root (initdb refuses root).
//! Stopped (`pg_ctl stop -m immediate`) and removed on drop. Never the machine's own server
//! or port 5432.
//!
//! Password authentication is on (SCRAM), with [`PASSWORD`] for the superuser [`USER`], so
//! that the tests go through the same login as production.
//!
//! [`PostgresServer::start_tls`] also turns on `ssl`, with a server certificate from a test CA
//! ([`TestCa`], made with rcgen) for the names given; the same CA issues client certificates,
//! which the database [`MTLS_DATABASE`] requires (`clientcert=verify-full`: the certificate's
//! common name must be the user).

use super::TempDir;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where Debian's postgresql package puts the server programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The superuser the tests connect as.
pub const USER: &str = "postern";

/// Its password.
pub const PASSWORD: &str = "test-only-pg-password-5f2c";

const INSTALL_HINT: &str = "install it (Debian: apt-get install postgresql, or run \
                            tests/install-deps.sh); the PostgreSQL tests do not skip";

/// The database that only a client certificate of the test CA (and the password) enters.
pub const MTLS_DATABASE: &str = "mtls";

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("generate a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` (DNS names or IP addresses) with common name `common_name`:
    /// (certificate PEM, private key PEM).
    pub fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("generate a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// One running server.
pub struct PostgresServer {
    dir: TempDir,
    port: u16,
    /// The CA of its certificate when it has TLS on.
    ca: Option<TestCa>,
}

/// Whether the tests run as root: `/proc/self` belongs to the process's effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A server program, run as `postgres` when we are root.
fn server_command(program: &str) -> Command {
    let path = Path::new(BIN_DIR).join(program);
    assert!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PostgresServer {
    /// Makes a cluster and starts it.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or does not start: the message says why.
    pub fn start() -> Self {
        let server = Self::init(None);
        server.start_again();
        server
    }

    /// Makes a cluster with TLS on (`ssl = on`; plaintext still accepted), its certificate
    /// issued by a new [`TestCa`] for `names`, and starts it.
    ///
    /// # Panics
    /// As [`PostgresServer::start`].
    pub fn start_tls(names: &[&str]) -> Self {
        let ca = TestCa::new("Postern test PostgreSQL CA");
        let server = Self::init(Some(ca));
        server.write_tls_files(names);
        server.start_again();
        server
    }

    /// `initdb`.
    fn init(ca: Option<TestCa>) -> Self {
        let dir = TempDir::new("pg");
        std::fs::create_dir_all(dir.path()).expect("create the server directory");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write the password file");
        if is_root() {
            let chown = |path: &Path| {
                let mut cmd = Command::new("chown");
                cmd.args(["-R", "postgres:postgres"]).arg(path);
                run(cmd, "chown");
            };
            chown(dir.path());
        }
        let mut initdb = server_command("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"]);
        run(initdb, "initdb");
        Self {
            dir,
            port: free_port(),
            ca,
        }
    }

    /// `server.crt`, `server.key` (0600: PostgreSQL refuses a key others can read) and
    /// `root.crt` (the CA for client certificates) in the data directory, and the `hba` line
    /// of [`MTLS_DATABASE`].
    fn write_tls_files(&self, names: &[&str]) {
        use std::os::unix::fs::PermissionsExt;
        let ca = self.ca.as_ref().expect("a TLS server");
        let (cert, key) = ca.issue("postgres test server", names);
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert).expect("write server.crt");
        std::fs::write(data.join("server.key"), key).expect("write server.key");
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod server.key");
        std::fs::write(data.join("root.crt"), ca.pem()).expect("write root.crt");
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let mtls = format!(
            "hostssl {MTLS_DATABASE} all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
             host {MTLS_DATABASE} all 127.0.0.1/32 reject\n"
        );
        std::fs::write(&hba, mtls + &rules).expect("write pg_hba.conf");
        if is_root() {
            let mut cmd = Command::new("chown");
            cmd.args(["-R", "postgres:postgres"]).arg(&data);
            run(cmd, "chown");
        }
    }

    /// The CA of the server's certificate (of [`PostgresServer::start_tls`]).
    ///
    /// # Panics
    /// For a server without TLS.
    pub fn ca(&self) -> &TestCa {
        self.ca.as_ref().expect("a server started with start_tls")
    }

    /// The data directory.
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the (stopped) server again on its port.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        if self.ca.is_some() {
            options.push_str(
                " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key \
                 -c ssl_ca_file=root.crt",
            );
        }
        let mut pg_ctl = server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        run(pg_ctl, "pg_ctl start");
    }

    /// Stops the server (`-m fast`: sessions are disconnected, as in a restart).
    pub fn stop(&self) {
        let mut pg_ctl = server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"]);
        run(pg_ctl, "pg_ctl stop");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database`, without the password.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser on `database` with `psql`; returns its output (tuples only,
    /// unaligned).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut cmd = Command::new(Path::new(BIN_DIR).join("psql"));
        cmd.env("PGPASSWORD", PASSWORD)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        let out = run(cmd, "psql");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let mut pg_ctl = server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = pg_ctl.status();
    }
}
