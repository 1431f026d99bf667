//! `postern hosting add|remove|list`: the web-hosting accounts that relay on port 25.
//!
//! A hosting account is a web-hosting customer whose servers send PHP `mail()` through the
//! relay listener without AUTH. It has client networks (CIDR; a connection belongs to the
//! account whose network contains it most specifically) and sender domains (`MAIL FROM` must be
//! in one of them). Two accounts cannot have the same network; nested networks of different
//! lengths can (the longer prefix wins). Its recipients count against the hosting limit
//! (`quota.hosting`) unless `postern limit set --hosting` overrides it.
//!
//! Every name, network and domain is checked before the store is opened.

use super::{format_time, open_store, write_list};
use crate::config::Config;
use crate::store::accounts::{check_hosting_name, parse_hosting_domain, parse_hosting_network};
use std::collections::BTreeSet;
use std::io::Write;

/// `postern hosting ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum HostingCommand {
    /// Add a hosting account with its client networks and sender domains.
    Add {
        /// The account name: 1-64 of a-z, 0-9, '.', '_', '-'.
        account: String,
        /// A client network in CIDR notation, e.g. 192.0.2.0/24 (repeatable).
        #[arg(long = "network", value_name = "CIDR", required = true)]
        networks: Vec<String>,
        /// A sender domain, e.g. example.org (repeatable).
        #[arg(long = "domain", value_name = "DOMAIN", required = true)]
        domains: Vec<String>,
    },
    /// Remove a hosting account with its networks, domains and limit override.
    Remove {
        /// The account name.
        account: String,
    },
    /// List hosting accounts with networks, domains and limit overrides.
    List {
        /// Print a JSON array of {name, networks, domains, daily_limit, created_at}.
        #[arg(long)]
        json: bool,
    },
}

/// One element of `hosting list --json`.
#[derive(serde::Serialize)]
struct HostingJson<'a> {
    name: &'a str,
    networks: Vec<String>,
    domains: &'a [String],
    daily_limit: Option<u32>,
    created_at: String,
}

/// Runs one `hosting` command.
pub(super) fn run(cmd: HostingCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        HostingCommand::Add {
            account,
            networks,
            domains,
        } => {
            check_hosting_name(&account)?;
            let networks = networks
                .iter()
                .map(|n| parse_hosting_network(n))
                .collect::<Result<Vec<_>, _>>()?;
            let domains = domains
                .iter()
                .map(|d| parse_hosting_domain(d))
                .collect::<Result<Vec<_>, _>>()?;
            open_store(config)?.add_hosting_account(&account, &networks, &domains)?;
            // As the store keeps them: without duplicates, sorted.
            let networks: BTreeSet<_> = networks.iter().map(ToString::to_string).collect();
            let domains: BTreeSet<_> = domains.into_iter().collect();
            writeln!(
                out,
                "added hosting account {account} (networks {}; domains {})",
                networks.into_iter().collect::<Vec<_>>().join(", "),
                domains.into_iter().collect::<Vec<_>>().join(", ")
            )?;
        }
        HostingCommand::Remove { account } => {
            check_hosting_name(&account)?;
            open_store(config)?.remove_hosting_account(&account)?;
            writeln!(out, "removed hosting account {account}")?;
        }
        HostingCommand::List { json } => {
            let accounts = open_store(config)?.list_hosting_accounts()?;
            write_list(
                out,
                json,
                &accounts,
                |a| HostingJson {
                    name: &a.name,
                    networks: a.networks.iter().map(ToString::to_string).collect(),
                    domains: &a.domains,
                    daily_limit: a.daily_limit,
                    created_at: format_time(a.created_at),
                },
                |a| {
                    vec![
                        a.name.clone(),
                        a.networks
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        a.domains.join(","),
                        a.daily_limit
                            .map_or_else(|| "-".to_string(), |n| n.to_string()),
                        format_time(a.created_at),
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
    fn hosting_commands() {
        let f = Fixture::new("hosting");
        assert_eq!(
            f.ok(&[
                "hosting",
                "add",
                "web1",
                "--network",
                "192.0.2.0/24",
                "--network",
                "2001:db8:1::/48",
                "--domain",
                "Example.org",
                "--domain",
                "shop.example.net",
            ]),
            "added hosting account web1 (networks 192.0.2.0/24, 2001:db8:1::/48; domains \
             example.org, shop.example.net)\n"
        );
        f.add_hosting("web0", "192.0.2.128/25", "zero.example");
        let list = f.ok(&["hosting", "list"]);
        let lines: Vec<_> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        assert!(
            lines[0].starts_with(
                "web0  192.0.2.128/25                zero.example                  -  20"
            ),
            "{list}"
        );
        assert!(
            lines[1].starts_with(
                "web1  192.0.2.0/24,2001:db8:1::/48  example.org,shop.example.net  -  20"
            ),
            "{list}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["hosting", "list", "--json"])).unwrap();
        assert_eq!(json[1]["name"], "web1");
        assert_eq!(
            json[1]["networks"],
            serde_json::json!(["192.0.2.0/24", "2001:db8:1::/48"])
        );
        assert_eq!(
            json[1]["domains"],
            serde_json::json!(["example.org", "shop.example.net"])
        );
        assert_eq!(json[1]["daily_limit"], serde_json::Value::Null);
        assert!(json[1]["created_at"].as_str().unwrap().ends_with('Z'));

        assert_eq!(
            f.fails(&[
                "hosting",
                "add",
                "web2",
                "--network",
                "192.0.2.0/24",
                "--domain",
                "two.example"
            ]),
            "postern: network 192.0.2.0/24 (same prefix length) of hosting account \"web1\" \
             already exists"
        );
        assert_eq!(
            f.fails(&[
                "hosting",
                "add",
                "web1",
                "--network",
                "203.0.113.0/24",
                "--domain",
                "one.example"
            ]),
            "postern: hosting account \"web1\" already exists"
        );
        f.ok(&["hosting", "remove", "web0"]);
        assert_eq!(
            f.fails(&["hosting", "remove", "web0"]),
            "postern: hosting account \"web0\" not found"
        );
        assert_eq!(f.ok(&["hosting", "list"]).lines().count(), 1);
    }

    #[test]
    fn bad_hosting_input_changes_nothing() {
        let f = Fixture::new("hosting-bad");
        // Usage errors: exit 2.
        for args in [
            &["hosting", "add", "web1", "--domain", "example.org"][..],
            &["hosting", "add", "web1", "--network", "192.0.2.0/24"],
            &[
                "hosting",
                "add",
                "--network",
                "192.0.2.0/24",
                "--domain",
                "example.org",
            ],
            &["hosting", "remove"],
            &["hosting", "frobnicate"],
        ] {
            let (status, _, err) = f.run(args);
            assert_eq!(status, 2, "{args:?}: {err}");
        }
        // Invalid values: exit 1, one line, before the store is opened.
        for (args, message) in [
            (
                &[
                    "hosting",
                    "add",
                    "Web1",
                    "--network",
                    "192.0.2.0/24",
                    "--domain",
                    "example.org",
                ][..],
                "postern: invalid hosting account name \"Web1\": character 'W' at position 1 is \
                 not allowed (use a-z, 0-9, '.', '_' and '-')",
            ),
            (
                &[
                    "hosting",
                    "add",
                    "web1",
                    "--network",
                    "192.0.2.1/24",
                    "--domain",
                    "example.org",
                ],
                "postern: network 192.0.2.1/24 has host bits set: write 192.0.2.0/24 (the whole \
                 network) or 192.0.2.1/32 (one host)",
            ),
            (
                &[
                    "hosting",
                    "add",
                    "web1",
                    "--network",
                    "192.0.2/24",
                    "--domain",
                    "example.org",
                ],
                "postern: invalid network \"192.0.2/24\": expected CIDR notation such as \
                 192.0.2.0/24 or 2001:db8::/48",
            ),
            (
                &[
                    "hosting",
                    "add",
                    "web1",
                    "--network",
                    "192.0.2.0/24",
                    "--domain",
                    "localhost",
                ],
                "postern: invalid domain \"localhost\": the domain needs at least two labels, \
                 such as example.org",
            ),
            (
                &["hosting", "remove", "web 1"],
                "postern: invalid hosting account name \"web 1\": character ' ' at position 4 \
                 is not allowed (use a-z, 0-9, '.', '_' and '-')",
            ),
        ] {
            assert_eq!(f.fails(args), message, "{args:?}");
        }
        assert!(!f.dir.join("var").exists(), "the store was created");
    }
}
