//! `postern dkim generate|import|show|list|activate|remove|reencrypt|verify`: the signing keys.
//!
//! A new key is *inactive* unless `--activate` is given: the safe rotation is "generate,
//! publish the printed record, wait for the DNS TTL, activate", and a key that signs before its
//! record is visible makes every receiver see a failing signature. `activate` switches the
//! domain's key of that algorithm at once (the relay reads the keys for every message);
//! a domain with an active RSA key and an active Ed25519 key is signed with both.
//!
//! The record lines printed by `generate`, `import` and `show` are zone-file text: comments
//! start with `;`, and the last line of `generate` and `import` is the record itself, ready to
//! paste (or to take with `tail -n 1`). Private keys are never printed.
//!
//! `verify` checks the DKIM signatures of a message file with mail-auth's verifier, reading the
//! keys from the DNS servers of `[dns] servers` (the system resolver when empty): what a
//! receiver will see. The body is first put in RFC relaxed canonical form, which works around
//! mail-auth 0.13.3's one divergence from the RFC (see [`rfc_relaxed_body`]).

use super::{format_time, open_store, write_json, write_table};
use crate::config::Config;
use crate::dkim::keys::{parse_selector, record_name, txt_value, zone_line};
use crate::dkim::{Algorithm, KeyMaterial};
use crate::store::configured::ConfiguredStore;
use crate::store::{DkimKeyInfo, NewDkimKey, accounts::parse_hosting_domain};
use anyhow::Context as _;
use std::io::{Read, Write};
use std::path::PathBuf;

/// `postern dkim ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum DkimCommand {
    /// Make a key and print the DNS record that publishes it.
    Generate {
        /// The signing domain (the domain of the From: addresses it signs).
        domain: String,
        /// The selector, e.g. "s2026": the record is SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::Rsa)]
        algorithm: Algorithm,
        /// RSA modulus size (RSA only) [default: 2048].
        #[arg(long, value_parser = ["2048", "3072", "4096"])]
        bits: Option<String>,
        /// Sign with it from the next message on (replacing the domain's active key of the
        /// same algorithm). Without it, publish the record first, then `dkim activate`.
        #[arg(long)]
        activate: bool,
    },
    /// Store an existing private key (PEM: PKCS#1 RSA, or PKCS#8 RSA or Ed25519).
    Import {
        /// The signing domain.
        domain: String,
        /// The selector under which the key is published.
        selector: String,
        /// The PEM file holding the private key.
        #[arg(long, value_name = "PEM")]
        key_file: PathBuf,
        /// Sign with it from the next message on.
        #[arg(long)]
        activate: bool,
    },
    /// Print the DNS records of a domain's keys (never the private keys).
    Show {
        /// The signing domain.
        domain: String,
        /// Only this selector.
        #[arg(long)]
        selector: Option<String>,
    },
    /// List the keys of all domains, or of one.
    List {
        /// Only this domain's keys.
        domain: Option<String>,
        /// Print a JSON array of {domain, selector, algorithm, bits, active, created_at, record, txt}.
        #[arg(long)]
        json: bool,
    },
    /// Sign the domain's messages with this selector's key from the next message on.
    Activate {
        /// The signing domain.
        domain: String,
        /// The selector to sign with.
        selector: String,
    },
    /// Delete a key (an active key only with --force).
    Remove {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
        /// Delete even the active key (the domain is then signed without it).
        #[arg(long)]
        force: bool,
    },
    /// Seal every stored private key again under `[store] secret_key_file` (PostgreSQL
    /// directory only): the step of a secret key rotation after which the previous key files
    /// can be removed from `previous_secret_key_files`.
    Reencrypt,
    /// Verify the DKIM signatures of a message (a file, or standard input) against DNS.
    Verify {
        /// The message file; standard input when absent.
        file: Option<PathBuf>,
    },
}

/// `dkim reencrypt`.
fn reencrypt(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let ConfiguredStore::Postgres(store) = ConfiguredStore::open_checked(config)? else {
        anyhow::bail!(
            "dkim reencrypt: the embedded store does not seal its keys (its file is readable by \
             the service user only); nothing to do"
        );
    };
    let count = store.reencrypt_dkim_keys()?;
    writeln!(
        out,
        "{count} DKIM private keys sealed again under secret key {}",
        store.secret_key_id()
    )?;
    Ok(())
}

/// One element of `dkim list --json`.
#[derive(serde::Serialize)]
struct KeyJson<'a> {
    domain: &'a str,
    selector: &'a str,
    algorithm: Algorithm,
    bits: u32,
    active: bool,
    created_at: String,
    record: String,
    txt: String,
}

/// Runs one `dkim` command.
pub(super) fn run(cmd: DkimCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        DkimCommand::Generate {
            domain,
            selector,
            algorithm,
            bits,
            activate,
        } => {
            let (domain, selector) = parse_key_name(&domain, &selector)?;
            let material = KeyMaterial::generate(algorithm, key_bits(algorithm, bits)?)?;
            store_and_print(config, out, domain, selector, material, activate)
        }
        DkimCommand::Import {
            domain,
            selector,
            key_file,
            activate,
        } => {
            let (domain, selector) = parse_key_name(&domain, &selector)?;
            let pem = std::fs::read(&key_file)
                .with_context(|| format!("cannot read {}", key_file.display()))?;
            let material =
                KeyMaterial::from_pem(&pem).with_context(|| format!("{}", key_file.display()))?;
            store_and_print(config, out, domain, selector, material, activate)
        }
        DkimCommand::Show { domain, selector } => show(config, &domain, selector.as_deref(), out),
        DkimCommand::List { domain, json } => list(config, domain.as_deref(), json, out),
        DkimCommand::Activate { domain, selector } => {
            let (domain, selector) = parse_key_name(&domain, &selector)?;
            let previous = open_store(config)?.activate_dkim_key(&domain, &selector)?;
            match previous {
                Some(p) if p == selector => {
                    writeln!(out, "{domain} already signs with selector {selector}")?
                }
                Some(p) => writeln!(out, "{domain} now signs with selector {selector} (was {p})")?,
                None => writeln!(out, "{domain} now signs with selector {selector}")?,
            }
            Ok(())
        }
        DkimCommand::Remove {
            domain,
            selector,
            force,
        } => {
            let (domain, selector) = parse_key_name(&domain, &selector)?;
            let was_active = open_store(config)?.remove_dkim_key(&domain, &selector, force)?;
            writeln!(
                out,
                "removed DKIM selector {selector} of {domain}{}",
                if was_active {
                    " (it was active: no longer signing with it)"
                } else {
                    ""
                }
            )?;
            Ok(())
        }
        DkimCommand::Reencrypt => reencrypt(config, out),
        DkimCommand::Verify { file } => {
            let message = match &file {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            verify(config, &message, out)
        }
    }
}

/// A key's domain and selector as typed, checked and normalised.
fn parse_key_name(domain: &str, selector: &str) -> anyhow::Result<(String, String)> {
    let domain = parse_hosting_domain(domain)?;
    let selector = parse_selector(selector).map_err(anyhow::Error::msg)?;
    Ok((domain, selector))
}

/// `--bits` for `generate`: RSA only, 2048 unless given.
fn key_bits(algorithm: Algorithm, bits: Option<String>) -> anyhow::Result<u32> {
    match (algorithm, bits) {
        (Algorithm::Ed25519, Some(_)) => {
            anyhow::bail!("--bits applies to RSA keys only; Ed25519 keys have one size")
        }
        (_, Some(bits)) => bits.parse().context("--bits"),
        (_, None) => Ok(2048),
    }
}

/// `dkim show`: the zone-file records of a domain's keys, or of one selector.
fn show(
    config: &Config,
    domain: &str,
    selector: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let domain = parse_hosting_domain(domain)?;
    let selector = selector
        .map(parse_selector)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let keys: Vec<DkimKeyInfo> = open_store(config)?
        .list_dkim_keys(Some(&domain))?
        .into_iter()
        .filter(|k| selector.as_ref().is_none_or(|s| *s == k.selector))
        .collect();
    if keys.is_empty() {
        match selector {
            Some(s) => anyhow::bail!("DKIM selector \"{s}\" of domain \"{domain}\" not found"),
            None => anyhow::bail!("domain \"{domain}\" has no DKIM keys"),
        }
    }
    for key in &keys {
        writeln!(
            out,
            "; {} {}-{} {}",
            key.selector,
            key.algorithm.name(),
            key.bits,
            if key.active { "active" } else { "inactive" }
        )?;
        writeln!(
            out,
            "{}",
            zone_line(&key.domain, &key.selector, key.algorithm, &key.public_key)
        )?;
    }
    Ok(())
}

/// `dkim list`: a table, or JSON objects.
fn list(
    config: &Config,
    domain: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let domain = domain.map(parse_hosting_domain).transpose()?;
    let keys = open_store(config)?.list_dkim_keys(domain.as_deref())?;
    if json {
        let objects: Vec<KeyJson<'_>> = keys
            .iter()
            .map(|k| KeyJson {
                domain: &k.domain,
                selector: &k.selector,
                algorithm: k.algorithm,
                bits: k.bits,
                active: k.active,
                created_at: format_time(k.created_at),
                record: record_name(&k.domain, &k.selector),
                txt: txt_value(k.algorithm, &k.public_key),
            })
            .collect();
        write_json(out, &objects)
    } else {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                vec![
                    k.domain.clone(),
                    k.selector.clone(),
                    format!("{}-{}", k.algorithm.name(), k.bits),
                    if k.active { "active" } else { "inactive" }.to_string(),
                    format_time(k.created_at),
                ]
            })
            .collect();
        write_table(out, &rows)
    }
}

fn store_and_print(
    config: &Config,
    out: &mut dyn Write,
    domain: String,
    selector: String,
    material: KeyMaterial,
    activate: bool,
) -> anyhow::Result<()> {
    open_store(config)?.add_dkim_key(&NewDkimKey {
        domain: domain.clone(),
        selector: selector.clone(),
        algorithm: material.algorithm,
        bits: material.bits,
        private_key: material.private_key.clone(),
        public_key: material.public_key.clone(),
        active: activate,
    })?;
    writeln!(
        out,
        "; DKIM key {}-{} for {domain}, selector {selector}",
        material.algorithm.name(),
        material.bits
    )?;
    if activate {
        writeln!(
            out,
            "; active: messages from {domain} are signed with it from now on"
        )?;
    } else {
        writeln!(
            out,
            "; inactive: publish this record, then run: postern dkim activate {domain} {selector}"
        )?;
    }
    writeln!(
        out,
        "{}",
        zone_line(&domain, &selector, material.algorithm, &material.public_key)
    )?;
    Ok(())
}

/// Verifies every DKIM signature of `message`; fails unless there is one and all pass.
fn verify(config: &Config, message: &[u8], out: &mut dyn Write) -> anyhow::Result<()> {
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

    let canonical = rfc_relaxed_body(message);
    let message = canonical.as_deref().unwrap_or(message);
    let parsed = AuthenticatedMessage::parse(message)
        .ok_or_else(|| anyhow::anyhow!("the input is not an RFC 5322 message"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let authenticator = if config.dns.servers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let (resolver_config, options) = crate::delivery::mx::resolver_config(&config.dns);
            MessageAuthenticator::new(resolver_config, options)
        }
        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
        anyhow::Ok(
            authenticator
                .verify_dkim(&parsed)
                .await
                .into_iter()
                .map(|output| {
                    let (domain, selector, algorithm) = output
                        .signature()
                        .map(|s| {
                            let algorithm = match s.a {
                                mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                                mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                                mail_auth::common::crypto::Algorithm::Ed25519Sha256 => {
                                    "ed25519-sha256"
                                }
                            };
                            (s.d.clone(), s.s.clone(), algorithm.to_string())
                        })
                        .unwrap_or_default();
                    let result = output.result().clone();
                    (result, domain, selector, algorithm)
                })
                .collect::<Vec<_>>(),
        )
    })?;
    if results.is_empty() {
        anyhow::bail!("the message has no DKIM signature");
    }
    let mut all_pass = true;
    for (result, domain, selector, algorithm) in &results {
        let verdict = match result {
            DkimResult::Pass => "pass".to_string(),
            other => {
                all_pass = false;
                format!("{other:?}").to_lowercase()
            }
        };
        writeln!(out, "{verdict} d={domain} s={selector} a={algorithm}")?;
    }
    out.flush()?;
    if !all_pass {
        anyhow::bail!("DKIM verification failed");
    }
    Ok(())
}

/// The message with its body in RFC 6376 relaxed canonical form, when every signature uses
/// relaxed body canonicalisation without `l=`; `None` otherwise.
///
/// mail-auth 0.13.3 keeps a white-space-only last line of the body that the RFC drops (see
/// `dkim::canonical`), so its verifier would fail signatures that RFC-conforming receivers
/// pass. Canonicalising is idempotent, so the body hash of the canonical body is the message's
/// own, and on a canonical body mail-auth and the RFC agree.
fn rfc_relaxed_body(message: &[u8]) -> Option<Vec<u8>> {
    use mail_auth::AuthenticatedMessage;
    use mail_auth::dkim::Canonicalization;

    let parsed = AuthenticatedMessage::parse(message)?;
    let all_relaxed = !parsed.dkim_headers.is_empty()
        && parsed
            .dkim_headers
            .iter()
            .all(|h| h.header.cb == Canonicalization::Relaxed && h.header.l == 0);
    if !all_relaxed {
        return None;
    }
    let offset = usize::try_from(parsed.body_offset).ok()?.min(message.len());
    let mut body = crate::dkim::canonical::RelaxedBody::new(Vec::new());
    body.write(&message[offset..]);
    let mut out = message[..offset].to_vec();
    out.extend_from_slice(&body.finish());
    Some(out)
}
