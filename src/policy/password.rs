//! Device passwords: generation, hashing and checking.
//!
//! Following the provider's model ("Understanding email address password management"), an
//! address has no password of its own: each device or program gets its own password, generated
//! by Postern, shown once, revocable on its own. Users never choose these passwords.
//!
//! # Format
//! 28 characters of the RFC 4648 base32 alphabet in lowercase (`a-z`, `2-7`; no `0`, `1`, `8`
//! or `9` to confuse with letters), in 7 groups of 4 joined by `-`, e.g.
//! `k3zq-mx7a-...`: 28 x 5 = 140 bits, drawn from the operating system's CSPRNG
//! (`getrandom`, through `rand::rngs::SysRng`). Each character comes from the low 5 bits of
//! one random byte; 256 is a multiple of 32, so every character is uniform and independent.
//!
//! # Why SHA-256 and not a slow KDF
//! Argon2, scrypt or bcrypt make each guess expensive so that an attacker who steals the hash
//! table cannot search the small space of passwords *people* pick. Here nobody picks: every
//! password is 140 uniformly random bits. Searching that space costs about 2^139 SHA-256
//! evaluations on average, far beyond reach whether each costs a nanosecond or a second, so
//! stretching adds nothing to the security of a stolen table. It would however add tens of
//! milliseconds of CPU and memory to every AUTH of every SMTP session, an easy lever for denial
//! of service. For the same reason no salt is needed: precomputed tables are useless against
//! 2^140 possible inputs, and equal hashes cannot arise between independent passwords.
//! The store keeps only the 32-byte hash; the password itself is printed once and forgotten.
//!
//! # Constant-time comparison
//! [`verify`] compares digests with `subtle::ConstantTimeEq`, so the time taken does not reveal
//! how many leading bytes of a guess's hash matched.
//!
//! # Not here
//! Which devices exist, revocation and rotation live in the store; rate limiting failed AUTHs
//! lives in the listener.

use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Characters of a generated password: RFC 4648 base32, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Groups of a generated password.
const GROUPS: usize = 7;
/// Characters per group.
const GROUP_LEN: usize = 4;
/// Bits of entropy of a generated password (5 per character).
pub const ENTROPY_BITS: usize = GROUPS * GROUP_LEN * 5;
const _: () = assert!(
    ENTROPY_BITS >= 128,
    "device passwords need at least 128 bits"
);
/// Length of a generated password, separators included.
pub const PASSWORD_LEN: usize = GROUPS * GROUP_LEN + GROUPS - 1;

/// A freshly generated device password.
///
/// Deliberately neither `Display` nor a revealing `Debug`: formatting one by mistake (in a log
/// line, an error) prints `DevicePassword(<redacted>)`. The only way to the text is the
/// explicit [`DevicePassword::expose`], used once to show the password to its owner. No
/// `PartialEq` either: compare hashes with [`verify`], in constant time.
pub struct DevicePassword(String);

impl DevicePassword {
    /// The password text, for showing it to the user once. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256 hash, the only form the store keeps.
    pub fn hash(&self) -> [u8; 32] {
        hash(&self.0)
    }
}

impl fmt::Debug for DevicePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePassword(<redacted>)")
    }
}

/// Generates a device password from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system cannot provide random bytes (`getrandom` failing on a running Linux
/// system means the kernel is broken); see [`try_generate`] for the fallible form.
pub fn generate() -> DevicePassword {
    try_generate().expect("the operating system's random generator failed")
}

/// Generates a device password, reporting a failure of the OS random generator.
///
/// # Errors
/// The operating system could not provide random bytes.
pub fn try_generate() -> Result<DevicePassword, rand::rngs::SysError> {
    let mut bytes = [0u8; GROUPS * GROUP_LEN];
    SysRng.try_fill_bytes(&mut bytes)?;
    let mut text = String::with_capacity(PASSWORD_LEN);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            text.push('-');
        }
        text.push(char::from(ALPHABET[usize::from(byte & 0x1f)]));
    }
    bytes.fill(0);
    Ok(DevicePassword(text))
}

/// SHA-256 of a password, as stored.
pub fn hash(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

/// Whether `password` hashes to `stored`, compared in constant time.
pub fn verify(password: &str, stored: &[u8; 32]) -> bool {
    hash(password).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn format_is_seven_groups_of_four_base32() {
        let p = generate();
        let text = p.expose();
        assert_eq!(text.len(), PASSWORD_LEN);
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(groups.len(), 7);
        for g in groups {
            assert_eq!(g.len(), 4, "{text}");
            assert!(g.bytes().all(|b| ALPHABET.contains(&b)), "{text}");
        }
    }

    #[test]
    fn passwords_differ_and_use_the_whole_alphabet() {
        let mut seen = HashSet::new();
        let mut chars = HashSet::new();
        for _ in 0..200 {
            let p = generate();
            chars.extend(p.expose().bytes().filter(|&b| b != b'-'));
            assert!(seen.insert(p.expose().to_string()));
        }
        // 5,600 uniform draws from 32 symbols: all appear with overwhelming probability.
        assert_eq!(chars.len(), 32);
    }

    #[test]
    fn debug_does_not_leak() {
        let p = generate();
        let shown = format!("{p:?}");
        assert_eq!(shown, "DevicePassword(<redacted>)");
        assert!(!shown.contains(p.expose()));
    }

    #[test]
    fn hash_and_verify() {
        let p = generate();
        let stored = p.hash();
        assert_eq!(stored, hash(p.expose()));
        assert!(verify(p.expose(), &stored));
        assert!(!verify(&p.expose().to_uppercase(), &stored));
        assert!(!verify("", &stored));
        assert!(!verify(generate().expose(), &stored));
        // Known answer: SHA-256("abc").
        assert_eq!(hash("abc")[..4], [0xba, 0x78, 0x16, 0xbf],);
    }
}
