//! `postern migrate`: brings the directory's PostgreSQL database to this postern's schema
//! version (see `store/postgres/schema.rs`). Run it once per upgrade, before the new replicas
//! start (a Kubernetes init container or Job); several at once are safe, one of them migrates.
//! The embedded store migrates its own file when opened, so here it only says so.

use crate::config::Config;
use crate::store::configured::ConfiguredStore;
use std::io::Write;

/// Runs `migrate`.
pub(super) fn run(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match ConfiguredStore::open(config)? {
        ConfiguredStore::Embedded(store) => writeln!(
            out,
            "embedded store {}: schema current (the embedded store migrates itself when opened)",
            store.path().display()
        )?,
        ConfiguredStore::Postgres(store) => {
            let done = store.migrate_blocking()?;
            if done.from == done.to {
                writeln!(
                    out,
                    "PostgreSQL {}: schema version {} is current",
                    store.server(),
                    done.to
                )?;
            } else {
                writeln!(
                    out,
                    "PostgreSQL {}: schema migrated from version {} to {}",
                    store.server(),
                    done.from,
                    done.to
                )?;
            }
        }
    }
    Ok(())
}
