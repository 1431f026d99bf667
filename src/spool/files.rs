//! The spool's file-system steps: private directories and files, directory fsync, and the
//! atomic write of a small file.
//!
//! The spool holds other people's mail, so every directory is 0700 and every file 0600. Modes
//! are set explicitly after creation as well as asked for at creation: the process umask can
//! only take bits away, and an unusual one (0 from a careless service manager, 0277 from a
//! strict one) must not decide who can read queued mail or whether the spool can write it.

use super::SpoolError;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every spool directory.
pub(super) const DIR_MODE: u32 = 0o700;
/// Mode of every spool file.
pub(super) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) and gives it [`DIR_MODE`], also when it existed: a
/// spool made by an older version has 0755 directories.
pub(super) fn private_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::create_dir_all(dir).map_err(SpoolError::io("create directory"))?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        .map_err(SpoolError::io("set directory mode"))
}

/// Options that create a file with [`FILE_MODE`] (umask permitting; see [`make_private`]).
pub(super) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Gives an open file exactly [`FILE_MODE`], whatever the umask did at creation.
pub(super) fn make_private(file: &File) -> std::io::Result<()> {
    file.set_permissions(Permissions::from_mode(FILE_MODE))
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io("fsync directory"))
}

/// Writes `bytes` as `dir/name` so that the file is either absent or complete after a crash:
/// a temporary file is written and fsynced, renamed over the name, then the directory fsynced.
pub(super) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut file = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        make_private(&file)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Io {
            op: "write file",
            source: e,
        });
    }
    fs::rename(&tmp, dir.join(name)).map_err(SpoolError::io("rename file"))?;
    fsync_dir(dir)
}
