//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary directory and
//! `pg_ctl start` on a free loopback port, with `fsync=off` (the data dies with the test), run
//! as the `postgres` user through `runuser` when the tests run as root (initdb refuses root).
//! Stopped (`pg_ctl stop -m immediate`) and removed on drop. Never the machine's own server
//! or port 5432.
//!
//! Password authentication is on (SCRAM), with [`PASSWORD`] for the superuser [`USER`], so
//! that the tests go through the same login as production.

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

/// One running server.
pub struct PostgresServer {
    dir: TempDir,
    port: u16,
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
        let server = Self {
            dir,
            port: free_port(),
        };
        server.start_again();
        server
    }

    /// The data directory.
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the (stopped) server again on its port.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
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
