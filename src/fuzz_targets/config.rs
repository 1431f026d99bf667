//! The config loader (`config/`): TOML text to a checked config.
//!
//! What must hold: a refused config gets a non-empty one-line error without control
//! characters (it is printed to the operator's terminal and the service log, then the relay
//! exits 2); nothing panics.
//!
//! Loading reads the files a config names (the trust anchor file, the MTA-STS roots): inputs
//! that name device files (`/dev/zero` would be read forever) are skipped; a relay's config is
//! its operator's, and such a path is no threat the loader must answer.

use crate::config::Config;

pub(super) fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match Config::parse(text) {
        Ok(_) => {}
        Err(e) => {
            let message = e.0;
            assert!(!message.is_empty(), "an empty config error");
            assert!(
                !message.chars().any(char::is_control),
                "a config error with a control character: {message:?}"
            );
        }
    }
}
