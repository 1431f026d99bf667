//! Hosting accounts and quota identities: the names, the checks, and the network matching that
//! every backend shares.
//!
//! A *hosting account* is a web-hosting customer whose servers send PHP `mail()` through the
//! relay listener (port 25) without AUTH: it has a name, the client networks its servers send
//! from, and the sender domains it may use. A connection is matched to the account whose network
//! contains the client address most specifically (longest prefix). Two accounts can never
//! claim the very same network: two networks of equal prefix length that overlap are
//! identical, so "equal prefixes" are refused when an account is added, and longest-prefix
//! matching always has exactly one answer.
//!
//! A *quota identity* ([`QuotaIdentity`]) is what a daily recipient limit applies to: an address
//! (authenticated submission) or a hosting account (port 25). Each may carry a limit override
//! ("upon written request"); otherwise the address's plan, or the hosting default, applies.
//!
//! Checks here are pure (no I/O): they run in the CLI before a store is opened, and again in
//! the store before it writes.

use super::{StoreError, quoted};
use crate::policy::address::AddressProblem;
use crate::policy::{Plan, parse_address};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

/// Longest hosting account name, in characters.
pub const MAX_HOSTING_NAME_LEN: usize = 64;

/// Checks a hosting account name: 1 to [`MAX_HOSTING_NAME_LEN`] characters out of `a-z`, `0-9`,
/// `.`, `_` and `-`. Uppercase is refused rather than folded, so that the name an operator
/// types is the name that is stored and shown in replies.
///
/// # Errors
/// [`StoreError::Invalid`] naming the first offending character and its 1-based position.
pub fn check_hosting_name(name: &str) -> Result<(), StoreError> {
    let invalid = |why: String| {
        Err(StoreError::Invalid(format!(
            "invalid hosting account name {name:?}: {why}"
        )))
    };
    let len = name.chars().count();
    if len == 0 {
        return invalid("it is empty".to_string());
    }
    if len > MAX_HOSTING_NAME_LEN {
        return invalid(format!(
            "it is {len} characters long, the limit is {MAX_HOSTING_NAME_LEN}"
        ));
    }
    if let Some((i, ch)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return invalid(format!(
            "character {ch:?} at position {} is not allowed (use a-z, 0-9, '.', '_' and '-')",
            i + 1
        ));
    }
    Ok(())
}

/// Checks a sender domain of a hosting account with the domain rules of
/// [`crate::policy::address`] (LDH labels, at least two, no trailing dot, 253 characters at
/// most) and returns it lowercase.
///
/// # Errors
/// [`StoreError::Invalid`]: `invalid domain "exa_mple.org": character '_' at position 4 is not
/// allowed in the domain`.
pub fn parse_hosting_domain(text: &str) -> Result<String, StoreError> {
    let invalid = |why: String| StoreError::Invalid(format!("invalid domain {text:?}: {why}"));
    if text.is_empty() {
        return Err(invalid("it is empty".to_string()));
    }
    if let Some(i) = text.chars().position(|c| c == '@') {
        return Err(invalid(format!(
            "character '@' at position {} is not allowed in the domain",
            i + 1
        )));
    }
    // The address rules with a fixed, valid local part: every problem is then in the domain,
    // and its positions are shifted by the two characters of "x@".
    match parse_address(&format!("x@{text}")) {
        Ok(address) => Ok(address.domain().to_string()),
        Err(e) => Err(invalid(shift_positions(e.problem, 2).to_string())),
    }
}

/// The same problem with every position moved `by` characters to the left.
fn shift_positions(problem: AddressProblem, by: usize) -> AddressProblem {
    let at = |position: usize| position.saturating_sub(by);
    match problem {
        AddressProblem::Forbidden { ch, position, part } => AddressProblem::Forbidden {
            ch,
            position: at(position),
            part,
        },
        AddressProblem::EmptyLabel { position } => AddressProblem::EmptyLabel {
            position: at(position),
        },
        AddressProblem::LabelTooLong { position, len } => AddressProblem::LabelTooLong {
            position: at(position),
            len,
        },
        AddressProblem::LabelHyphen { position } => AddressProblem::LabelHyphen {
            position: at(position),
        },
        other => other,
    }
}

/// Checks a hosting network and returns it in the form the store keeps.
///
/// Refused: host bits set (`10.0.0.5/24` is most likely a typo for `10.0.0.0/24` or
/// `10.0.0.5/32`, so the operator is asked to say which), and IPv4-mapped IPv6 networks
/// (`::ffff:10.0.0.0/120`: write them as IPv4; client addresses in that form are matched as
/// IPv4).
///
/// # Errors
/// [`StoreError::Invalid`] saying which rule the network breaks.
pub fn check_hosting_network(network: IpNet) -> Result<IpNet, StoreError> {
    if network.trunc() != network {
        return Err(StoreError::Invalid(format!(
            "network {network} has host bits set: write {} (the whole network) or {}/{} (one host)",
            network.trunc(),
            network.addr(),
            network.max_prefix_len()
        )));
    }
    if let IpNet::V6(v6) = network
        && v6.prefix_len() >= 96
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(StoreError::Invalid(format!(
            "network {network} is IPv4-mapped IPv6: write it as an IPv4 network"
        )));
    }
    Ok(network)
}

/// Parses a network given as text (`192.0.2.0/24`, `2001:db8::/32`), then applies
/// [`check_hosting_network`]. A bare address is refused: hosting networks are written with
/// their prefix length.
///
/// # Errors
/// [`StoreError::Invalid`] naming the text.
pub fn parse_hosting_network(text: &str) -> Result<IpNet, StoreError> {
    let network = text.parse::<IpNet>().map_err(|_| {
        StoreError::Invalid(format!(
            "invalid network {text:?}: expected CIDR notation such as 192.0.2.0/24 or 2001:db8::/48"
        ))
    })?;
    check_hosting_network(network)
}

/// The form client addresses are matched in: IPv4-mapped IPv6 (`::ffff:192.0.2.7`, as seen by
/// a dual-stack listener) becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Of `networks`, the one that contains `ip` with the longest prefix, with its value.
/// `None` when none contains it. `ip` is taken in [`canonical_ip`] form.
///
/// The reference for backends that cannot express longest-prefix matching in a query; the
/// embedded store does it in SQL and its tests compare against this.
pub fn longest_match<T>(ip: IpAddr, networks: &[(IpNet, T)]) -> Option<&(IpNet, T)> {
    let ip = canonical_ip(ip);
    networks
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
}

/// The checked, deduplicated networks and lowercase domains of a hosting account about to be
/// added: what every backend checks before it writes.
///
/// # Errors
/// [`StoreError::Invalid`] for a bad name, network or domain, or an empty list.
pub(super) fn checked_hosting_account(
    name: &str,
    networks: &[IpNet],
    domains: &[String],
) -> Result<(BTreeSet<IpNet>, BTreeSet<String>), StoreError> {
    check_hosting_name(name)?;
    for (list, what) in [
        (networks.is_empty(), "network"),
        (domains.is_empty(), "domain"),
    ] {
        if list {
            return Err(StoreError::Invalid(format!(
                "hosting account {}: at least one {what} is needed",
                quoted(name)
            )));
        }
    }
    let networks = networks
        .iter()
        .map(|n| check_hosting_network(*n))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let domains = domains
        .iter()
        .map(|d| parse_hosting_domain(d))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok((networks, domains))
}

/// Family, first and last address of a network as the backends store it: 4 or 16 big-endian
/// bytes, so that "which networks contain this address" is a range query over byte strings of
/// one length, which compare like the numbers they encode.
pub(super) fn network_range(network: &IpNet) -> (i16, Vec<u8>, Vec<u8>) {
    match network {
        IpNet::V4(n) => (
            4,
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
        IpNet::V6(n) => (
            6,
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
    }
}

/// Family and bytes of a client address in the form of [`network_range`], IPv4-mapped IPv6
/// taken as IPv4.
pub(super) fn ip_key(ip: IpAddr) -> (i16, Vec<u8>) {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => (4, v4.octets().to_vec()),
        IpAddr::V6(v6) => (6, v6.octets().to_vec()),
    }
}

/// A network read back from a store; one that does not parse is a backend failure.
pub(super) fn stored_network(text: &str) -> Result<IpNet, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Backend(format!("a stored hosting network is invalid: {text:?}")))
}

/// A daily limit read back from a store; one outside `u32` is a backend failure.
pub(super) fn stored_limit(value: Option<i64>) -> Result<Option<u32>, StoreError> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StoreError::Backend(format!("a stored daily limit is invalid: {v}")))
        })
        .transpose()
}

/// A [`QuotaIdentity`] constructor.
pub(super) type IdentityOfName = fn(String) -> QuotaIdentity;

/// The queries of [`super::DirectoryAdmin::list_limits`] (no parameters, so the same SQL for
/// every backend), addresses first, each with the identity its first column names; the second
/// column is the override.
pub(super) const OVERRIDE_QUERIES: [(&str, IdentityOfName); 2] = [
    (
        "SELECT address, daily_limit FROM addresses
         WHERE daily_limit IS NOT NULL ORDER BY address",
        QuotaIdentity::Address,
    ),
    (
        "SELECT name, daily_limit FROM hosting_accounts
         WHERE daily_limit IS NOT NULL ORDER BY name",
        QuotaIdentity::Hosting,
    ),
];

/// Refuses a daily limit of 0.
///
/// # Errors
/// [`StoreError::Invalid`].
pub(super) fn check_daily_limit(daily: u32) -> Result<(), StoreError> {
    if daily == 0 {
        return Err(StoreError::Invalid(
            "a daily limit must be at least 1 recipient".to_string(),
        ));
    }
    Ok(())
}

/// `NotFound` naming a quota identity, in the words of the other store errors.
pub(super) fn identity_not_found(identity: &QuotaIdentity) -> StoreError {
    StoreError::NotFound {
        what: identity.to_string(),
    }
}

/// `NotFound` for a hosting account.
pub(super) fn hosting_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("hosting account {}", quoted(name)),
    }
}

/// `AlreadyExists` for a hosting account.
pub(super) fn hosting_exists(name: &str) -> StoreError {
    StoreError::AlreadyExists {
        what: format!("hosting account {}", quoted(name)),
    }
}

/// `AlreadyExists` for a network (same address and prefix length) another account holds.
pub(super) fn network_taken(network: &IpNet, owner: &str) -> StoreError {
    StoreError::AlreadyExists {
        what: format!(
            "network {network} (same prefix length) of hosting account {}",
            quoted(owner)
        ),
    }
}

/// What the relay listener learns about a client of port 25: the account its address belongs
/// to, from [`super::Directory::hosting_account_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingAccount {
    /// The account's name.
    pub name: String,
    /// The sender domains `MAIL FROM` must be in, lowercase, sorted.
    pub domains: Vec<String>,
    /// The account network that matched (the longest prefix containing the client).
    pub network: IpNet,
}

/// A hosting account as listed by [`super::DirectoryAdmin::list_hosting_accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingAccountInfo {
    /// The account's name.
    pub name: String,
    /// Its client networks, sorted (IPv4 first, then by address and prefix).
    pub networks: Vec<IpNet>,
    /// Its sender domains, lowercase, sorted.
    pub domains: Vec<String>,
    /// Its daily limit override, if any.
    pub daily_limit: Option<u32>,
    /// When it was added.
    pub created_at: SystemTime,
}

/// What a daily recipient limit applies to. Both names are canonical (lowercase address;
/// checked account name); the store answers "not found" for names it does not hold, so a
/// value of this type is not proof that the identity exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaIdentity {
    /// A hosted address (authenticated submission on 587/465).
    Address(String),
    /// A hosting account (unauthenticated relay on port 25 from its networks).
    Hosting(String),
}

impl QuotaIdentity {
    /// The name alone: the address or the account name.
    pub fn name(&self) -> &str {
        match self {
            Self::Address(name) | Self::Hosting(name) => name,
        }
    }

    /// `address` or `hosting account`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Address(_) => "address",
            Self::Hosting(_) => "hosting account",
        }
    }
}

impl fmt::Display for QuotaIdentity {
    /// `address "a@example.org"`, `hosting account "web1"`: the form store errors use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind(), self.name())
    }
}

/// The limit facts the store holds about one identity, from
/// [`super::DirectoryAdmin::identity_limits`]: the plan (addresses only) and the override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLimits {
    /// The address's plan; `None` for a hosting account.
    pub plan: Option<Plan>,
    /// The daily limit override, if one is set.
    pub daily_override: Option<u32>,
}

/// A limit override as listed by [`super::DirectoryAdmin::list_limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOverride {
    /// Whose limit it is.
    pub identity: QuotaIdentity,
    /// Recipients per rolling 24 hours.
    pub daily: u32,
}

/// Where an identity's effective daily limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The plan of the address (`quota.plans` in the config).
    Plan(Plan),
    /// A per-identity override set with `postern limit set`.
    Override,
    /// The default of hosting accounts (`quota.hosting` in the config).
    HostingDefault,
}

impl fmt::Display for LimitSource {
    /// `plan starter`, `override`, `hosting default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plan(plan) => write!(f, "plan {plan}"),
            Self::Override => f.write_str("override"),
            Self::HostingDefault => f.write_str("hosting default"),
        }
    }
}

impl IdentityLimits {
    /// The effective daily limit and where it comes from: the override if set, else the plan's
    /// limit (looked up with `plan_limit`), else `hosting_default`. An address whose plan has no
    /// configured limit gets `None` (the config check makes that impossible in practice).
    pub fn effective(
        &self,
        plan_limit: impl Fn(Plan) -> Option<u32>,
        hosting_default: u32,
    ) -> Option<(u32, LimitSource)> {
        match (self.daily_override, self.plan) {
            (Some(daily), _) => Some((daily, LimitSource::Override)),
            (None, Some(plan)) => plan_limit(plan).map(|limit| (limit, LimitSource::Plan(plan))),
            (None, None) => Some((hosting_default, LimitSource::HostingDefault)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosting_names() {
        for ok in ["web1", "a", "shop.example-org_2", &"x".repeat(64)] {
            assert!(check_hosting_name(ok).is_ok(), "{ok}");
        }
        let e = check_hosting_name("Web1").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid hosting account name \"Web1\": character 'W' at position 1 is not allowed \
             (use a-z, 0-9, '.', '_' and '-')"
        );
        let e = check_hosting_name(&"x".repeat(65)).unwrap_err().to_string();
        assert!(
            e.ends_with("it is 65 characters long, the limit is 64"),
            "{e}"
        );
        assert!(check_hosting_name("").is_err());
        assert!(check_hosting_name("web 1").is_err());
        assert!(check_hosting_name("wéb").is_err());
        assert!(check_hosting_name("web/1").is_err());
    }

    #[test]
    fn domains_follow_the_address_rules() {
        assert_eq!(
            parse_hosting_domain("Shop.Example.ORG").unwrap(),
            "shop.example.org"
        );
        assert_eq!(
            parse_hosting_domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        let message = |t: &str| parse_hosting_domain(t).unwrap_err().to_string();
        assert_eq!(
            message("exa_mple.org"),
            "invalid domain \"exa_mple.org\": character '_' at position 4 is not allowed in the domain"
        );
        assert_eq!(
            message("localhost"),
            "invalid domain \"localhost\": the domain needs at least two labels, such as example.org"
        );
        assert_eq!(
            message("example.org."),
            "invalid domain \"example.org.\": the domain has an empty label at position 12"
        );
        assert_eq!(
            message("-a.org"),
            "invalid domain \"-a.org\": character '-' at position 1 may not start or end a domain label"
        );
        assert_eq!(
            message("a@b.org"),
            "invalid domain \"a@b.org\": character '@' at position 2 is not allowed in the domain"
        );
        assert_eq!(message(""), "invalid domain \"\": it is empty");
        let long = format!("{}.org", "a".repeat(64));
        assert!(message(&long).contains("label at position 1 is 64 characters long"));
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_hosting_network("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert!(parse_hosting_network("2001:db8::/32").is_ok());
        assert!(parse_hosting_network("0.0.0.0/0").is_ok());
        let e = parse_hosting_network("192.0.2.7/24")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "network 192.0.2.7/24 has host bits set: write 192.0.2.0/24 (the whole network) or \
             192.0.2.7/32 (one host)"
        );
        let e = parse_hosting_network("192.0.2.7").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid network \"192.0.2.7\": expected CIDR"),
            "{e}"
        );
        assert!(parse_hosting_network("10.0.0.0/33").is_err());
        let e = parse_hosting_network("::ffff:10.0.0.0/104")
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv4-mapped"), "{e}");
        assert!(parse_hosting_network("::/0").is_ok());
    }

    #[test]
    fn longest_prefix_wins() {
        let nets: Vec<(IpNet, &str)> = vec![
            ("10.0.0.0/8".parse().unwrap(), "wide"),
            ("10.1.0.0/16".parse().unwrap(), "mid"),
            ("10.1.2.0/24".parse().unwrap(), "narrow"),
            ("2001:db8::/32".parse().unwrap(), "six"),
        ];
        let at = |ip: &str| longest_match(ip.parse().unwrap(), &nets).map(|(_, v)| *v);
        assert_eq!(at("10.1.2.3"), Some("narrow"));
        assert_eq!(at("10.1.3.3"), Some("mid"));
        assert_eq!(at("10.2.0.1"), Some("wide"));
        assert_eq!(at("::ffff:10.1.2.3"), Some("narrow"));
        assert_eq!(at("2001:db8::1"), Some("six"));
        assert_eq!(at("11.0.0.1"), None);
        assert_eq!(at("2001:db9::1"), None);
    }

    #[test]
    fn identities_and_limits() {
        let a = QuotaIdentity::Address("a@example.org".into());
        let h = QuotaIdentity::Hosting("web1".into());
        assert_eq!(a.to_string(), "address \"a@example.org\"");
        assert_eq!(h.to_string(), "hosting account \"web1\"");
        assert_eq!(h.name(), "web1");
        let plans = |p: Plan| (p == Plan::Starter).then_some(500);
        let starter = IdentityLimits {
            plan: Some(Plan::Starter),
            daily_override: None,
        };
        assert_eq!(
            starter.effective(plans, 50),
            Some((500, LimitSource::Plan(Plan::Starter)))
        );
        let raised = IdentityLimits {
            daily_override: Some(2000),
            ..starter
        };
        assert_eq!(
            raised.effective(plans, 50),
            Some((2000, LimitSource::Override))
        );
        let hosting = IdentityLimits {
            plan: None,
            daily_override: None,
        };
        assert_eq!(
            hosting.effective(plans, 50),
            Some((50, LimitSource::HostingDefault))
        );
        let premium = IdentityLimits {
            plan: Some(Plan::Premium),
            daily_override: None,
        };
        assert_eq!(premium.effective(plans, 50), None);
        assert_eq!(LimitSource::Plan(Plan::Free).to_string(), "plan free");
        assert_eq!(LimitSource::HostingDefault.to_string(), "hosting default");
    }
}
