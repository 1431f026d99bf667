//! Metering: counting a session's recipients against its rolling daily quota.
//!
//! A session is metered once its identity is known: the authenticated address on 587/465, or
//! the hosting account whose network the client is in on port 25. Clients of the trusted
//! `[relay] networks` are not metered (Postfix's `mynetworks`: the provider's own systems).
//! [`RelayClient::identify`] makes that call for a port-25 client when it connects.
//!
//! Life of a transaction's holds (FAQ: every To/CC/BCC recipient counts 1):
//! - each RCPT that passed the session's checks is held (one atomic check-and-hold in the
//!   quota store); the RCPT that would go over the limit gets 450 with the time capacity
//!   returns, and the recipients before it stay accepted;
//! - at end of data the holds are committed (counted) *before* the spool commit, and refunded
//!   if the spool then fails: a message is never accepted uncounted;
//! - RSET, a new EHLO, a refused message, QUIT or a dropped connection release the holds (a
//!   release that fails is retried in the background for about half a minute); the holds of a
//!   relay that dies expire by themselves after `quota.hold_ttl`.
//!
//! Fail closed: a quota store (or, for a message's first RCPT, a message brake) that does not
//! answer turns RCPT into `451 4.3.0` and end of data into `451 4.3.0`; nothing is accepted
//! without being counted.

use super::Shared;
use crate::policy::quota::retry_after_text;
use crate::session::{HoldOutcome, HostingClient};
use crate::spool::SpoolId;
use crate::store::quota::{self, QuotaError, QuotaKey};
use crate::store::{QuotaIdentity, StoreError};
use crate::unix_time::unix_ms;
use std::net::SocketAddr;
use std::time::SystemTime;

/// How a session's recipients are counted.
pub(super) enum Metering {
    /// Submission before AUTH: the identity is not known yet.
    UntilAuth,
    /// Trusted relay networks: not metered.
    Unmetered,
    /// Counted against this identity's quota.
    Metered(Meter),
    /// The limit could not be looked up: recipients get 451 until the next session.
    Unavailable,
}

/// Who a port-25 client is, as the session and its metering need it.
pub(super) struct RelayClient {
    /// Whether its network may relay at all.
    pub(super) relay_allowed: bool,
    /// The hosting account its network belongs to.
    pub(super) hosting: Option<HostingClient>,
    /// How its recipients are counted.
    pub(super) metering: Metering,
}

impl RelayClient {
    /// A hosting account by its network (metered, sender domains bounded), a trusted network
    /// (unmetered), or nobody (relaying denied).
    pub(super) async fn identify(shared: &Shared, peer: SocketAddr) -> Self {
        let trusted = shared
            .config
            .relay
            .networks
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let (relay_allowed, hosting, metering) = match shared
            .directory
            .hosting_account_for(peer.ip())
            .await
        {
            Ok(Some(account)) => {
                let identity = QuotaIdentity::Hosting(account.name.clone());
                let metering = match Meter::for_identity(shared, identity).await {
                    Ok(meter) => Metering::Metered(meter),
                    Err(e) => {
                        tracing::warn!(account = %account.name, error = %e, "hosting quota unavailable");
                        Metering::Unavailable
                    }
                };
                let client = HostingClient {
                    account: account.name,
                    domains: account.domains,
                };
                (true, Some(client), metering)
            }
            Ok(None) if trusted => (true, None, Metering::Unmetered),
            Ok(None) => (false, None, Metering::Unmetered),
            Err(e) => {
                tracing::warn!(client_ip = %peer.ip(), error = %e, "hosting account lookup failed");
                (true, None, Metering::Unavailable)
            }
        };
        Self {
            relay_allowed,
            hosting,
            metering,
        }
    }
}

impl Metering {
    /// Holds one recipient of the open transaction `id`, or says why not.
    pub(super) async fn hold(&mut self, shared: &Shared, id: &SpoolId) -> HoldOutcome {
        match self {
            Metering::Unmetered => HoldOutcome::Held,
            Metering::UntilAuth | Metering::Unavailable => HoldOutcome::Unavailable,
            Metering::Metered(meter) => {
                // The per-minute message brake counts transactions: checked at the first hold,
                // and failing closed like the quota.
                if !meter.has_hold() {
                    match shared.brakes.allow_message(&meter.key().to_string()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(identity = %meter.key(), "message brake engaged");
                            return HoldOutcome::Throttled;
                        }
                        Err(e) => {
                            shared.metrics.quota_hold("unavailable");
                            tracing::warn!(identity = %meter.key(), error = %e, "message brake unavailable");
                            return HoldOutcome::Unavailable;
                        }
                    }
                }
                meter.hold(shared, &id.0).await
            }
        }
    }

    /// Counts the open transaction's holds at end of data; see [`Meter::commit`]. Returns how
    /// many were counted (none when the session is not metered).
    pub(super) async fn commit(&mut self, shared: &Shared) -> Result<u32, CommitRefusal> {
        match self {
            Metering::Metered(meter) => meter.commit(shared).await,
            _ => Ok(0),
        }
    }

    /// Gives back `n` counted recipients; see [`Meter::refund`].
    pub(super) async fn refund(&self, shared: &Shared, n: u32) {
        if let Metering::Metered(meter) = self {
            meter.refund(shared, n).await;
        }
    }

    /// Releases the open transaction's holds, if any.
    pub(super) async fn release(&mut self, shared: &Shared) {
        if let Metering::Metered(meter) = self {
            meter.release(shared).await;
        }
    }
}

/// The quota of one session's identity, and the holds of its open transaction.
pub(super) struct Meter {
    identity: QuotaIdentity,
    key: QuotaKey,
    limit: u32,
    /// Hold id of the open transaction, once it has held a recipient.
    hold: Option<String>,
    /// Recipients the open transaction holds.
    held: u32,
}

/// Why a message could not be counted at end of data.
#[derive(Debug)]
pub(super) enum CommitRefusal {
    /// The quota store did not answer.
    Unavailable,
    /// The holds had expired (a transaction longer than `quota.hold_ttl`) and the capacity
    /// is gone meanwhile.
    Full {
        /// The limit in force.
        limit: u32,
        /// `HH:MM` (UTC) at which capacity returns.
        retry_after: String,
    },
}

/// Why a session's quota could not be set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum MeterError {
    /// The store could not say what the limit is.
    #[error("limit lookup: {0}")]
    Store(#[from] StoreError),
    /// The identity has no limit (removed meanwhile, or a plan without a configured limit).
    #[error("no daily limit for {0}")]
    NoLimit(String),
}

impl Meter {
    /// The meter of `identity`, with its limit: override, else plan, else the hosting default.
    pub(super) async fn for_identity(
        shared: &Shared,
        identity: QuotaIdentity,
    ) -> Result<Self, MeterError> {
        let limit = current_limit(shared, &identity).await?;
        let key = match &identity {
            QuotaIdentity::Address(a) => QuotaKey::Address(a.clone()),
            QuotaIdentity::Hosting(h) => QuotaKey::Hosting(h.clone()),
        };
        Ok(Self {
            identity,
            key,
            limit,
            hold: None,
            held: 0,
        })
    }

    /// The identity, for logs and the message brake.
    pub(super) fn key(&self) -> &QuotaKey {
        &self.key
    }

    /// Whether the open transaction holds anything yet.
    pub(super) fn has_hold(&self) -> bool {
        self.hold.is_some()
    }

    /// Holds one recipient for the transaction `tx_id`.
    pub(super) async fn hold(&mut self, shared: &Shared, tx_id: &str) -> HoldOutcome {
        if self.hold.is_none() {
            // Each transaction sees the limit in force now: `postern limit set/clear` applies
            // to the next message, also in sessions that are already open.
            match current_limit(shared, &self.identity).await {
                Ok(limit) => self.limit = limit,
                Err(e) => {
                    tracing::warn!(identity = %self.key, error = %e, "quota limit unavailable");
                    shared.metrics.quota_hold("unavailable");
                    return HoldOutcome::Unavailable;
                }
            }
        }
        let now = unix_ms(SystemTime::now());
        match shared.quota.hold(&self.key, tx_id, self.limit, now).await {
            Ok(quota::QuotaHold::Held { .. }) => {
                self.hold = Some(tx_id.to_string());
                self.held += 1;
                shared.metrics.quota_hold("held");
                HoldOutcome::Held
            }
            Ok(quota::QuotaHold::Full { retry_at_ms }) => {
                shared.metrics.quota_hold("full");
                shared
                    .metrics
                    .quota_refused(matches!(self.identity, QuotaIdentity::Hosting(_)));
                tracing::info!(identity = %self.key, limit = self.limit, "daily quota reached");
                HoldOutcome::Full {
                    limit: self.limit,
                    retry_after: retry_after_text(retry_at_ms),
                }
            }
            Err(e) => {
                // The call may have taken effect before it timed out: remember the hold id so
                // that the transaction's end releases it.
                self.hold = Some(tx_id.to_string());
                shared.metrics.quota_hold("unavailable");
                tracing::warn!(identity = %self.key, error = %e, "quota service unavailable");
                HoldOutcome::Unavailable
            }
        }
    }

    /// Counts the transaction's held recipients. Returns how many were counted.
    ///
    /// Holds that expired during a transaction longer than `quota.hold_ttl` (a slow upload)
    /// are taken again before the message is accepted; if the capacity went meanwhile, the
    /// message is refused with the quota reply: a message is never accepted uncounted.
    pub(super) async fn commit(&mut self, shared: &Shared) -> Result<u32, CommitRefusal> {
        let Some(hold) = self.hold.take() else {
            return Ok(0);
        };
        let expected = std::mem::take(&mut self.held);
        let now = unix_ms(SystemTime::now());
        let unavailable = |e: QuotaError| {
            tracing::warn!(error = %e, "quota commit failed");
            CommitRefusal::Unavailable
        };
        let counted = match shared.quota.commit(&self.key, &hold, now).await {
            Ok(counted) => counted,
            Err(e) => {
                // Keep the hold id so that the transaction's release can still find it.
                self.hold = Some(hold);
                self.held = expected;
                return Err(unavailable(e));
            }
        };
        if counted >= expected {
            return Ok(counted);
        }
        tracing::info!(identity = %self.key, expected, counted, "holds expired during the transaction; taking them again");
        let renewal = format!("{hold}.renewed");
        for _ in counted..expected {
            let refusal = match shared
                .quota
                .hold(&self.key, &renewal, self.limit, now)
                .await
            {
                Ok(quota::QuotaHold::Held { .. }) => continue,
                Ok(quota::QuotaHold::Full { retry_at_ms }) => CommitRefusal::Full {
                    limit: self.limit,
                    retry_after: retry_after_text(retry_at_ms),
                },
                Err(e) => unavailable(e),
            };
            let _ = shared.quota.release(&self.key, &renewal).await;
            self.refund(shared, counted).await;
            return Err(refusal);
        }
        match shared.quota.commit(&self.key, &renewal, now).await {
            Ok(renewed) => Ok(counted + renewed),
            Err(e) => {
                self.refund(shared, counted).await;
                Err(unavailable(e))
            }
        }
    }

    /// Gives back `n` counted recipients (the spool refused the message after the commit).
    pub(super) async fn refund(&self, shared: &Shared, n: u32) {
        if n == 0 {
            return;
        }
        let now = unix_ms(SystemTime::now());
        if let Err(e) = shared.quota.refund(&self.key, n, now).await {
            // Counted but not sent: the user loses n recipients of today's capacity, which
            // is the safe side of the error.
            tracing::warn!(identity = %self.key, n, error = %e, "quota refund failed");
        }
    }

    /// Releases the open transaction's holds, if any.
    pub(super) async fn release(&mut self, shared: &Shared) {
        self.held = 0;
        let Some(hold) = self.hold.take() else { return };
        let Err(e) = shared.quota.release(&self.key, &hold).await else {
            return;
        };
        // Retried in the background (the session goes on), so that a blip of Redis does not
        // block the capacity until `quota.hold_ttl`.
        tracing::warn!(identity = %self.key, error = %e, "quota release failed; retrying in the background");
        let (quota, metrics, key) = (
            shared.quota.clone(),
            shared.metrics.clone(),
            self.key.clone(),
        );
        tokio::spawn(async move {
            match quota::release_retrying(
                quota.as_ref(),
                &key,
                &hold,
                &quota::RELEASE_RETRY_DELAYS[..],
            )
            .await
            {
                Ok(n) => {
                    metrics.quota_release_retried("released");
                    tracing::info!(identity = %key, released = n, "quota release retried: released");
                }
                Err(e) => {
                    metrics.quota_release_retried("gave_up");
                    tracing::warn!(identity = %key, error = %e, "quota release still failing; holds will expire");
                }
            }
        });
    }
}

/// The limit in force for `identity`: its override, else its plan's, else the hosting default.
async fn current_limit(shared: &Shared, identity: &QuotaIdentity) -> Result<u32, MeterError> {
    let limits = shared
        .directory
        .limits_of(identity)
        .await?
        .ok_or_else(|| MeterError::NoLimit(identity.to_string()))?;
    let quota = &shared.config.quota;
    limits
        .effective(
            |plan| quota.plans.get(plan.as_str()).copied(),
            quota.hosting,
        )
        .map(|(limit, _source)| limit)
        .ok_or_else(|| MeterError::NoLimit(identity.to_string()))
}
