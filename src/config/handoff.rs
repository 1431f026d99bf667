//! `[handoff]`: moving a draining replica's queued mail to a peer replica.
//!
//! The receiving side listens on `[listen] handoff`; only clients from `networks` that prove
//! they hold the fleet secret (the first line of `secret_file`, the same file on every
//! replica) over TLS may hand mail to it. The sending side is `postern drain --handoff
//! HOST:PORT`, or a SIGTERM drain (`[server] drain_on_shutdown`) with `peer` set. What goes
//! over the wire is in `listener/handoff.rs` and `delivery/handoff.rs`.

use super::ConfigError;
use ipnet::IpNet;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Shortest fleet secret accepted: it is the only thing that keeps others from injecting
/// mail that skips every check of the submission ports.
pub const MIN_SECRET_LEN: usize = 16;

/// `[handoff]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffConfig {
    /// The fleet secret's file (its first line; a Kubernetes Secret in the chart).
    pub secret_file: Option<PathBuf>,
    /// Networks the hand-off listener accepts connections from.
    #[serde(default)]
    pub networks: Vec<IpNet>,
    /// Where a SIGTERM drain hands the mail left over to (`HOST:PORT`); `postern drain
    /// --handoff` names its own.
    pub peer: Option<String>,
}

impl HandoffConfig {
    /// The fleet secret: the first line of `secret_file`, without its line ending.
    ///
    /// # Errors
    /// No `secret_file`, it cannot be read, or its first line is shorter than
    /// [`MIN_SECRET_LEN`]. The message names the key, never the secret.
    pub fn read_secret(&self) -> Result<String, ConfigError> {
        let path = self
            .secret_file
            .as_deref()
            .ok_or_else(|| ConfigError("handoff.secret_file: required for hand-off".to_string()))?;
        read_secret_file(path)
    }
}

/// `HOST:PORT` with a non-empty host (a name, an IPv4 address or a bracketed IPv6 address)
/// and a port number other than 0.
pub fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.chars().any(|c| c.is_whitespace() || c.is_control())
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let secret = super::secret_file::first_line("handoff.secret_file", path)?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError(format!(
            "handoff.secret_file: the first line of {} must hold at least {MIN_SECRET_LEN} characters",
            path.display()
        )));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn peers_are_host_and_port() {
        for good in ["10.0.0.2:2526", "postern-1.postern:2526", "[::1]:2526"] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in ["10.0.0.2", ":2526", "h:0", "h:65536", "h :1", "h:x", ""] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_the_first_line_and_long_enough() {
        let dir = TempDir::new("handoff-secret");
        std::fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("secret");
        let config = HandoffConfig {
            secret_file: Some(path.clone()),
            ..HandoffConfig::default()
        };
        std::fs::write(&path, "0123456789abcdef\r\nsecond line\n").unwrap();
        assert_eq!(config.read_secret().unwrap(), "0123456789abcdef");
        std::fs::write(&path, "0123456789abcde\n").unwrap();
        let short = config.read_secret().unwrap_err().0;
        assert!(short.starts_with("handoff.secret_file: "), "{short}");
        assert!(!short.contains("0123456789abcde\n"), "{short}");
        std::fs::write(&path, "0123456789abcdef\x1b\n").unwrap();
        assert!(config.read_secret().is_err());
        let none = HandoffConfig::default().read_secret().unwrap_err().0;
        assert_eq!(none, "handoff.secret_file: required for hand-off");
    }
}
