//! `postern device add|list|rotate|revoke|revoke-all`: the device passwords of an address.
//!
//! Following the provider's model, each device or program gets its own generated password,
//! shown once: `add` and `rotate` print a short line, then the password alone on the last line
//! of stdout. Lost passwords are not recovered (only a hash is kept): rotate or add another.
//! Rotating or revoking cuts the device's open sessions within a second (the relay's
//! revocation watcher); other devices of the address are untouched.

use super::{format_time, open_store, write_list};
use crate::config::Config;
use crate::policy::{DevicePassword, EmailAddress, parse_address};
use crate::store::check_device_name;
use std::io::Write;

/// `postern device ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum DeviceCommand {
    /// Add a device to an address and print its new password.
    Add {
        /// The address.
        address: String,
        /// A name for the device, e.g. "phone" (unique per address).
        #[arg(long)]
        name: String,
    },
    /// List the devices of an address (never their passwords).
    List {
        /// The address.
        address: String,
        /// Print a JSON array of {name, created_at}.
        #[arg(long)]
        json: bool,
    },
    /// Give a device a new password; the old one stops working at once.
    Rotate {
        /// The address.
        address: String,
        /// The device name.
        name: String,
    },
    /// Revoke one device's password.
    Revoke {
        /// The address.
        address: String,
        /// The device name.
        name: String,
    },
    /// Revoke every device password of an address.
    RevokeAll {
        /// The address.
        address: String,
    },
}

/// One element of `device list --json`.
#[derive(serde::Serialize)]
struct DeviceJson<'a> {
    name: &'a str,
    created_at: String,
}

/// Runs one `device` command.
pub(super) fn run(cmd: DeviceCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add { address, name } => {
            let address = parse_address(&address)?;
            check_device_name(&name)?;
            let password = open_store(config)?.add_device(&address, &name)?;
            show_password(
                out,
                &format!("added device {name:?} to {address}"),
                &password,
            )?;
        }
        DeviceCommand::List { address, json } => {
            let address = parse_address(&address)?;
            let devices = open_store(config)?.list_devices(&address)?;
            write_list(
                out,
                json,
                &devices,
                |d| DeviceJson {
                    name: &d.name,
                    created_at: format_time(d.created_at),
                },
                |d| vec![d.name.clone(), format_time(d.created_at)],
            )?;
        }
        DeviceCommand::Rotate { address, name } => {
            let address = parse_address(&address)?;
            let password = open_store(config)?.rotate_device(&address, &name)?;
            show_password(
                out,
                &format!("new password for device {name:?} of {address}"),
                &password,
            )?;
        }
        DeviceCommand::Revoke { address, name } => {
            let address = parse_address(&address)?;
            open_store(config)?.revoke_device(&address, &name)?;
            writeln!(out, "revoked device {name:?} of {address}")?;
        }
        DeviceCommand::RevokeAll { address } => {
            let address: EmailAddress = parse_address(&address)?;
            let count = open_store(config)?.revoke_all(&address)?;
            let noun = if count == 1 { "device" } else { "devices" };
            writeln!(out, "revoked {count} {noun} of {address}")?;
        }
    }
    Ok(())
}

/// The one place a password is printed: a human line, then the password alone on the last line.
fn show_password(out: &mut dyn Write, what: &str, password: &DevicePassword) -> anyhow::Result<()> {
    writeln!(out, "{what}; its password is shown only this once:")?;
    writeln!(out, "{}", password.expose())?;
    Ok(())
}
