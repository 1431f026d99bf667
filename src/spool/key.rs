//! The spool's record key: 32 random bytes in `journal.key`, made at the spool's first open.
//!
//! The key authenticates every journal record (`record.rs`), so it is what separates spool
//! structure from the message bytes clients write. It never leaves the spool directory and is
//! readable by the spool's owner only (0600 in a 0700 directory). It is written atomically (a
//! crash leaves either no key or the whole key) and never replaced: a spool whose journal has
//! keyed records but no key file refuses to open rather than set every record aside under a
//! fresh key.

use super::SpoolError;
use super::files::{self, FILE_MODE};
use super::record::{KEY_LEN, RecordKey};
use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// File name of the key, in the spool's root directory.
pub(super) const KEY_FILE: &str = "journal.key";

/// Reads the spool's key, or makes one when the spool has none yet.
///
/// # Errors
/// The key file is unreadable or not exactly [`KEY_LEN`] bytes; it is missing although
/// `journal_is_keyed` (records written under the lost key exist); or it could not be written.
pub(super) fn load_or_create(root: &Path, journal_is_keyed: bool) -> Result<RecordKey, SpoolError> {
    let path = root.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let secret: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SpoolError::Key {
                path: path.clone(),
                problem: "is not 32 bytes long",
            })?;
            fs::set_permissions(&path, Permissions::from_mode(FILE_MODE))
                .map_err(SpoolError::io("set key mode"))?;
            Ok(RecordKey::new(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if journal_is_keyed {
                return Err(SpoolError::Key {
                    path,
                    problem: "is missing, but the journal has records written under it",
                });
            }
            let mut secret = [0u8; KEY_LEN];
            aws_lc_rs::rand::fill(&mut secret).map_err(|_| SpoolError::Key {
                path: path.clone(),
                problem: "cannot be made: no random bytes",
            })?;
            files::write_atomically(root, KEY_FILE, &secret)?;
            Ok(RecordKey::new(&secret))
        }
        Err(e) => Err(SpoolError::Io {
            op: "read key",
            source: e,
        }),
    }
}
