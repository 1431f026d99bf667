//! The Redis brake store: the fleet's brakes next to its quotas, on the quota store's
//! connection ([`RedisLink`]), one atomic Lua script per check.
//!
//! # Keys
//! - `{b:m:IDENTITY}` string: the message brake's theoretical arrival time (Unix ms, three
//!   decimals), expiring when it is in the past (a full budget needs no key).
//! - `{b:l:SUBNET}:c:CLIENT` and `{b:l:SUBNET}:n` sorted sets: the login attempts of a client
//!   key and of its subnet key, member the attempt id, score the time; both share the
//!   subnet's hash tag (a client is in one subnet), so one script reads and writes both on a
//!   Cluster. Each expires a window after its newest attempt.
//!
//! The scripts read no server clock: `now` comes from the caller, as for quotas.

use super::{
    BrakeError, BrakeStore, GCRA_SLACK_MS, LoginBrake, LoginLimits, LoginSource, MINUTE_MS,
    MessageRate,
};
use crate::store::redis_link::{RedisLink, RedisLinkError};
use redis::Script;

/// GCRA for the message brake. `KEYS`: the identity's key. `ARGV`: now (ms), interval (ms),
/// period (ms), slack (ms). Reply: 1 taken, 0 refused.
pub const MESSAGE_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > period + slack then return 0 end
redis.call('SET', KEYS[1], string.format('%.3f', nxt), 'PX', math.ceil(nxt - now) + 1)
return 1
"#;

/// The sliding window log of login attempts. `KEYS`: the client's set, the subnet's set.
/// `ARGV`: op (`state`, `begin`, `forget`), now (ms), window (ms), per-client limit,
/// per-subnet limit, attempt id. Reply: 0 open, 1 client braked, 2 subnet braked.
pub const LOGIN_SCRIPT: &str = r#"
local c, s = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local id = ARGV[6]
if op == 'forget' then
  redis.call('ZREM', c, id)
  redis.call('ZREM', s, id)
  return 0
end
-- A failure at t counts while now - t <= window.
local oldest = '(' .. string.format('%d', now - window)
redis.call('ZREMRANGEBYSCORE', c, '-inf', oldest)
redis.call('ZREMRANGEBYSCORE', s, '-inf', oldest)
if redis.call('ZCARD', c) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', s) >= tonumber(ARGV[5]) then return 2 end
if op == 'begin' then
  redis.call('ZADD', c, now, id)
  redis.call('ZADD', s, now, id)
  redis.call('PEXPIRE', c, window + 1)
  redis.call('PEXPIRE', s, window + 1)
end
return 0
"#;

/// The Redis-backed brake store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisBrakes {
    link: RedisLink,
    messages: Script,
    logins: Script,
}

impl From<RedisLinkError> for BrakeError {
    fn from(e: RedisLinkError) -> Self {
        BrakeError::Unavailable(e.to_string())
    }
}

impl RedisBrakes {
    /// The brakes on `link` (the quota store's: one connection per replica).
    pub fn new(link: RedisLink) -> Self {
        Self {
            link,
            messages: Script::new(MESSAGE_SCRIPT),
            logins: Script::new(LOGIN_SCRIPT),
        }
    }

    async fn login(
        &self,
        op: &str,
        source: &LoginSource,
        attempt: &str,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        let tag = format!("{{b:l:{}}}", source.subnet);
        let mut invocation = self.logins.key(format!("{tag}:c:{}", source.client));
        invocation
            .key(format!("{tag}:n"))
            .arg(op)
            .arg(now_ms)
            .arg(limits.window_ms)
            .arg(limits.per_client)
            .arg(limits.per_subnet)
            .arg(attempt);
        match self.link.invoke::<i64>("brake_login", &invocation).await? {
            0 => Ok(LoginBrake::Open),
            1 => Ok(LoginBrake::Client),
            2 => Ok(LoginBrake::Subnet),
            other => Err(BrakeError::Unavailable(format!(
                "redis: unexpected login script reply {other}"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl BrakeStore for RedisBrakes {
    async fn take_message(
        &self,
        identity: &str,
        rate: MessageRate,
        now_ms: u64,
    ) -> Result<bool, BrakeError> {
        let mut invocation = self.messages.key(format!("{{b:m:{identity}}}"));
        invocation
            .arg(now_ms)
            .arg(rate.interval_ms())
            .arg(MINUTE_MS)
            .arg(GCRA_SLACK_MS);
        Ok(self
            .link
            .invoke::<i64>("brake_message", &invocation)
            .await?
            == 1)
    }

    async fn login_state(
        &self,
        source: &LoginSource,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        self.login("state", source, "", limits, now_ms).await
    }

    async fn begin_login(
        &self,
        source: &LoginSource,
        attempt: &str,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        self.login("begin", source, attempt, limits, now_ms).await
    }

    async fn forget_login(&self, source: &LoginSource, attempt: &str) -> Result<(), BrakeError> {
        let limits = LoginLimits {
            per_client: 0,
            per_subnet: 0,
            window_ms: 0,
        };
        self.login("forget", source, attempt, limits, 0)
            .await
            .map(drop)
    }
}
