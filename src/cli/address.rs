//! `postern address add|remove|list`: the hosted addresses.
//!
//! Addresses are checked with [`crate::policy::parse_address`] before the store is opened, and
//! stored lowercase. Removing an address also removes its aliases and devices; the relay then
//! cuts the sessions of those devices within a second.

use super::{format_time, open_store, write_list};
use crate::config::Config;
use crate::policy::{Plan, parse_address};
use clap::builder::PossibleValue;
use std::io::Write;

/// `postern address ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum AddressCommand {
    /// Add an address.
    Add {
        /// The address, e.g. alice@example.org (stored lowercase).
        address: String,
        /// The plan of the address.
        #[arg(long, value_name = "NAME", value_enum, default_value_t = Plan::Starter)]
        plan: Plan,
    },
    /// Remove an address with its aliases and devices.
    Remove {
        /// The address.
        address: String,
    },
    /// List all addresses with plan and creation time.
    List {
        /// Print a JSON array of {address, plan, created_at}.
        #[arg(long)]
        json: bool,
    },
}

/// Plans as clap values, so that `--help` and usage errors list the valid names.
impl clap::ValueEnum for Plan {
    fn value_variants<'a>() -> &'a [Self] {
        &Plan::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// One element of `address list --json`.
#[derive(serde::Serialize)]
struct AddressJson<'a> {
    address: &'a str,
    plan: &'static str,
    created_at: String,
}

/// Runs one `address` command.
pub(super) fn run(cmd: AddressCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        AddressCommand::Add { address, plan } => {
            let address = parse_address(&address)?;
            open_store(config)?.add_address(&address, plan)?;
            writeln!(out, "added address {address} (plan {plan})")?;
        }
        AddressCommand::Remove { address } => {
            let address = parse_address(&address)?;
            open_store(config)?.remove_address(&address)?;
            writeln!(
                out,
                "removed address {address} with its aliases and devices"
            )?;
        }
        AddressCommand::List { json } => {
            let addresses = open_store(config)?.list_addresses()?;
            write_list(
                out,
                json,
                &addresses,
                |a| AddressJson {
                    address: &a.address,
                    plan: a.plan.as_str(),
                    created_at: format_time(a.created_at),
                },
                |a| {
                    vec![
                        a.address.clone(),
                        a.plan.to_string(),
                        format_time(a.created_at),
                    ]
                },
            )?;
        }
    }
    Ok(())
}
