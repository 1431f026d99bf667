//! The Redis quota store: one Redis server or a Redis Cluster shared by a fleet of relays.
//!
//! # One script, one round trip
//! Every call is one `EVALSHA` of [`SCRIPT`] (the `redis` crate's `Script` loads it with
//! `SCRIPT LOAD` when the server answers `NOSCRIPT`, e.g. after a restart). Redis runs a script
//! alone, so prune, count, check and hold happen atomically: relays racing for the last unit of
//! capacity cannot both win. The script never reads the server's clock: `now` comes from the
//! caller (relays' clocks must be NTP-synchronised; see [`crate::store::quota`]).
//!
//! # Keys
//! A quota key `K` (e.g. `addr:alice@example.org`) uses three Redis keys sharing the hash tag
//! `{q:K}`, so they live in one Cluster slot and the same script runs unchanged on a Cluster:
//! - `{q:K}:s` hash: `used` (recipients in live buckets), `held` (recipients in live holds),
//!   `first` (the bucket at the head of the list, -1 for none) and `h:ID` (recipients held by
//!   hold id `ID`);
//! - `{q:K}:b` list of `BUCKET:COUNT`, oldest bucket first (only buckets that were counted);
//! - `{q:K}:e` sorted set of hold ids scored by their expiry (Unix ms).
//!
//! Every write sets all three to expire [`QuotaSettings::retention_ms`] later (the window plus
//! a bucket plus the hold TTL): idle keys disappear by themselves, and always together, so a
//! hold or a count never survives the key that explains it.
//!
//! # O(1) amortised
//! `used` and `held` are running totals. Each call first drops the buckets that left the window
//! from the head of the list (each bucket is popped once in its life) and the holds whose expiry
//! passed (each hold is removed once); if even the newest bucket expired (a long idle gap) the
//! list is deleted in one step. A hold that fits is then eight commands, each O(1) or
//! O(log holds): `HMGET`, `ZRANGEBYSCORE`, `HINCRBY`, `ZADD`, `HSET`, three `PEXPIRE`; never a
//! scan of the 1,440 buckets of a day. Only a `Full` answer walks buckets, oldest first, and
//! usually stops at the first.
//!
//! # Failures
//! Each call has a deadline (the configured timeout, 500 ms by default): connection refused, a
//! server that does not answer, or any error reply is [`QuotaError::Unavailable`], quickly.
//! The connection ([`RedisLink`], shared with the brake store) reconnects by itself; calls
//! succeed again once Redis is back, with no action from the caller. `ping` is the link's
//! health check: on a Cluster, every master answering with all slots served.

use super::{QuotaError, QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
use crate::policy::quota::QuotaWindow;
use crate::store::redis_link::{Persistence, RedisLink, RedisLinkError};
use redis::Script;
use std::time::Duration;

/// The quota script. `KEYS`: the state hash, the bucket list, the hold-expiry set.
/// `ARGV`: op (`hold`, `commit`, `release`, `refund`, `usage`), now (ms), current bucket,
/// buckets per window, bucket length (ms), hold expiry for this call (ms), key retention (ms),
/// limit, hold id, refund count.
///
/// Replies: hold `{1, used, held}` or `{0, retry_at}`; commit, release and refund `{n}`;
/// usage `{used, held, next_free or -1}`.
pub const SCRIPT: &str = r#"
local s, b, e = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local cur = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
local bms = tonumber(ARGV[5])
local expires = ARGV[6]
local keep = ARGV[7]
local limit = tonumber(ARGV[8])
local id = ARGV[9]
local n = tonumber(ARGV[10])

local function entry(x)
  local i = string.find(x, ':', 1, true)
  return tonumber(string.sub(x, 1, i - 1)), tonumber(string.sub(x, i + 1))
end

local function fmt(bucket, count)
  return string.format('%d:%d', bucket, count)
end

-- The three keys always share one expiry, so none outlives the others.
local function touch()
  redis.call('PEXPIRE', s, keep)
  redis.call('PEXPIRE', b, keep)
  redis.call('PEXPIRE', e, keep)
end

if op == 'release' then
  local c = tonumber(redis.call('HGET', s, 'h:' .. id) or '0')
  if c > 0 then
    redis.call('HDEL', s, 'h:' .. id)
    redis.call('ZREM', e, id)
    redis.call('HINCRBY', s, 'held', -c)
    touch()
  end
  return {c}
end

-- Settle: forget buckets that left the window and holds that expired. `first` caches the
-- bucket at the head of the list (-1: no list), so the hot path reads one hash.
local st = redis.call('HMGET', s, 'used', 'held', 'first')
local used0, held0 = tonumber(st[1] or '0'), tonumber(st[2] or '0')
local first0 = tonumber(st[3] or '-1')
local used, held, first = used0, held0, first0
local oldest = cur - nb + 1
if first < 0 then
  used = 0
elseif first < oldest then
  local last = redis.call('LINDEX', b, -1)
  if (not last) or entry(last) < oldest then
    redis.call('DEL', b)
    used, first = 0, -1
  else
    while true do
      local fb, fc = entry(redis.call('LINDEX', b, 0))
      if fb >= oldest then
        first = fb
        break
      end
      redis.call('LPOP', b)
      used = used - fc
    end
  end
end
local gone = redis.call('ZRANGEBYSCORE', e, '-inf', now)
if #gone > 0 then
  for _, g in ipairs(gone) do
    held = held - tonumber(redis.call('HGET', s, 'h:' .. g) or '0')
    redis.call('HDEL', s, 'h:' .. g)
  end
  redis.call('ZREMRANGEBYSCORE', e, '-inf', now)
end
if used < 0 then used = 0 end
if held < 0 then held = 0 end

local function save()
  if used ~= used0 or held ~= held0 or first ~= first0 then
    redis.call('HSET', s, 'used', used, 'held', held, 'first', first)
    touch()
  end
end

-- When one recipient of capacity returns (policy::quota::retry_at).
local function retry()
  local need = used + held - limit + 1
  local freed, i, newest = 0, 0, 0
  while true do
    local chunk = redis.call('LRANGE', b, i, i + 31)
    for _, x in ipairs(chunk) do
      local eb, ec = entry(x)
      freed = freed + ec
      if eb > newest then newest = eb end
      if freed >= need then return (eb + nb) * bms end
    end
    if #chunk < 32 then break end
    i = i + 32
  end
  -- Held recipients count as counted now (policy::quota::retry_at).
  if freed + held >= need then
    local current = math.floor(now / bms)
    if newest > current then current = newest end
    return (current + nb) * bms
  end
  return now + nb * bms
end

if op == 'hold' then
  if used + held + 1 <= limit then
    redis.call('HINCRBY', s, 'h:' .. id, 1)
    redis.call('ZADD', e, expires, id)
    held = held + 1
    save()
    return {1, used, held}
  end
  if redis.call('ZADD', e, 'XX', 'CH', expires, id) > 0 then touch() end
  save()
  return {0, retry()}
elseif op == 'commit' then
  local c = tonumber(redis.call('HGET', s, 'h:' .. id) or '0')
  if c > 0 then
    redis.call('HDEL', s, 'h:' .. id)
    redis.call('ZREM', e, id)
    held = held - c
    local tail = redis.call('LINDEX', b, -1)
    local tb, tc
    if tail then tb, tc = entry(tail) end
    if tail and tb >= cur then
      redis.call('LSET', b, -1, fmt(tb, tc + c))
    else
      redis.call('RPUSH', b, fmt(cur, c))
      if first < 0 then first = cur end
    end
    used = used + c
  end
  save()
  return {c}
elseif op == 'refund' then
  local left, i = n, -1
  while left > 0 do
    local x = redis.call('LINDEX', b, i)
    if not x then break end
    local xb, xc = entry(x)
    local take = math.min(xc, left)
    if take > 0 then
      redis.call('LSET', b, i, fmt(xb, xc - take))
      left = left - take
    end
    i = i - 1
  end
  used = used - (n - left)
  save()
  return {n - left}
elseif op == 'usage' then
  save()
  if used + held + 1 <= limit then return {used, held, -1} end
  return {used, held, retry()}
end
return redis.error_reply('postern quota: unknown op ' .. tostring(op))
"#;

/// The Redis-backed quota store. Cheap to clone: clones share the connection.
#[derive(Clone, Debug)]
pub struct RedisQuota {
    link: RedisLink,
    script: Script,
    settings: QuotaSettings,
}

impl From<RedisLinkError> for QuotaError {
    fn from(e: RedisLinkError) -> Self {
        match e {
            RedisLinkError::Unavailable(_) => QuotaError::Unavailable(e.to_string()),
            RedisLinkError::Invalid(_) => QuotaError::Invalid(e.to_string()),
        }
    }
}

/// A count from a script reply as the API's `u32` (negative would be a broken script).
fn count(v: i64) -> Result<u32, QuotaError> {
    u32::try_from(v).map_err(|_| QuotaError::Unavailable(format!("redis: bad count {v}")))
}

fn time(v: i64) -> Result<u64, QuotaError> {
    u64::try_from(v).map_err(|_| QuotaError::Unavailable(format!("redis: bad time {v}")))
}

/// The parts of a script call that do not depend on the op.
struct Call<'a> {
    op: &'a str,
    now_ms: u64,
    limit: u32,
    hold_id: &'a str,
    n: u32,
}

impl RedisQuota {
    /// Connects to one Redis server at `url` (`redis://host:port/` or with a database number).
    ///
    /// # Errors
    /// [`QuotaError::Invalid`] for a URL that does not parse; [`QuotaError::Unavailable`] if
    /// the server cannot be reached within `timeout`.
    pub async fn open_single(
        url: &str,
        settings: QuotaSettings,
        timeout: Duration,
    ) -> Result<Self, QuotaError> {
        Self::connected(RedisLink::open_single(url, None, timeout).await?, settings).await
    }

    /// Connects to a Redis Cluster through some of its nodes.
    ///
    /// # Errors
    /// [`QuotaError::Invalid`] for no nodes or a URL that does not parse;
    /// [`QuotaError::Unavailable`] if the cluster cannot be reached within `timeout`.
    pub async fn open_cluster(
        nodes: &[String],
        settings: QuotaSettings,
        timeout: Duration,
    ) -> Result<Self, QuotaError> {
        Self::connected(
            RedisLink::open_cluster(nodes, None, timeout).await?,
            settings,
        )
        .await
    }

    /// The store on an established link, once the backend is healthy.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`] when [`RedisLink::health`] fails.
    pub async fn connected(link: RedisLink, settings: QuotaSettings) -> Result<Self, QuotaError> {
        let store = Self {
            link,
            script: Script::new(SCRIPT),
            settings,
        };
        store.ping().await?;
        Ok(store)
    }

    /// The link, for the brake store that shares it.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Runs the script for `key` within the deadline.
    async fn call(&self, key: &QuotaKey, c: Call<'_>) -> Result<Vec<i64>, QuotaError> {
        let window: QuotaWindow = self.settings.window;
        let tag = format!("{{q:{key}}}");
        let mut invocation = self.script.key(format!("{tag}:s"));
        invocation
            .key(format!("{tag}:b"))
            .key(format!("{tag}:e"))
            .arg(c.op)
            .arg(c.now_ms)
            .arg(window.bucket_of(c.now_ms))
            .arg(window.buckets())
            .arg(window.bucket_ms())
            .arg(c.now_ms.saturating_add(self.settings.hold_ttl_ms))
            .arg(self.settings.retention_ms())
            .arg(c.limit)
            .arg(c.hold_id)
            .arg(c.n);
        let operation = match c.op {
            "hold" => "quota_hold",
            "commit" => "quota_commit",
            "release" => "quota_release",
            "refund" => "quota_refund",
            _ => "quota_usage",
        };
        Ok(self.link.invoke(operation, &invocation).await?)
    }
}

/// The `i`th number of a reply.
fn at(reply: &[i64], i: usize) -> Result<i64, QuotaError> {
    reply
        .get(i)
        .copied()
        .ok_or_else(|| QuotaError::Unavailable(format!("redis: short script reply {reply:?}")))
}

#[async_trait::async_trait]
impl QuotaStore for RedisQuota {
    async fn hold(
        &self,
        key: &QuotaKey,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<QuotaHold, QuotaError> {
        let r = self
            .call(
                key,
                Call {
                    op: "hold",
                    now_ms,
                    limit,
                    hold_id,
                    n: 0,
                },
            )
            .await?;
        if at(&r, 0)? == 1 {
            Ok(QuotaHold::Held {
                used: count(at(&r, 1)?)?,
                held: count(at(&r, 2)?)?,
            })
        } else {
            Ok(QuotaHold::Full {
                retry_at_ms: time(at(&r, 1)?)?,
            })
        }
    }

    async fn commit(&self, key: &QuotaKey, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError> {
        let r = self
            .call(
                key,
                Call {
                    op: "commit",
                    now_ms,
                    limit: 0,
                    hold_id,
                    n: 0,
                },
            )
            .await?;
        count(at(&r, 0)?)
    }

    async fn release(&self, key: &QuotaKey, hold_id: &str) -> Result<u32, QuotaError> {
        let r = self
            .call(
                key,
                Call {
                    op: "release",
                    now_ms: 0,
                    limit: 0,
                    hold_id,
                    n: 0,
                },
            )
            .await?;
        count(at(&r, 0)?)
    }

    async fn refund(&self, key: &QuotaKey, n: u32, now_ms: u64) -> Result<u32, QuotaError> {
        let r = self
            .call(
                key,
                Call {
                    op: "refund",
                    now_ms,
                    limit: 0,
                    hold_id: "",
                    n,
                },
            )
            .await?;
        count(at(&r, 0)?)
    }

    async fn usage(&self, key: &QuotaKey, limit: u32, now_ms: u64) -> Result<Usage, QuotaError> {
        let r = self
            .call(
                key,
                Call {
                    op: "usage",
                    now_ms,
                    limit,
                    hold_id: "",
                    n: 0,
                },
            )
            .await?;
        let next = at(&r, 2)?;
        Ok(Usage {
            used: count(at(&r, 0)?)?,
            held: count(at(&r, 1)?)?,
            limit,
            next_free_ms: if next < 0 { None } else { Some(time(next)?) },
        })
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        Ok(self.link.health().await?)
    }

    async fn persistence(&self) -> Persistence {
        self.link.persistence().await
    }

    fn settings(&self) -> QuotaSettings {
        self.settings
    }
}
