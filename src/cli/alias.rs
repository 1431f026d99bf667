//! `postern alias add|remove|list`: extra sender addresses of an address.
//!
//! An alias lets the owner of an address send as another address; it is not a login and has no
//! devices. Aliases and addresses share one namespace, which the store enforces. Both texts are
//! checked with [`crate::policy::parse_address`] before the store is opened.

use super::{open_store, write_list};
use crate::config::Config;
use crate::policy::parse_address;
use std::io::Write;

/// `postern alias ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum AliasCommand {
    /// Add an alias to an address.
    Add {
        /// The alias, e.g. sales@example.org.
        alias: String,
        /// The address that may send as the alias.
        address: String,
    },
    /// Remove an alias.
    Remove {
        /// The alias.
        alias: String,
    },
    /// List aliases, of one address or of all.
    List {
        /// Only the aliases of this address.
        address: Option<String>,
        /// Print a JSON array of {alias, address}.
        #[arg(long)]
        json: bool,
    },
}

/// One element of `alias list --json`.
#[derive(serde::Serialize)]
struct AliasJson<'a> {
    alias: &'a str,
    address: &'a str,
}

/// Runs one `alias` command.
pub(super) fn run(cmd: AliasCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        AliasCommand::Add { alias, address } => {
            let alias = parse_address(&alias)?;
            let address = parse_address(&address)?;
            open_store(config)?.add_alias(&alias, &address)?;
            writeln!(out, "added alias {alias} of {address}")?;
        }
        AliasCommand::Remove { alias } => {
            let alias = parse_address(&alias)?;
            open_store(config)?.remove_alias(&alias)?;
            writeln!(out, "removed alias {alias}")?;
        }
        AliasCommand::List { address, json } => {
            let address = address.as_deref().map(parse_address).transpose()?;
            let aliases = open_store(config)?.list_aliases(address.as_ref())?;
            write_list(
                out,
                json,
                &aliases,
                |a| AliasJson {
                    alias: &a.alias,
                    address: &a.address,
                },
                |a| vec![a.alias.clone(), a.address.clone()],
            )?;
        }
    }
    Ok(())
}
