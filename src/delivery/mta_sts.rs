//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts do TLS with
//! certificates a public CA vouches for.
//!
//! # Discovery and cache
//! For a destination domain: the TXT record `_mta-sts.DOMAIN` (`v=STSv1; id=...;`, section
//! 3.1; exactly one such record, else no policy), then the policy at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (section 3.3): HTTPS with a WebPKI-valid
//! certificate for `mta-sts.DOMAIN`, status 200 (redirects are not followed), `text/plain`,
//! at most [`MAX_POLICY_BYTES`]. Policies are cached per domain until `max_age` runs out
//! (section 5.1): while the TXT `id` equals the cached policy's id, the cache answers without a
//! fetch; a new id triggers a fetch; a failed fetch, a missing TXT record or a failed TXT lookup
//! leave an unexpired cached policy in force (so an attacker who blocks the TXT or HTTPS
//! lookups cannot strip a policy already seen). With no usable cached policy, a failure means
//! "no policy" (section 5: MTA-STS never blocks mail because the policy itself is unreachable).
//! The cache is in memory: a restarted relay fetches again.
//!
//! # What a policy means for delivery
//! - `enforce`: only MX hosts matching the policy's `mx` patterns are used (section 4.1:
//!   `*.example.net` matches one leftmost label), STARTTLS is mandatory, and the certificate
//!   must be WebPKI-valid for the MX host name; anything else defers the message (4.7.5 class).
//! - `testing`: delivery as without a policy (opportunistic TLS); TLS-RPT (RFC 8460), where
//!   such failures would be reported, is not implemented.
//! - `none`: no policy.
//!
//! DANE takes precedence: a destination whose MX hosts have usable TLSA records is delivered
//! under DANE and its MTA-STS policy is not consulted (section 2).
//!
//! The trusted CA roots (`[mta_sts] roots`) are the system store, the Mozilla set compiled in
//! (`webpki-roots`), or a PEM file (tests use their own CA).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use crate::config::{MtaStsConfig, MtaStsRoots};

/// Largest policy body read (RFC 8461 section 3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Longest `max_age` honoured (RFC 8461 section 3.2: 31557600 seconds, about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over authenticated TLS.
    Enforce,
    /// Deliver as usual; report what would have failed.
    Testing,
    /// No policy in force.
    None,
}

impl Mode {
    /// The policy file's word.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The TXT record's `id` the policy was fetched under.
    pub id: String,
    /// enforce, testing or none.
    pub mode: Mode,
    /// MX patterns, lower case: `mx.example.net` or `*.example.net`.
    pub mx: Vec<String>,
    /// How long the policy may be cached.
    pub max_age: Duration,
}

impl Policy {
    /// Whether MX host `host` (no trailing dot needed) matches one of the policy's patterns.
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| mx_pattern_matches(pattern, &host))
    }
}

/// RFC 8461 section 4.1: a literal name, or `*.` plus a suffix matching exactly one more
/// leftmost label.
fn mx_pattern_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Why a policy was not found, fetched or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The TXT record is absent or not exactly one valid `v=STSv1` record.
    #[error("no MTA-STS TXT record")]
    NoRecord,
    /// The policy text breaks RFC 8461 section 3.2.
    #[error("invalid policy: {0}")]
    Invalid(String),
    /// The HTTPS fetch failed.
    #[error("policy fetch failed: {0}")]
    Fetch(String),
}

/// The `id` of the one valid `v=STSv1` record among `records` (RFC 8461 section 3.1).
///
/// # Errors
/// [`StsError::NoRecord`] when no record, several, or an invalid one begins with `v=STSv1`.
pub fn parse_txt(records: &[String]) -> Result<String, StsError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    let [record] = sts[..] else {
        return Err(StsError::NoRecord);
    };
    let mut fields = record.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(StsError::NoRecord);
    }
    let mut id = None;
    for field in fields {
        let (key, value) = field.split_once('=').ok_or(StsError::NoRecord)?;
        if key.trim() == "id" {
            let value = value.trim();
            if value.is_empty()
                || value.len() > 32
                || !value.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(StsError::NoRecord);
            }
            id = Some(value.to_string());
        }
    }
    id.ok_or(StsError::NoRecord)
}

/// Parses a policy file (RFC 8461 section 3.2): `key: value` lines ending in LF or CRLF;
/// `version: STSv1`, `mode`, `max_age` and (unless the mode is `none`) at least one `mx`.
/// Unknown keys are ignored.
///
/// # Errors
/// [`StsError::Invalid`] naming the problem.
pub fn parse_policy(text: &str, id: &str) -> Result<Policy, StsError> {
    let invalid = |why: &str| StsError::Invalid(why.to_string());
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("a line without ':'"))?;
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(invalid("mode is not enforce, testing or none")),
                })
            }
            "max_age" => {
                // `1*10DIGIT` (section 3.2): Rust's integer parser also takes a leading `+`.
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|_| {
                        !value.is_empty()
                            && value.len() <= 10
                            && value.bytes().all(|b| b.is_ascii_digit())
                    })
                    .ok_or_else(|| invalid("max_age is not a number of seconds"))?;
                max_age = Some(Duration::from_secs(secs.min(MAX_AGE_LIMIT)));
            }
            "mx" => mx.push(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(invalid("version is not STSv1"));
    }
    let mode = mode.ok_or_else(|| invalid("no mode"))?;
    let max_age = max_age.ok_or_else(|| invalid("no max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(invalid("no mx pattern"));
    }
    Ok(Policy {
        id: id.to_string(),
        mode,
        mx,
        max_age,
    })
}

/// Loads the roots.
///
/// # Errors
/// A message naming the file or the store problem; also when no root at all was found.
pub fn load_roots(roots: &MtaStsRoots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        MtaStsRoots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        MtaStsRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no usable CA certificate in the system store ({:?})",
                    found.errors
                ));
            }
        }
        MtaStsRoots::File(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no CA certificate in the file", path.display()));
            }
        }
    }
    Ok(store)
}

/// A rustls client configuration validating servers against `roots` (WebPKI: chain, dates,
/// name), for the policy fetch and for MX hosts under an `enforce` policy.
pub fn webpki_client_config(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Fetches the policy text of `domain` from `addr` (an address of `mta-sts.DOMAIN`).
///
/// # Errors
/// [`StsError::Fetch`] for connection, TLS, HTTP status, media type, size or timeout problems.
pub async fn fetch_policy_text(
    domain: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, StsError> {
    let host = format!("mta-sts.{domain}");
    let fetch = async {
        let fail = |what: &str, e: &dyn std::fmt::Display| StsError::Fetch(format!("{what}: {e}"));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail("connect", &e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| fail("name", &e))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS", &e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail("HTTP", &e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::USER_AGENT, "Postern")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("HTTP", &e))?;
        // Section 3.3: redirects are not followed; only 200 carries a policy.
        if response.status() != hyper::StatusCode::OK {
            return Err(StsError::Fetch(format!(
                "HTTP status {}",
                response.status()
            )));
        }
        let media = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = media.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(StsError::Fetch(format!(
                "media type {media:?} is not text/plain"
            )));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| fail("body", &e))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| fail("body", &e))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| StsError::Fetch("timed out".into()))?
}

/// A cached policy is fetched again, even under an unchanged TXT `id`, once this share of its
/// `max_age` has passed (at most [`REFRESH_MAX`]): a policy in use never lapses just because
/// its first fetch is old (RFC 8461 section 10.2: refresh before expiry).
const REFRESH_SHARE: u32 = 2;
/// Longest time a policy is used without a refresh attempt.
const REFRESH_MAX: Duration = Duration::from_secs(86_400);

/// A cached policy, when it was fetched, when it expires.
type CacheEntry = (Arc<Policy>, Instant, Instant);

/// Cached policies by domain.
#[derive(Default)]
pub struct PolicyCache {
    entries: Mutex<HashMap<String, CacheEntry>>,
}

impl PolicyCache {
    /// The unexpired cached policy of `domain`.
    pub fn get(&self, domain: &str, now: Instant) -> Option<Arc<Policy>> {
        self.entry(domain, now).map(|(policy, _)| policy)
    }

    /// The unexpired cached policy of `domain` and whether it is due for a refresh.
    fn entry(&self, domain: &str, now: Instant) -> Option<(Arc<Policy>, bool)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(domain)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(policy, fetched, _)| {
                let refresh_after = (policy.max_age / REFRESH_SHARE).min(REFRESH_MAX);
                (
                    policy.clone(),
                    now.duration_since(*fetched) >= refresh_after,
                )
            })
    }

    /// Stores `policy` for `domain` until `now + max_age`.
    pub fn put(&self, domain: &str, policy: Arc<Policy>, now: Instant) {
        let expires = now + policy.max_age;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (_, _, e)| *e > now);
        entries.insert(domain.to_string(), (policy, now, expires));
    }
}

/// The policy decision of section 5.1, given what the TXT lookup said (`Ok(id)`, or why not)
/// and a fetch to run when needed. Returns the policy in force, if any.
pub async fn resolve_policy<F, Fut>(
    cache: &PolicyCache,
    domain: &str,
    txt: Result<String, StsError>,
    fetch: F,
    now: Instant,
) -> Option<Arc<Policy>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, StsError>>,
{
    let entry = cache.entry(domain, now);
    let cached = entry.as_ref().map(|(policy, _)| policy.clone());
    let id = match txt {
        Ok(id) => id,
        // No record (or it could not be read): an unexpired policy stays in force.
        Err(_) => return cached,
    };
    if let Some((policy, due)) = &entry
        && policy.id == id
        && !due
    {
        return cached;
    }
    match fetch().await.and_then(|text| parse_policy(&text, &id)) {
        Ok(policy) => {
            let policy = Arc::new(policy);
            cache.put(domain, policy.clone(), now);
            Some(policy)
        }
        Err(e) => {
            tracing::info!(domain, error = %e, "MTA-STS policy unavailable");
            cached
        }
    }
}

/// The MTA-STS side of delivery: the roots, the client configurations and the cache.
pub struct MtaSts {
    cache: PolicyCache,
    /// WebPKI validation against the configured roots (policy fetches and MX hosts).
    pub tls: Arc<rustls::ClientConfig>,
    port: u16,
    timeout: Duration,
}

impl MtaSts {
    /// From `[mta_sts]`; `None` when disabled.
    ///
    /// # Errors
    /// When the roots cannot be loaded.
    pub fn from_config(cfg: &MtaStsConfig) -> Result<Option<Self>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let roots = load_roots(&cfg.roots)?;
        Ok(Some(Self {
            cache: PolicyCache::default(),
            tls: webpki_client_config(roots),
            port: cfg.port,
            timeout: cfg.fetch_timeout,
        }))
    }

    /// The policy in force for `domain` (lower case), if any: TXT lookup, cache, fetch.
    pub async fn policy(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        domain: &str,
    ) -> Option<Arc<Policy>> {
        // An internationalised domain is looked up, named in `Host:` and checked in the
        // certificate in its ASCII form (A-labels).
        let Ok(ascii) = idna::domain_to_ascii(domain) else {
            tracing::info!(domain, "MTA-STS: the domain has no ASCII form");
            return None;
        };
        let domain = ascii.as_str();
        let txt = match resolver.txt_lookup(format!("_mta-sts.{domain}.")).await {
            Ok(lookup) => parse_txt(
                &lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(_) => Err(StsError::NoRecord),
        };
        let fetch = || async {
            let host = format!("mta-sts.{domain}");
            let addresses = super::mx::lookup_addresses(resolver, &host)
                .await
                .map_err(|e| StsError::Fetch(format!("{host}: {e}")))?;
            let mut last = StsError::Fetch(format!("{host}: no address"));
            for ip in addresses {
                let addr = SocketAddr::new(ip, self.port);
                match fetch_policy_text(domain, addr, self.tls.clone(), self.timeout).await {
                    Ok(text) => return Ok(text),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        resolve_policy(&self.cache, domain, txt, fetch, Instant::now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(records: &[&str]) -> Result<String, StsError> {
        parse_txt(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>())
    }

    /// Found by the `mta_sts` fuzz target: `max_age: +86400` was read as 86400 (the integer
    /// parser takes a sign; RFC 8461 3.2 allows digits only).
    #[test]
    fn max_age_is_digits_only() {
        let text = "version: STSv1\nmode: enforce\nmx: mx.example.net\nmax_age: +86400\n";
        assert_eq!(
            parse_policy(text, "1"),
            Err(StsError::Invalid(
                "max_age is not a number of seconds".into()
            ))
        );
        let text = "version: STSv1\nmode: enforce\nmx: mx.example.net\nmax_age: 86400\n";
        assert_eq!(parse_policy(text, "1").unwrap().max_age.as_secs(), 86400);
    }

    #[test]
    fn txt_records() {
        assert_eq!(
            txt(&["v=STSv1; id=20160831085700Z;"]).unwrap(),
            "20160831085700Z"
        );
        assert_eq!(txt(&["v=STSv1;id=abc", "v=spf1 -all"]).unwrap(), "abc");
        assert_eq!(txt(&[]), Err(StsError::NoRecord));
        assert_eq!(
            txt(&["v=STSv1; id=a;", "v=STSv1; id=b;"]),
            Err(StsError::NoRecord)
        );
        assert_eq!(txt(&["v=STSv1; id=has-dash;"]), Err(StsError::NoRecord));
        assert_eq!(txt(&["v=STSv1; id=;"]), Err(StsError::NoRecord));
        assert_eq!(txt(&["v=STSv1;"]), Err(StsError::NoRecord));
        assert_eq!(
            txt(&[&format!("v=STSv1; id={};", "a".repeat(33))]),
            Err(StsError::NoRecord)
        );
    }

    #[test]
    fn policies() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
            "id1",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, Duration::from_secs(604_800));
        assert!(p.matches_mx("mail.example.com"));
        assert!(p.matches_mx("MAIL.example.com."));
        assert!(p.matches_mx("mx1.example.net"));
        assert!(!p.matches_mx("a.b.example.net"));
        assert!(!p.matches_mx("example.net"));
        assert!(!p.matches_mx("mail.example.org"));
        // LF line ends, unknown keys, a huge max_age capped.
        let p = parse_policy(
            "version: STSv1\nmode: testing\nmx: a.b\nfoo: bar\nmax_age: 9999999999\n",
            "x",
        )
        .unwrap();
        assert_eq!(p.max_age, Duration::from_secs(MAX_AGE_LIMIT));
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n", "x").is_ok());
        for bad in [
            "mode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
            // 1*10DIGIT (section 3.2).
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n",
            "version: STSv1\nmode enforce\nmx: a\nmax_age: 1\n",
        ] {
            assert!(parse_policy(bad, "x").is_err(), "{bad:?}");
        }
    }

    fn policy(id: &str, max_age: u64) -> String {
        format!("version: STSv1\nmode: enforce\nmx: mx.{id}.test\nmax_age: {max_age}\n")
    }

    #[tokio::test]
    async fn cache_follows_the_txt_id_and_survives_failures() {
        let cache = PolicyCache::default();
        let t0 = Instant::now();
        let ok = |id: &'static str| move || async move { Ok(policy(id, 3600)) };
        let fail = || async { Err(StsError::Fetch("refused".into())) };
        let never = || async { panic!("the cache should have answered") };
        // No record, nothing cached: no policy.
        assert!(
            resolve_policy(&cache, "d", Err(StsError::NoRecord), never, t0)
                .await
                .is_none()
        );
        // First fetch.
        let p = resolve_policy(&cache, "d", Ok("a".into()), ok("a"), t0)
            .await
            .unwrap();
        assert!(p.matches_mx("mx.a.test"));
        // Same id: from the cache.
        assert_eq!(
            resolve_policy(&cache, "d", Ok("a".into()), never, t0)
                .await
                .unwrap()
                .id,
            "a"
        );
        // TXT gone or unreadable: the cached policy stays in force.
        assert_eq!(
            resolve_policy(&cache, "d", Err(StsError::NoRecord), never, t0)
                .await
                .unwrap()
                .id,
            "a"
        );
        // New id, fetch fails: the old policy stays; new id, fetch works: replaced.
        assert_eq!(
            resolve_policy(&cache, "d", Ok("b".into()), fail, t0)
                .await
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(
            resolve_policy(&cache, "d", Ok("b".into()), ok("b"), t0)
                .await
                .unwrap()
                .id,
            "b"
        );
        // Half the max_age later the same id is fetched again; a failure keeps the policy,
        // a success extends it.
        let half = t0 + Duration::from_secs(1800);
        assert_eq!(
            resolve_policy(&cache, "d", Ok("b".into()), fail, half)
                .await
                .unwrap()
                .id,
            "b"
        );
        let fetched = std::cell::Cell::new(false);
        let refetch = || async {
            fetched.set(true);
            Ok(policy("b", 3600))
        };
        assert!(
            resolve_policy(&cache, "d", Ok("b".into()), refetch, half)
                .await
                .is_some()
        );
        assert!(fetched.get());
        let after_first_expiry = t0 + Duration::from_secs(3601);
        assert_eq!(
            resolve_policy(
                &cache,
                "d",
                Err(StsError::NoRecord),
                never,
                after_first_expiry
            )
            .await
            .unwrap()
            .id,
            "b"
        );
        // Expired: gone.
        let later = half + Duration::from_secs(3601);
        assert!(
            resolve_policy(&cache, "d", Err(StsError::NoRecord), never, later)
                .await
                .is_none()
        );
        // An invalid policy text is no policy.
        let bad = || async { Ok("version: STSv1\n".to_string()) };
        assert!(
            resolve_policy(&cache, "e", Ok("z".into()), bad, t0)
                .await
                .is_none()
        );
    }
}
