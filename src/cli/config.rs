//! `postern config check [--files]`: validates a config without starting anything, as
//! `postfix check` and `nginx -t` do, so a deployment (the Helm chart's test, a config
//! management run) can refuse a bad file before a server ever reads it.
//!
//! The config is loaded before any command runs, so by the time [`run`] is called every key,
//! value and cross-key rule has passed (a failure has already exited 2 naming the key). With
//! `--files`, the files the config names are opened too, as `serve` would open them: the TLS
//! certificate and key, the PostgreSQL password and secret keys, the fleet secret. Files are
//! optional because the machine that renders a config (a CI job, `helm template`) often does
//! not hold the secrets the pods will mount.

use crate::config::{Config, ConfigError, StoreBackendName};
use std::io::Write;
use std::path::Path;

/// `postern config ...`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ConfigCommand {
    /// Check a config file: keys, values and the rules between them; exit 0 when it can be
    /// used, 2 with the key at fault otherwise.
    Check(CheckArgs),
}

/// `postern config check`.
#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    /// Also open the files the config names (TLS certificate and key, store password and
    /// secret keys, fleet secret), as `serve` does at start.
    #[arg(long)]
    files: bool,
}

/// Runs `postern config check` on the loaded `config` read from `path`.
///
/// # Errors
/// With `--files`, a [`ConfigError`] naming the key whose file cannot be used.
pub(super) fn run(
    cmd: ConfigCommand,
    config: &Config,
    path: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let ConfigCommand::Check(args) = cmd;
    if args.files {
        check_files(config)?;
    }
    let what = if args.files {
        "keys, values and the files it names are valid"
    } else {
        "keys and values are valid"
    };
    writeln!(out, "{}: {what}", path.display())?;
    Ok(())
}

/// Opens every file `serve` opens at start, without writing anything.
fn check_files(config: &Config) -> Result<(), ConfigError> {
    // Without tls.cert and tls.key, serve generates a development certificate: nothing to
    // open, and a check must not write one.
    if config.tls.cert.is_some() {
        crate::listener::tls::acceptor(config).map_err(|e| ConfigError(e.to_string()))?;
    }
    if config.store.backend == StoreBackendName::Postgres {
        crate::store::configured::postgres_settings(&config.store)?;
    }
    if config.handoff.secret_file.is_some() {
        config.handoff.read_secret()?;
    }
    Ok(())
}
