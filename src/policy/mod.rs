//! Decisions about who may send what, as pure functions and types: no I/O, no clock.
//!
//! - [`address`]: the syntax of addresses the provider hosts (logins, senders, aliases).
//! - [`mailbox`]: the one mailbox of a `From:`-like header field, read strictly (RFC 5322).
//! - [`password`]: device passwords: generation, hashing, constant-time checks.
//! - [`sender`]: which envelope and header senders an authenticated user owns.
//! - [`Plan`]: the offer an address belongs to; quotas per plan build on it.
//!
//! Looking things up (does this address exist, is this password one of its devices) is the
//! store's job ([`crate::store`]); enforcing the answers is the session's and listener's.

pub mod address;
pub mod mailbox;
pub mod password;
pub mod quota;
pub mod sender;

pub use address::{AddressError, EmailAddress, domain_of, parse_address};
pub use password::DevicePassword;

use std::fmt;
use std::str::FromStr;

/// The plan of an address. Quotas per plan come later; for now the store records it.
///
/// Names are the provider's offers, spelled as on the command line and in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Plan {
    /// `free`
    Free,
    /// `starter`, the default for new addresses.
    #[default]
    Starter,
    /// `my-ksuite`
    MyKsuite,
    /// `standard`
    Standard,
    /// `business`
    Business,
    /// `enterprise`
    Enterprise,
    /// `my-ksuite-plus`
    MyKsuitePlus,
    /// `premium`
    Premium,
}

impl Plan {
    /// Every plan, in the order they are listed to users.
    pub const ALL: [Plan; 8] = [
        Plan::Free,
        Plan::Starter,
        Plan::MyKsuite,
        Plan::Standard,
        Plan::Business,
        Plan::Enterprise,
        Plan::MyKsuitePlus,
        Plan::Premium,
    ];

    /// The plan's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Starter => "starter",
            Plan::MyKsuite => "my-ksuite",
            Plan::Standard => "standard",
            Plan::Business => "business",
            Plan::Enterprise => "enterprise",
            Plan::MyKsuitePlus => "my-ksuite-plus",
            Plan::Premium => "premium",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plan name that is not one of [`Plan::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan {name:?}: expected one of {}", plan_names())]
pub struct UnknownPlan {
    /// The name as given.
    pub name: String,
}

fn plan_names() -> String {
    Plan::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Plan {
    type Err = UnknownPlan;

    /// Exact, lowercase names only: the store holds them as written.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| UnknownPlan {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_round_trip() {
        for plan in Plan::ALL {
            assert_eq!(plan.as_str().parse::<Plan>().unwrap(), plan);
        }
        assert_eq!(Plan::default(), Plan::Starter);
    }

    #[test]
    fn unknown_plan_lists_the_valid_ones() {
        let e = "gold".parse::<Plan>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown plan \"gold\": expected one of free, starter, my-ksuite, standard, business, \
             enterprise, my-ksuite-plus, premium"
        );
        assert!("Starter".parse::<Plan>().is_err());
    }
}
