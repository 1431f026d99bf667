//! Helpers shared by the tests: the one temporary-directory type of the crate's unit tests
//! (store, spool, listener, CLI, DKIM signer, delivery log) and of the integration tests that turn on the
//! `conformance` feature, and a throwaway PostgreSQL server ([`postgres`]). Not part of a
//! release build.

pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir (not created: the code under test creates what
/// it needs), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `postern-<name>-<pid>-<n>-<nanos>`, unique per process, call and time.
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("postern-{name}-{}-{n}-{nanos}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.0.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
