//! Addresses, aliases, device passwords, hosting accounts, limit overrides and DKIM keys,
//! behind four small traits: the contract every directory backend implements.
//!
//! - [`Directory`] is what `postern serve`'s listeners ask at run time: check an AUTH login,
//!   tell the revocation watcher which sessions' credentials are still good, find the hosting
//!   account of a port-25 client, and give an identity's plan and limit override. It is async
//!   and dyn-compatible (`Arc<dyn Directory>`), so the listener does not care about the
//!   backend.
//! - [`DkimKeyStore`] is the signer's one question (the active keys of a domain). It is a
//!   trait of its own so that the signer sees the keys and nothing else of the directory.
//! - [`DirectoryAdmin`] is what the `postern address|alias|device|hosting|limit` commands
//!   need, and [`DkimAdmin`] what `postern dkim` needs: the keys live in the store, next to
//!   the accounts, in the file only the service user can read. Both are synchronous: the CLI
//!   does one thing and exits.
//!
//! # Layout
//! This module holds the traits, the types they speak in and the checks every backend makes
//! the same way ([`check_device_name`]; hosting and identity types and their checks are in
//! [`accounts`], DKIM key types in `dkim_keys.rs`). [`EmbeddedStore`] (SQLite, one file,
//! [`embedded`]) implements all four traits, one file per subject; a shared backend for a
//! fleet of relays implements the same traits in a sibling folder of the same shape.
//! `conformance` holds the behaviour every backend must show, run against each backend by its
//! tests (test builds and the `conformance` feature only). Quotas are a store of their own,
//! behind [`quota::QuotaStore`], and so are the brakes a fleet counts together
//! ([`brakes::BrakeStore`]); their Redis backends share one connection ([`redis_link`]).
//! The delivery log is one too ([`delivery_log::LogStore`]): a SQLite file
//! ([`delivery_log::sqlite`]) or the PostgreSQL directory's table (`postgres/delivery_log.rs`),
//! following `[store] backend` ([`configured::open_delivery_log`]).
//!
//! # Model
//! An *address* is a hosted mailbox (`alice@example.org`) with a [`Plan`]. An *alias* is another
//! address that the owner of an address may use as sender; it cannot log in. A *device* is a
//! named password of one address ("phone", "thunderbird"). Addresses and aliases share one
//! namespace: no text is both. Each device carries a [`CredentialId`], a random id that changes
//! whenever the device's password changes, so that sessions authenticated with an old password
//! can be found and cut.
//!
//! A *hosting account* is a web-hosting customer relaying PHP `mail()` on port 25 from its
//! networks, with the sender domains it may use. Addresses and hosting accounts are the two
//! kinds of [`QuotaIdentity`]; each may carry a daily limit override.
//!
//! # What this module does not do
//! No syntax rules of its own beyond device and hosting account names (addresses arrive as
//! [`EmailAddress`], already checked by [`crate::policy::address`]), no password generation
//! rules ([`crate::policy::password`]), no rate limiting of logins (the listener), no counting
//! of sent recipients (the quota store).
//!
//! # Failure policy
//! Every backend failure is [`StoreError::Backend`]. Callers fail *closed*: an AUTH that meets a
//! backend error is answered with a temporary error (454 4.7.0), never accepted, and the
//! revocation watcher that cannot reach the store keeps sessions as they are and retries.

/// Implements [`DirectoryAdmin`] and [`DkimAdmin`] for a backend laid out as the module docs
/// say: subject modules `addresses`, `aliases`, `devices`, `hosting`, `limits` and `dkim_keys`
/// in the backend's folder, each with one function per method, of the method's name without
/// its subject (`add`, `remove`, `list`, ...) and the store and the method's arguments as
/// arguments. `$run` is a method of the store that turns what such a function returns into the
/// method's result: the value itself for a synchronous backend, `block_on` for an async one.
/// So every backend maps the admin traits to its subjects the same way, written once.
macro_rules! admin_by_subject {
    ($store:ty, $run:ident) => {
        impl $crate::store::DirectoryAdmin for $store {
            fn add_address(
                &self,
                address: &$crate::policy::EmailAddress,
                plan: $crate::policy::Plan,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(addresses::add(self, address, plan))
            }
            fn remove_address(
                &self,
                address: &$crate::policy::EmailAddress,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(addresses::remove(self, address))
            }
            fn list_addresses(
                &self,
            ) -> Result<Vec<$crate::store::AddressInfo>, $crate::store::StoreError> {
                self.$run(addresses::list(self))
            }
            fn add_alias(
                &self,
                alias: &$crate::policy::EmailAddress,
                address: &$crate::policy::EmailAddress,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(aliases::add(self, alias, address))
            }
            fn remove_alias(
                &self,
                alias: &$crate::policy::EmailAddress,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(aliases::remove(self, alias))
            }
            fn list_aliases(
                &self,
                address: Option<&$crate::policy::EmailAddress>,
            ) -> Result<Vec<$crate::store::AliasInfo>, $crate::store::StoreError> {
                self.$run(aliases::list(self, address))
            }
            fn add_device(
                &self,
                address: &$crate::policy::EmailAddress,
                name: &str,
            ) -> Result<$crate::policy::DevicePassword, $crate::store::StoreError> {
                self.$run(devices::add(self, address, name))
            }
            fn list_devices(
                &self,
                address: &$crate::policy::EmailAddress,
            ) -> Result<Vec<$crate::store::DeviceInfo>, $crate::store::StoreError> {
                self.$run(devices::list(self, address))
            }
            fn rotate_device(
                &self,
                address: &$crate::policy::EmailAddress,
                name: &str,
            ) -> Result<$crate::policy::DevicePassword, $crate::store::StoreError> {
                self.$run(devices::rotate(self, address, name))
            }
            fn revoke_device(
                &self,
                address: &$crate::policy::EmailAddress,
                name: &str,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(devices::revoke(self, address, name))
            }
            fn revoke_all(
                &self,
                address: &$crate::policy::EmailAddress,
            ) -> Result<usize, $crate::store::StoreError> {
                self.$run(devices::revoke_all(self, address))
            }
            fn add_hosting_account(
                &self,
                name: &str,
                networks: &[ipnet::IpNet],
                domains: &[String],
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(hosting::add(self, name, networks, domains))
            }
            fn remove_hosting_account(&self, name: &str) -> Result<(), $crate::store::StoreError> {
                self.$run(hosting::remove(self, name))
            }
            fn list_hosting_accounts(
                &self,
            ) -> Result<Vec<$crate::store::HostingAccountInfo>, $crate::store::StoreError> {
                self.$run(hosting::list(self))
            }
            fn set_limit(
                &self,
                identity: &$crate::store::QuotaIdentity,
                daily: u32,
            ) -> Result<Option<u32>, $crate::store::StoreError> {
                self.$run(limits::set(self, identity, daily))
            }
            fn clear_limit(
                &self,
                identity: &$crate::store::QuotaIdentity,
            ) -> Result<Option<u32>, $crate::store::StoreError> {
                self.$run(limits::clear(self, identity))
            }
            fn identity_limits(
                &self,
                identity: &$crate::store::QuotaIdentity,
            ) -> Result<$crate::store::IdentityLimits, $crate::store::StoreError> {
                self.$run(limits::of(self, identity))
            }
            fn list_limits(
                &self,
            ) -> Result<Vec<$crate::store::LimitOverride>, $crate::store::StoreError> {
                self.$run(limits::list(self))
            }
        }

        impl $crate::store::DkimAdmin for $store {
            fn add_dkim_key(
                &self,
                key: &$crate::store::NewDkimKey,
            ) -> Result<(), $crate::store::StoreError> {
                self.$run(dkim_keys::add(self, key))
            }
            fn list_dkim_keys(
                &self,
                domain: Option<&str>,
            ) -> Result<Vec<$crate::store::DkimKeyInfo>, $crate::store::StoreError> {
                self.$run(dkim_keys::list(self, domain))
            }
            fn activate_dkim_key(
                &self,
                domain: &str,
                selector: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                self.$run(dkim_keys::activate(self, domain, selector))
            }
            fn remove_dkim_key(
                &self,
                domain: &str,
                selector: &str,
                force: bool,
            ) -> Result<bool, $crate::store::StoreError> {
                self.$run(dkim_keys::remove(self, domain, selector, force))
            }
        }
    };
}

pub mod accounts;
pub mod brakes;
pub mod cached;
pub mod configured;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod delivery_log;
mod devices;
mod dkim_keys;
pub mod embedded;
pub mod postgres;
pub mod quota;
pub mod redis_link;
pub(crate) mod sqlite;

pub use accounts::{
    HostingAccount, HostingAccountInfo, IdentityLimits, LimitOverride, LimitSource, QuotaIdentity,
    check_hosting_name,
};
pub use embedded::EmbeddedStore;

use crate::policy::{DevicePassword, EmailAddress, Plan};
use ipnet::IpNet;
use rand::TryRng;
use rand::rngs::SysRng;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

pub use dkim_keys::{ActiveDkimKey, DkimKeyInfo, NewDkimKey};

/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_LEN: usize = 64;

/// What went wrong in a store operation. Messages are one line, fit for `postern: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist, e.g. `address "a@example.org"`.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, with its name.
        what: String,
    },
    /// The named thing exists already, or its name is taken by the other kind
    /// (an alias named like an address, or the reverse).
    #[error("{what} already exists")]
    AlreadyExists {
        /// What is in the way, with its name.
        what: String,
    },
    /// A value the store refuses (a device name with control characters, ...).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, a locked or corrupt database, a schema from a newer Postern).
    #[error("store: {0}")]
    Backend(String),
    /// A shared database whose schema is older or newer than this Postern's: the message names
    /// both versions and `postern migrate`. The CLI exits 2 on it, as on a bad config.
    #[error("{0}")]
    Schema(String),
}

/// The identity an AUTH established: who logged in, with which device, and which envelope
/// senders that login may use.
#[derive(Debug, Clone)]
pub struct AuthIdentity {
    /// The address, canonical lowercase.
    pub address: String,
    /// The device name whose password matched.
    pub device: String,
    /// The device's current credential; the session keeps it for the revocation watcher.
    pub credential: CredentialId,
    /// The address itself plus its aliases, lowercase: the senders this login owns.
    pub senders: Vec<String>,
}

/// The id of one device password: random, and new on every rotation, so that "is this
/// credential still live?" is false for sessions opened with a revoked *or* rotated password.
/// Not a secret (it is a lookup key, not a password), but not meaningful to users either.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(pub String);

impl CredentialId {
    /// A fresh id: 128 bits from the OS random generator, as 32 lowercase hex digits.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the OS random generator fails.
    pub fn random() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 16];
        SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| StoreError::Backend(format!("OS random generator: {e}")))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The run-time questions of `postern serve`: AUTH and its revocation on the submission
/// ports, the hosting account of a port-25 client, and the limits of a quota identity.
///
/// # Contract
/// - Every method is safe to call concurrently from many tasks and must not block the async
///   runtime (backends doing blocking I/O move it to `spawn_blocking`).
/// - Answers reflect every change committed before the call, including changes made by another
///   process (the CLI) on the same store: backends cache no credentials, accounts or limits
///   across calls. Caching is [`cached::CachedDirectory`]'s, in front of a backend, with its
///   own bounds (the TTL, and never past a change the replica was told of).
/// - `Err` means the backend could not answer; it never means "no". Callers fail closed
///   (see the module documentation): no login, no relaying, no uncounted recipient.
/// - Unknown identities are `Ok(None)`, not errors: an address can be removed while its
///   session is open.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// Checks a login (full email address, any case) and a device password. Ok(None) = bad credentials.
    /// Compares against every device password of the address in constant time each.
    ///
    /// A login that is not a valid address, an alias, an unknown address, an address without
    /// devices and a wrong password all give `Ok(None)`, indistinguishable to the caller.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError>;

    /// Of the given device credential ids, which are still valid (not revoked, not rotated). Used every second by the revocation watcher.
    ///
    /// Ids the store has never seen are simply absent from the answer. Must stay cheap for
    /// thousands of ids (one indexed lookup each, batched).
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError>;

    /// A number that changes whenever a change to the directory is committed through another
    /// handle (the CLI beside `postern serve`): sessions compare it with the one they saw when
    /// they last read their senders, and re-read them only when it moved. Cheap: asked by the
    /// revocation watcher twice a second, never per command.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn generation(&self) -> Result<u64, StoreError>;

    /// The senders the login `address` owns (itself and its aliases, lower case), as
    /// [`Directory::authenticate`] gives them; `None` if there is no such address.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError>;

    /// The hosting account whose networks contain `client` most specifically (longest
    /// prefix), with its sender domains; `None` if no account's network contains it.
    /// IPv4-mapped IPv6 clients (`::ffff:192.0.2.7`) are matched as IPv4.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError>;

    /// Plan and override of an identity in one lookup (`None` if it does not exist; an alias
    /// is not an address): what the listener needs to compute the limit, with
    /// [`IdentityLimits::effective`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError>;
}

/// An address as listed by [`DirectoryAdmin::list_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressInfo {
    /// The address, lowercase.
    pub address: String,
    /// Its plan.
    pub plan: Plan,
    /// When it was added.
    pub created_at: SystemTime,
}

/// An alias as listed by [`DirectoryAdmin::list_aliases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasInfo {
    /// The alias, lowercase.
    pub alias: String,
    /// The address it belongs to, lowercase.
    pub address: String,
}

/// A device as listed by [`DirectoryAdmin::list_devices`]: never its password or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: String,
    /// When it was added (rotation keeps this).
    pub created_at: SystemTime,
}

/// Administration of addresses, aliases and devices, for the CLI.
///
/// # Contract
/// - Each method is atomic: it either does all it says or changes nothing, also when another
///   process writes the same store at the same time.
/// - Addresses and aliases share one namespace: adding either when the text exists as either
///   is [`StoreError::AlreadyExists`].
/// - Naming an address, alias or device that does not exist is [`StoreError::NotFound`].
/// - Lists are sorted by their first field.
/// - Passwords are returned only by [`add_device`](Self::add_device) and
///   [`rotate_device`](Self::rotate_device), once; the store keeps only their hash.
pub trait DirectoryAdmin {
    /// Adds an address with its plan.
    ///
    /// # Errors
    /// `AlreadyExists` if the text is already an address or an alias.
    fn add_address(&self, address: &EmailAddress, plan: Plan) -> Result<(), StoreError>;

    /// Removes an address together with its aliases and devices (their sessions are then cut
    /// by the revocation watcher).
    ///
    /// # Errors
    /// `NotFound` if there is no such address (an alias is not an address).
    fn remove_address(&self, address: &EmailAddress) -> Result<(), StoreError>;

    /// All addresses, sorted.
    ///
    /// # Errors
    /// `Backend` only.
    fn list_addresses(&self) -> Result<Vec<AddressInfo>, StoreError>;

    /// Adds `alias` as a sender of `address`.
    ///
    /// # Errors
    /// `NotFound` if `address` is not an address; `AlreadyExists` if `alias` is already an
    /// address or an alias.
    fn add_alias(&self, alias: &EmailAddress, address: &EmailAddress) -> Result<(), StoreError>;

    /// Removes an alias.
    ///
    /// # Errors
    /// `NotFound` if there is no such alias.
    fn remove_alias(&self, alias: &EmailAddress) -> Result<(), StoreError>;

    /// Aliases of one address, or of all addresses when `address` is `None`, sorted by alias.
    ///
    /// # Errors
    /// `NotFound` if `address` is given and is not an address.
    fn list_aliases(&self, address: Option<&EmailAddress>) -> Result<Vec<AliasInfo>, StoreError>;

    /// Adds a device to an address and returns its new password.
    ///
    /// # Errors
    /// `Invalid` for a bad device name (see [`check_device_name`]); `NotFound` for an unknown
    /// address; `AlreadyExists` if the address has a device of that name.
    fn add_device(&self, address: &EmailAddress, name: &str) -> Result<DevicePassword, StoreError>;

    /// Devices of an address, sorted by name.
    ///
    /// # Errors
    /// `NotFound` for an unknown address.
    fn list_devices(&self, address: &EmailAddress) -> Result<Vec<DeviceInfo>, StoreError>;

    /// Gives a device a new password *and* a new [`CredentialId`]: the old password stops
    /// working at once and sessions opened with it are cut.
    ///
    /// # Errors
    /// `NotFound` for an unknown address or device.
    fn rotate_device(
        &self,
        address: &EmailAddress,
        name: &str,
    ) -> Result<DevicePassword, StoreError>;

    /// Deletes a device; its password stops working and its sessions are cut.
    ///
    /// # Errors
    /// `NotFound` for an unknown address or device.
    fn revoke_device(&self, address: &EmailAddress, name: &str) -> Result<(), StoreError>;

    /// Deletes every device of an address; returns how many there were.
    ///
    /// # Errors
    /// `NotFound` for an unknown address (an address without devices gives `Ok(0)`).
    fn revoke_all(&self, address: &EmailAddress) -> Result<usize, StoreError>;

    /// Adds a hosting account with its client networks and sender domains (at least one of
    /// each). Duplicates in either list are ignored; domains are stored lowercase.
    ///
    /// # Errors
    /// `Invalid` for a bad name ([`check_hosting_name`]), a bad domain
    /// ([`accounts::parse_hosting_domain`]) or network ([`accounts::check_hosting_network`]),
    /// or an empty list; `AlreadyExists` if the account exists, or if one of the networks
    /// (same address and prefix length) belongs to another account already. Overlapping
    /// networks of different lengths are fine: the longest prefix wins at lookup.
    fn add_hosting_account(
        &self,
        name: &str,
        networks: &[IpNet],
        domains: &[String],
    ) -> Result<(), StoreError>;

    /// Removes a hosting account with its networks, domains and limit override.
    ///
    /// # Errors
    /// `NotFound` if there is no such account.
    fn remove_hosting_account(&self, name: &str) -> Result<(), StoreError>;

    /// All hosting accounts, sorted by name.
    ///
    /// # Errors
    /// `Backend` only.
    fn list_hosting_accounts(&self) -> Result<Vec<HostingAccountInfo>, StoreError>;

    /// Sets the daily recipient limit of an identity, replacing its plan's (or the hosting
    /// default) until cleared. Returns the override it replaced, if any.
    ///
    /// # Errors
    /// `Invalid` for a limit of 0; `NotFound` if the address or account does not exist (an
    /// alias is not an address: its mail counts against its owner).
    fn set_limit(&self, identity: &QuotaIdentity, daily: u32) -> Result<Option<u32>, StoreError>;

    /// Removes the override of an identity; returns the removed limit, `None` if it had none.
    ///
    /// # Errors
    /// `NotFound` if the address or account does not exist.
    fn clear_limit(&self, identity: &QuotaIdentity) -> Result<Option<u32>, StoreError>;

    /// Plan and override of an identity.
    ///
    /// # Errors
    /// `NotFound` if the address or account does not exist.
    fn identity_limits(&self, identity: &QuotaIdentity) -> Result<IdentityLimits, StoreError>;

    /// Every override, addresses first, each kind sorted by name.
    ///
    /// # Errors
    /// `Backend` only.
    fn list_limits(&self) -> Result<Vec<LimitOverride>, StoreError>;
}

/// Checks a device name: 1 to [`MAX_DEVICE_NAME_LEN`] characters, no control characters
/// (names appear in logs), no leading or trailing white space.
///
/// # Errors
/// [`StoreError::Invalid`] saying which rule the name breaks.
pub fn check_device_name(name: &str) -> Result<(), StoreError> {
    let invalid = |why: &str| {
        Err(StoreError::Invalid(format!(
            "invalid device name {name:?}: {why}"
        )))
    };
    let len = name.chars().count();
    if len == 0 {
        return invalid("it is empty");
    }
    if len > MAX_DEVICE_NAME_LEN {
        return invalid(&format!(
            "it is {len} characters long, the limit is {MAX_DEVICE_NAME_LEN}"
        ));
    }
    if let Some((i, ch)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        return invalid(&format!("control character {ch:?} at position {}", i + 1));
    }
    if name.trim() != name {
        return invalid("it starts or ends with white space");
    }
    Ok(())
}

/// Now in Unix seconds, the directory's stored time format.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A stored time in Unix seconds; a negative one (a damaged row) is the epoch.
fn to_time(secs: i64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// `"name"` with escapes, for messages naming things.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// `NotFound` for an address.
fn address_not_found(address: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("address {}", quoted(address)),
    }
}

/// `NotFound` for a device of an address.
fn device_not_found(address: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("device {} of address {}", quoted(name), quoted(address)),
    }
}

/// `AlreadyExists` if `name` is taken as an address or an alias (addresses and aliases share
/// one namespace), from what the backend found.
fn name_free(name: &str, is_address: bool, is_alias: bool) -> Result<(), StoreError> {
    let kind = match (is_address, is_alias) {
        (true, _) => "an address",
        (false, true) => "an alias",
        (false, false) => return Ok(()),
    };
    Err(StoreError::AlreadyExists {
        what: format!("{kind} {}", quoted(name)),
    })
}

/// A plan read back from a store; one this Postern does not know is a backend failure.
fn stored_plan(address: &str, plan: &str) -> Result<Plan, StoreError> {
    plan.parse::<Plan>()
        .map_err(|e| StoreError::Backend(format!("address {}: {e}", quoted(address))))
}

/// The signer's question, asked once per signed message.
///
/// # Contract
/// As [`Directory`]'s: concurrent, never blocking the runtime, no caching across calls (so
/// `postern dkim activate` takes effect with the next message), `Err` only when the backend
/// cannot answer; the caller then relays the message unsigned and says so. The keys come
/// ordered by algorithm name (`ed25519` before `rsa`).
#[async_trait::async_trait]
pub trait DkimKeyStore: Send + Sync {
    /// The active keys of `domain` (lowercase): at most one per algorithm.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    async fn active_dkim_keys(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError>;
}

/// What `postern dkim` needs. Domains and selectors arrive checked and lowercase.
///
/// # Contract
/// As [`DirectoryAdmin`]'s: each method is atomic, also against another process writing the
/// same store; a domain has at most one active key per algorithm at every moment; private
/// keys are returned only to the signer ([`DkimKeyStore`]), never by a listing.
pub trait DkimAdmin {
    /// Stores a new key, active if `key.active` (then replacing the domain's active key of the
    /// same algorithm).
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the domain has this selector already.
    fn add_dkim_key(&self, key: &NewDkimKey) -> Result<(), StoreError>;

    /// The keys of one domain, or of all, by domain then selector. Never the private keys.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only.
    fn list_dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyInfo>, StoreError>;

    /// Makes a key the domain's active key of its algorithm; returns the selector it replaced,
    /// if any.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the domain has no such selector.
    fn activate_dkim_key(&self, domain: &str, selector: &str)
    -> Result<Option<String>, StoreError>;

    /// Deletes a key. An active key is only deleted with `force` (signing with its algorithm
    /// then stops for the domain). Returns whether the key was active.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Invalid`] for an active key without `force`.
    fn remove_dkim_key(
        &self,
        domain: &str,
        selector: &str,
        force: bool,
    ) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert!(check_device_name("phone").is_ok());
        assert!(check_device_name("Alice's iPhone 15").is_ok());
        assert!(check_device_name(&"x".repeat(64)).is_ok());
        let e = check_device_name(&"x".repeat(65)).unwrap_err();
        assert!(
            e.to_string()
                .contains("65 characters long, the limit is 64"),
            "{e}"
        );
        assert!(check_device_name("").is_err());
        assert!(check_device_name(" phone").is_err());
        let e = check_device_name("ph\none").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid device name \"ph\\none\": control character '\\n' at position 3"
        );
    }

    #[test]
    fn credential_ids_are_random_hex() {
        let a = CredentialId::random().unwrap();
        let b = CredentialId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 32);
        assert!(a.0.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            address_not_found("a@b.org").to_string(),
            "address \"a@b.org\" not found"
        );
        assert_eq!(
            device_not_found("a@b.org", "phone").to_string(),
            "device \"phone\" of address \"a@b.org\" not found"
        );
    }
}
