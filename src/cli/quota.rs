//! `postern quota show`: the rolling 24-hour usage of an address or a hosting account.
//!
//! Shows what the relay would decide at the next RCPT: recipients counted in the window, held
//! by open transactions, the limit and where it comes from (the plan, an override, or the
//! hosting default), and when capacity returns if none is left (UTC). The limit is computed
//! exactly as the relay computes it ([`crate::store::IdentityLimits::effective`] with
//! `quota.plans` and `quota.hosting`), and the counts come from the configured quota backend
//! (`crate::server::open_quota`), so the answer is the fleet's when the backend is Redis.
//!
//! Read-only: it neither holds nor counts anything.

use super::limit::{Target, kind_word};
use super::{format_time, open_store, write_json};
use crate::config::Config;
use crate::store::quota::{QuotaKey, Usage};
use crate::store::{LimitSource, QuotaIdentity};
use crate::unix_time::now_ms;
use anyhow::Context;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// `postern quota ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum QuotaCommand {
    /// Show used, held and limit of an address (or --hosting ACCOUNT), and when capacity
    /// returns.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `quota show --json`.
#[derive(serde::Serialize)]
struct QuotaJson<'a> {
    kind: &'static str,
    name: &'a str,
    used: u32,
    held: u32,
    limit: u32,
    available: u32,
    /// `plan`, `override` or `hosting default`.
    limit_source: &'static str,
    /// The address's plan; null for hosting accounts.
    plan: Option<&'static str>,
    /// When one recipient of capacity returns (RFC 3339 UTC); null while some is available.
    next_free: Option<String>,
    window_seconds: u64,
}

/// Runs one `quota` command.
pub(super) fn run(cmd: QuotaCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let QuotaCommand::Show { target, json } = cmd;
    let identity = target.identity()?;
    let limits = open_store(config)?.identity_limits(&identity)?;
    let quota = &config.quota;
    let (limit, source) = limits
        .effective(
            |plan| quota.plans.get(plan.as_str()).copied(),
            quota.hosting,
        )
        .with_context(|| format!("{identity} has no configured daily limit"))?;
    let key = match &identity {
        QuotaIdentity::Address(a) => QuotaKey::Address(a.clone()),
        QuotaIdentity::Hosting(h) => QuotaKey::Hosting(h.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let now = now_ms();
    let usage = runtime.block_on(async {
        let store = crate::server::open_quota(config).await?;
        anyhow::Ok(store.usage(&key, limit, now).await?)
    })?;
    let shown = Shown {
        identity: &identity,
        usage,
        source,
        window: quota.window,
    };
    if json {
        shown.write_json(out)
    } else {
        shown.write_text(out)
    }
}

/// What `quota show` prints.
struct Shown<'a> {
    identity: &'a QuotaIdentity,
    usage: Usage,
    source: LimitSource,
    window: Duration,
}

impl Shown<'_> {
    fn available(&self) -> u32 {
        self.usage
            .limit
            .saturating_sub(self.usage.used.saturating_add(self.usage.held))
    }

    /// When capacity returns, to the second, rounded up (never "back" before it is).
    fn next_free(&self) -> Option<String> {
        self.usage
            .next_free_ms
            .map(|ms| format_time(UNIX_EPOCH + Duration::from_secs(ms.div_ceil(1000))))
    }

    fn write_text(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let u = &self.usage;
        writeln!(out, "{} {}", self.identity.kind(), self.identity.name())?;
        writeln!(
            out,
            "limit:     {} recipients per {} ({})",
            u.limit,
            window_text(self.window),
            self.source
        )?;
        writeln!(out, "used:      {}", u.used)?;
        writeln!(out, "held:      {}", u.held)?;
        writeln!(out, "available: {}", self.available())?;
        match self.next_free() {
            Some(at) => writeln!(out, "next free: {at}")?,
            None => writeln!(out, "next free: now")?,
        }
        Ok(())
    }

    fn write_json(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let (limit_source, plan) = match self.source {
            LimitSource::Plan(plan) => ("plan", Some(plan.as_str())),
            LimitSource::Override => ("override", None),
            LimitSource::HostingDefault => ("hosting default", None),
        };
        let item = QuotaJson {
            kind: kind_word(self.identity),
            name: self.identity.name(),
            used: self.usage.used,
            held: self.usage.held,
            limit: self.usage.limit,
            available: self.available(),
            limit_source,
            plan,
            next_free: self.next_free(),
            window_seconds: self.window.as_secs(),
        };
        write_json(out, &item)
    }
}

/// `24 hours`, `90 minutes`, `30 seconds`.
fn window_text(window: Duration) -> String {
    let secs = window.as_secs();
    let (n, unit) = if secs > 0 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs > 0 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else if window.subsec_millis() == 0 {
        (secs, "second")
    } else {
        return format!("{} ms", window.as_millis());
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixture;
    use super::*;
    use crate::store::quota::QuotaHold;

    /// Holds and counts `n` recipients of `key` now, as the relay would.
    fn count(f: &Fixture, key: QuotaKey, n: u32) {
        let config = Config::load(&f.config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = crate::server::open_quota(&config).await.unwrap();
            let now = now_ms();
            for _ in 0..n {
                let held = store.hold(&key, "tx", u32::MAX, now).await.unwrap();
                assert!(matches!(held, QuotaHold::Held { .. }));
            }
            assert_eq!(store.commit(&key, "tx", now).await.unwrap(), n);
        });
    }

    #[test]
    fn window_texts() {
        assert_eq!(window_text(Duration::from_secs(86_400)), "24 hours");
        assert_eq!(window_text(Duration::from_secs(3600)), "1 hour");
        assert_eq!(window_text(Duration::from_secs(120)), "2 minutes");
        assert_eq!(window_text(Duration::from_secs(45)), "45 seconds");
        assert_eq!(window_text(Duration::from_millis(1500)), "1500 ms");
    }

    #[test]
    fn quota_show() {
        let f = Fixture::new("quota");
        f.ok(&["address", "add", "alice@example.org", "--plan", "premium"]);
        f.add_hosting("web1", "192.0.2.0/24", "example.org");
        assert_eq!(
            f.ok(&["quota", "show", "Alice@Example.org"]),
            "address alice@example.org\n\
             limit:     1440 recipients per 24 hours (plan premium)\n\
             used:      0\n\
             held:      0\n\
             available: 1440\n\
             next free: now\n"
        );
        count(&f, QuotaKey::Address("alice@example.org".into()), 7);
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["quota", "show", "alice@example.org", "--json"])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "address",
                "name": "alice@example.org",
                "used": 7,
                "held": 0,
                "limit": 1440,
                "available": 1433,
                "limit_source": "plan",
                "plan": "premium",
                "next_free": null,
                "window_seconds": 86400,
            })
        );

        // An override at the current usage: nothing left until the window rolls.
        f.ok(&["limit", "set", "alice@example.org", "--daily", "7"]);
        let text = f.ok(&["quota", "show", "alice@example.org"]);
        assert!(
            text.contains("limit:     7 recipients per 24 hours (override)\n"),
            "{text}"
        );
        assert!(text.contains("available: 0\n"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["quota", "show", "alice@example.org", "--json"])).unwrap();
        assert_eq!(json["limit_source"], "override");
        assert_eq!(json["plan"], serde_json::Value::Null);
        let next = json["next_free"].as_str().unwrap();
        let expected = format_time(std::time::SystemTime::now() + Duration::from_secs(86_400));
        // Within the minute bucket after now + 24 h.
        assert!(
            next.ends_with('Z') && next[..13] >= expected[..13],
            "{next} {expected}"
        );

        let text = f.ok(&["quota", "show", "--hosting", "web1"]);
        assert!(
            text.starts_with(
                "hosting account web1\nlimit:     50 recipients per 24 hours (hosting default)\n"
            ),
            "{text}"
        );
        count(&f, QuotaKey::Hosting("web1".into()), 3);
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["quota", "show", "--hosting", "web1", "--json"])).unwrap();
        assert_eq!(json["kind"], "hosting");
        assert_eq!(json["used"], 3);
        assert_eq!(json["limit_source"], "hosting default");

        assert_eq!(
            f.fails(&["quota", "show", "bob@example.org"]),
            "postern: address \"bob@example.org\" not found"
        );
        assert_eq!(
            f.fails(&["quota", "show", "--hosting", "web2"]),
            "postern: hosting account \"web2\" not found"
        );
        for args in [
            &["quota", "show"][..],
            &["quota", "show", "alice@example.org", "--hosting", "web1"],
            &["quota"],
        ] {
            let (status, _, err) = f.run(args);
            assert_eq!(status, 2, "{args:?}: {err}");
        }
    }
}
