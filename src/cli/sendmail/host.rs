//! This machine as the origin of a message from `postern sendmail`: its host name (for EHLO
//! and the default sender) and the local user who sends when nothing else names a sender.

use crate::config::Config;

/// This machine's host name (`/proc/sys/kernel/hostname`), or the config's `server.hostname`.
fn local_hostname(config: &Config) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        })
        .unwrap_or_else(|| config.server.hostname.clone())
}

/// The name for EHLO.
pub(super) fn helo_name(config: &Config) -> String {
    local_hostname(config)
}

/// `$USER@hostname`: the sender when neither `-f` nor `From:` gives one. `USER`, else
/// `LOGNAME`, else the name of the process's user in `/etc/passwd` (PHP-FPM clears the
/// environment), else `nobody`.
pub(super) fn default_sender(config: &Config) -> String {
    let valid = |name: &String| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(valid)
        .or_else(|| passwd_name().filter(valid))
        .unwrap_or_else(|| "nobody".to_string());
    format!("{user}@{}", local_hostname(config))
}

/// The `/etc/passwd` name of the user owning this process (the owner of `/proc/self`).
fn passwd_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut parts = line.split(':');
        let name = parts.next()?;
        (parts.nth(1)? == uid).then(|| name.to_string())
    })
}
