//! `postern limit set|clear|list`: per-identity daily recipient limits ("upon written request").
//!
//! An override replaces the limit of the address's plan (`quota.plans`) or the hosting default
//! (`quota.hosting`) until it is cleared; it goes away with its address or account. The relay
//! reads it at each transaction, so a change applies to the next message, also while
//! `postern serve` runs. Aliases have no limit of their own: mail sent as an alias counts
//! against the address that logged in.

use super::{open_store, write_list};
use crate::config::Config;
use crate::policy::parse_address;
use crate::store::{QuotaIdentity, check_hosting_name};
use std::io::Write;

/// Whose limit: an address, or `--hosting ACCOUNT`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct Target {
    /// The address, e.g. alice@example.org.
    address: Option<String>,
    /// A hosting account instead of an address.
    #[arg(long, value_name = "ACCOUNT")]
    hosting: Option<String>,
}

impl Target {
    /// The identity, checked (address syntax or account name) but not looked up.
    pub(super) fn identity(&self) -> anyhow::Result<QuotaIdentity> {
        match (&self.address, &self.hosting) {
            (Some(address), None) => Ok(QuotaIdentity::Address(
                parse_address(address)?.into_string(),
            )),
            (None, Some(account)) => {
                check_hosting_name(account)?;
                Ok(QuotaIdentity::Hosting(account.clone()))
            }
            // clap's group makes exactly one of them present.
            _ => anyhow::bail!("name an address or --hosting ACCOUNT"),
        }
    }
}

/// `postern limit ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum LimitCommand {
    /// Set the daily recipient limit of an address (or --hosting ACCOUNT), replacing its
    /// plan's limit or the hosting default.
    Set {
        #[command(flatten)]
        target: Target,
        /// Recipients per rolling 24 hours (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        daily: u32,
    },
    /// Remove the override: the plan's limit (or the hosting default) applies again.
    Clear {
        #[command(flatten)]
        target: Target,
    },
    /// List every override.
    List {
        /// Print a JSON array of {kind, name, daily}.
        #[arg(long)]
        json: bool,
    },
}

/// One element of `limit list --json`.
#[derive(serde::Serialize)]
struct LimitJson<'a> {
    kind: &'static str,
    name: &'a str,
    daily: u32,
}

/// `address`, `hosting`: the kinds as `limit list` and `quota show --json` show them.
pub(super) fn kind_word(identity: &QuotaIdentity) -> &'static str {
    match identity {
        QuotaIdentity::Address(_) => "address",
        QuotaIdentity::Hosting(_) => "hosting",
    }
}

/// Runs one `limit` command.
pub(super) fn run(cmd: LimitCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        LimitCommand::Set { target, daily } => {
            let identity = target.identity()?;
            let previous = open_store(config)?.set_limit(&identity, daily)?;
            let was = match previous {
                Some(old) => format!("replacing the override of {old}"),
                None => "replacing the default limit".to_string(),
            };
            writeln!(
                out,
                "set the daily limit of {} {} to {daily} recipients ({was})",
                identity.kind(),
                identity.name()
            )?;
        }
        LimitCommand::Clear { target } => {
            let identity = target.identity()?;
            let (kind, name) = (identity.kind(), identity.name());
            match open_store(config)?.clear_limit(&identity)? {
                Some(old) => writeln!(
                    out,
                    "cleared the daily limit override of {kind} {name} (was {old}); the default \
                     limit applies"
                )?,
                None => writeln!(out, "{kind} {name} had no daily limit override")?,
            }
        }
        LimitCommand::List { json } => {
            let limits = open_store(config)?.list_limits()?;
            write_list(
                out,
                json,
                &limits,
                |l| LimitJson {
                    kind: kind_word(&l.identity),
                    name: l.identity.name(),
                    daily: l.daily,
                },
                |l| {
                    vec![
                        kind_word(&l.identity).to_string(),
                        l.identity.name().to_string(),
                        l.daily.to_string(),
                    ]
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixture;

    #[test]
    fn limit_commands() {
        let f = Fixture::new("limit");
        f.ok(&["address", "add", "alice@example.org"]);
        f.ok(&["alias", "add", "sales@example.org", "alice@example.org"]);
        f.add_hosting("web1", "192.0.2.0/24", "example.org");
        assert_eq!(
            f.ok(&["limit", "set", "Alice@Example.org", "--daily", "2000"]),
            "set the daily limit of address alice@example.org to 2000 recipients (replacing the \
             default limit)\n"
        );
        assert_eq!(
            f.ok(&["limit", "set", "alice@example.org", "--daily", "3000"]),
            "set the daily limit of address alice@example.org to 3000 recipients (replacing the \
             override of 2000)\n"
        );
        assert_eq!(
            f.ok(&["limit", "set", "--hosting", "web1", "--daily", "120"]),
            "set the daily limit of hosting account web1 to 120 recipients (replacing the \
             default limit)\n"
        );
        assert_eq!(
            f.ok(&["limit", "list"]),
            "address  alice@example.org  3000\nhosting  web1               120\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["limit", "list", "--json"])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"kind": "address", "name": "alice@example.org", "daily": 3000},
                {"kind": "hosting", "name": "web1", "daily": 120},
            ])
        );
        let hosting: serde_json::Value =
            serde_json::from_str(&f.ok(&["hosting", "list", "--json"])).unwrap();
        assert_eq!(hosting[0]["daily_limit"], 120);

        // Unknown identities: exit 1, one line.
        assert_eq!(
            f.fails(&["limit", "set", "bob@example.org", "--daily", "10"]),
            "postern: address \"bob@example.org\" not found"
        );
        assert_eq!(
            f.fails(&["limit", "set", "sales@example.org", "--daily", "10"]),
            "postern: address \"sales@example.org\" not found"
        );
        assert_eq!(
            f.fails(&["limit", "clear", "--hosting", "web2"]),
            "postern: hosting account \"web2\" not found"
        );
        f.fails(&["limit", "set", "a!b@example.org", "--daily", "10"]);

        assert_eq!(
            f.ok(&["limit", "clear", "alice@example.org"]),
            "cleared the daily limit override of address alice@example.org (was 3000); the \
             default limit applies\n"
        );
        assert_eq!(
            f.ok(&["limit", "clear", "alice@example.org"]),
            "address alice@example.org had no daily limit override\n"
        );
        f.ok(&["limit", "clear", "--hosting", "web1"]);
        assert_eq!(f.ok(&["limit", "list", "--json"]).trim(), "[]");
    }

    #[test]
    fn limit_usage_errors_exit_2_and_change_nothing() {
        let f = Fixture::new("limit-usage");
        f.ok(&["address", "add", "alice@example.org"]);
        for args in [
            &["limit", "set", "alice@example.org"][..],
            &["limit", "set", "alice@example.org", "--daily", "0"],
            &["limit", "set", "alice@example.org", "--daily", "-5"],
            &["limit", "set", "alice@example.org", "--daily", "4294967296"],
            &["limit", "set", "alice@example.org", "--daily", "many"],
            &["limit", "set", "--daily", "10"],
            &[
                "limit",
                "set",
                "alice@example.org",
                "--hosting",
                "web1",
                "--daily",
                "10",
            ],
            &["limit", "clear"],
            &["limit", "frobnicate"],
        ] {
            let (status, _, err) = f.run(args);
            assert_eq!(status, 2, "{args:?}: {err}");
        }
        assert_eq!(f.ok(&["limit", "list"]), "");
    }
}
