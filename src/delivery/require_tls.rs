//! RFC 8689 on the delivery side: `REQUIRETLS` messages and the `TLS-Required: No` field.
//!
//! A message accepted with `REQUIRETLS` ([`Envelope::require_tls`]) goes only to a host whose
//! TLS is authenticated, by the decisions DANE and MTA-STS already make for their own modes
//! (no second verifier):
//! - DANE (RFC 8689 4.2.1 with RFC 7672): the MX lookup was DNSSEC-secure and the host has
//!   usable TLSA records, so `dane::host_tls` chose [`TlsPolicy::Dane`];
//! - MTA-STS: the destination publishes a policy in mode `enforce` or `testing` (section
//!   4.2.1 has `testing` treated as `enforce` for these messages) that lists the host, so
//!   the host runs under [`TlsPolicy::MtaSts`] (WebPKI, certificate valid for the host name);
//! - `[delivery] relayhost`: DANE for the relay host's own name (its address and TLSA
//!   records DNSSEC-secure, `_25._tcp` as for MX hosts), else WebPKI for the configured name
//!   under [`TlsPolicy::MtaSts`] with `[mta_sts] roots` (not available with
//!   `[mta_sts] enabled = false`).
//!
//! Any other host (opportunistic, or DANE's "encrypt" row with only unusable TLSA records) is
//! skipped. After STARTTLS the host must advertise `REQUIRETLS` (section 4.2.2), and `MAIL
//! FROM` carries it; a host that does not is left for the next one
//! ([`ClientError::RequireTlsNotOffered`]). When the group ends without a transaction:
//! - the last host did not advertise REQUIRETLS: the recipients fail with 5.7.30
//!   "REQUIRETLS support required" (the code RFC 8689 section 6 registers);
//! - TLS could not be had or the certificate not authenticated, no host was authenticated at
//!   all, or the MTA-STS policy lists none of the MX hosts: 5.7.10 "encryption needed";
//! - anything else (refused connections, timeouts, temporary DNS failures) is retried as for
//!   any message: the next try may find the host that qualifies.
//!
//! `TLS-Required: No` ([`Envelope::tls_required_no`], never together with `REQUIRETLS`):
//! section 4.3, DANE and MTA-STS are not applied, TLS stays opportunistic.

use crate::delivery::client::{ClientError, ClientSettings, Transaction};
use crate::delivery::mx::MxHost;
use crate::delivery::outcome::RecipientOutcome;
use crate::delivery::tls::TlsPolicy;
use crate::delivery::{GroupOutcome, HostTrail, Route, RouteKind, StsEnforcement, Worker, mta_sts};
use crate::smtp::EnhancedCode;
use crate::smtp::extensions::Extensions;
use crate::spool::Envelope;

/// 5.7.10 (RFC 5248 "encryption needed"): no authenticated TLS could be had.
pub const ENCRYPTION_NEEDED: EnhancedCode = EnhancedCode::new(5, 7, 10);
/// 5.7.30 (RFC 8689 section 6 "REQUIRETLS support required").
pub const REQUIRETLS_REQUIRED: EnhancedCode = EnhancedCode::new(5, 7, 30);

/// Section 4.2.2: the hop must advertise REQUIRETLS (in its EHLO after STARTTLS) to be
/// given a REQUIRETLS message.
pub(super) fn next_hop_refusal(txn: &Transaction<'_>, ext: &Extensions) -> Option<ClientError> {
    (txn.require_tls && !ext.require_tls).then_some(ClientError::RequireTlsNotOffered)
}

impl Worker {
    /// The route as the message's TLS demands: no DANE for `TLS-Required: No`; DANE for the
    /// relay host's name for `REQUIRETLS` (its name is the operator's, so the "MX" step is as
    /// good as secure; the address and TLSA lookups still must be).
    pub(super) fn tls_route(&self, envelope: &Envelope, route: &mut Route) {
        if envelope.tls_required_no {
            route.dane = false;
        } else if envelope.require_tls && matches!(route.kind, RouteKind::Relay) {
            route.dane = self.config.dns.dnssec;
        }
    }

    /// The MTA-STS policy that governs the group: for `REQUIRETLS`, one in mode `enforce` or
    /// `testing`; none for `TLS-Required: No`; else the enforced one, as for any message.
    pub(super) async fn sts_policy<'r>(
        &self,
        envelope: &Envelope,
        route: &'r Route,
    ) -> Option<StsEnforcement<'r>> {
        if envelope.tls_required_no {
            return None;
        }
        if !envelope.require_tls {
            return self.enforced_sts_policy(route).await;
        }
        let domain = match &route.kind {
            RouteKind::Mx(d) | RouteKind::Implicit(d)
                if crate::delivery::mx::address_literal(d).is_none() =>
            {
                d
            }
            _ => return None,
        };
        let sts = self.mta_sts.as_ref()?;
        let resolver = self.resolver().await.ok()?;
        let policy = sts
            .policy(&resolver, domain)
            .await
            .filter(|p| matches!(p.mode, mta_sts::Mode::Enforce | mta_sts::Mode::Testing))?;
        Some(StsEnforcement { policy, domain })
    }

    /// For a `REQUIRETLS` message, whether `host` may be used under the policy
    /// `host_policy` chose (and with which settings); `None` skips it and notes why in
    /// `trail`. Other messages pass unchanged.
    pub(super) fn require_tls_host(
        &self,
        envelope: &Envelope,
        route: &Route,
        host: &MxHost,
        policy: TlsPolicy,
        settings: Option<ClientSettings>,
        trail: &mut HostTrail,
    ) -> Option<(TlsPolicy, Option<ClientSettings>)> {
        if !envelope.require_tls {
            return Some((policy, settings));
        }
        match policy {
            TlsPolicy::Dane | TlsPolicy::MtaSts => Some((policy, settings)),
            // The relay host without DANE: WebPKI for the configured name.
            TlsPolicy::Opportunistic if matches!(route.kind, RouteKind::Relay) => {
                let Some(sts) = &self.mta_sts else {
                    trail.require_tls_refusal = Some(format!(
                        "relay host {} has no DANE TLSA records and WebPKI roots are not \
                         configured ([mta_sts] enabled = false)",
                        host.name
                    ));
                    return None;
                };
                let settings = ClientSettings {
                    tls_config: sts.tls.clone(),
                    ..self.client.clone()
                };
                Some((TlsPolicy::MtaSts, Some(settings)))
            }
            TlsPolicy::Encrypt => {
                trail.require_tls_refusal = Some(format!(
                    "MX host {} has no usable DANE TLSA records",
                    host.name
                ));
                None
            }
            TlsPolicy::Opportunistic | TlsPolicy::Plaintext => {
                trail.require_tls_refusal = Some(format!(
                    "MX host {} cannot be authenticated: no DNSSEC-validated DANE TLSA \
                     records and no MTA-STS policy listing it",
                    host.name
                ));
                None
            }
        }
    }

    /// The permanent failure of a `REQUIRETLS` group that ended without a transaction for a
    /// REQUIRETLS reason (see the module docs); `None` leaves the failure to `group_failure`.
    pub(super) fn require_tls_failure(
        &self,
        envelope: &Envelope,
        indices: &[usize],
        trail: &HostTrail,
    ) -> Option<GroupOutcome> {
        if !envelope.require_tls || self.shutdown.is_cancelled() {
            return None;
        }
        let (peer, outcome) = match &trail.last {
            Some((peer, ClientError::RequireTlsNotOffered)) => (
                Some(peer.clone()),
                RecipientOutcome::permanent(
                    REQUIRETLS_REQUIRED,
                    format!(
                        "{peer} does not support REQUIRETLS, which the message requires \
                         (RFC 8689)"
                    ),
                ),
            ),
            Some((peer, ClientError::TlsRequired { detail, .. })) => (
                Some(peer.clone()),
                RecipientOutcome::permanent(
                    ENCRYPTION_NEEDED,
                    format!(
                        "REQUIRETLS: no authenticated TLS with {peer}: {detail}; the message \
                         requires it (RFC 8689)"
                    ),
                ),
            ),
            Some(_) => return None,
            None if trail.lookup_failure.is_some() => return None,
            None => {
                let reason = trail
                    .require_tls_refusal
                    .as_ref()
                    .or(trail.sts_refusal.as_ref())?;
                (
                    None,
                    RecipientOutcome::permanent(
                        ENCRYPTION_NEEDED,
                        format!(
                            "REQUIRETLS: {reason}; the message requires authenticated TLS \
                             (RFC 8689)"
                        ),
                    ),
                )
            }
        };
        Some(GroupOutcome {
            peer,
            tls: None,
            recipients: indices.iter().map(|&i| (i, outcome.clone())).collect(),
            dsn_relayed: false,
            dead: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(require_tls: bool) -> Transaction<'static> {
        Transaction {
            sender: "a@example.org",
            recipients: &[],
            size: 1,
            body_8bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            recipient_dsn: &[],
            require_tls,
        }
    }

    #[test]
    fn next_hop_must_advertise_requiretls_only_for_such_messages() {
        let without = Extensions::default();
        let with = Extensions {
            require_tls: true,
            ..Extensions::default()
        };
        assert!(matches!(
            next_hop_refusal(&txn(true), &without),
            Some(ClientError::RequireTlsNotOffered)
        ));
        assert!(next_hop_refusal(&txn(true), &with).is_none());
        assert!(next_hop_refusal(&txn(false), &without).is_none());
        assert_eq!(REQUIRETLS_REQUIRED.to_string(), "5.7.30");
        assert_eq!(ENCRYPTION_NEEDED.to_string(), "5.7.10");
    }
}
