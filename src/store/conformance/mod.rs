//! The behaviour every directory backend must show, as async functions that panic on a
//! difference: the written contracts of [`Directory`], [`DirectoryAdmin`], [`DkimKeyStore`] and
//! [`DkimAdmin`], as cases.
//!
//! A backend implements [`Backend`] (a fresh, empty store per case, and a second handle on it)
//! and runs [`run_all`] from its tests; the embedded store does so in `store/embedded/mod.rs`.
//! A new backend adds the same one test. Tests of what only one backend can show (file modes,
//! migrations, the rows of a table) stay beside that backend's code.
//!
//! The cases are grouped by subject as the backends are: `addresses.rs`, `aliases.rs`,
//! `devices.rs`, `hosting.rs`, `limits.rs`, `dkim_keys.rs`.
//!
//! Compiled for the crate's own tests and under the `conformance` feature (integration tests
//! against a server-backed store); never part of a release build.

mod addresses;
mod aliases;
mod devices;
mod dkim_keys;
mod hosting;
mod limits;

use super::{AuthIdentity, Directory, DirectoryAdmin, DkimAdmin, DkimKeyStore};
use crate::policy::{EmailAddress, parse_address};
use ipnet::IpNet;

pub use addresses::addresses_add_list_remove;
pub use aliases::{aliases_and_collisions, senders_follow_alias_changes};
pub use devices::{
    a_second_process_sees_changes_at_once, devices_add_list_authenticate,
    live_credentials_in_batches, revoke_and_revoke_all, rotate_changes_password_and_credential,
};
pub use dkim_keys::{
    duplicates_unknowns_and_forced_removal, list_never_shows_private_keys,
    one_active_key_per_algorithm,
};
pub use hosting::{
    equal_networks_are_refused_nested_ones_allowed, hosting_add_list_remove,
    hosting_lookup_takes_the_longest_prefix, the_server_sees_hosting_changes_at_once,
};
pub use limits::limit_overrides;

/// A directory backend under test.
pub trait Backend {
    /// The store: every directory trait.
    type Store: Directory + DirectoryAdmin + DkimKeyStore + DkimAdmin;
    /// What keeps a case's store alive and is cleaned up when dropped (a temporary
    /// directory, a database to drop).
    type Guard;

    /// A fresh, empty store for the case named `case` (unique within one run), with a second
    /// handle on the same data, opened as another process would open it.
    fn open(&self, case: &str) -> Fixture<Self::Store, Self::Guard>;
}

/// One case's store.
pub struct Fixture<S, G> {
    /// The handle the case mostly uses (`postern serve`'s).
    pub store: S,
    /// A second handle on the same data (the CLI's).
    pub other: S,
    /// Dropped after the case.
    pub guard: G,
}

/// Runs every case, each on a fresh store of `backend`.
pub async fn run_all<B: Backend>(backend: &B) {
    addresses_add_list_remove(backend).await;
    aliases_and_collisions(backend).await;
    senders_follow_alias_changes(backend).await;
    devices_add_list_authenticate(backend).await;
    rotate_changes_password_and_credential(backend).await;
    revoke_and_revoke_all(backend).await;
    live_credentials_in_batches(backend).await;
    a_second_process_sees_changes_at_once(backend).await;
    hosting_add_list_remove(backend).await;
    equal_networks_are_refused_nested_ones_allowed(backend).await;
    hosting_lookup_takes_the_longest_prefix(backend).await;
    the_server_sees_hosting_changes_at_once(backend).await;
    limit_overrides(backend).await;
    one_active_key_per_algorithm(backend).await;
    duplicates_unknowns_and_forced_removal(backend).await;
    list_never_shows_private_keys(backend).await;
}

async fn auth<S: Directory>(store: &S, login: &str, password: &str) -> Option<AuthIdentity> {
    store.authenticate(login, password).await.unwrap()
}

fn addr(text: &str) -> EmailAddress {
    parse_address(text).unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
