//! The decision: which request descriptors carry a limit (the plan), the Lua script that counts
//! them atomically in one Redis round trip, and the RLS v3 response built from its answer.

use crate::config::{Config, Limit};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    quota::ExpirationSpecifier, Code, DescriptorStatus, Quota, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp};

/// Fixed windows, all-or-nothing, quota leasing. One call evaluates every limited descriptor.
///
/// KEYS[i]: counter prefix of descriptor i (the window start in seconds is appended).
/// ARGV[1]: leased hits N (0 = all-or-nothing with per-descriptor addends).
/// ARGV[2 + 4(i-1) ..]: window seconds, limit, addend, shadow (1/0) of descriptor i.
/// Returns {allowed 1/0, granted, now_ms, count_1, ttl_ms_1, over_1, count_2, ...}: each
/// counter after the increments when allowed, unchanged when not; over_i = 1 when descriptor i
/// does not fit (for shadow descriptors: would not fit). Descriptors of one request that share
/// a counter are checked together (their hits add up).
pub const SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local n = #KEYS
local keys, ttls, limits, shadows = {}, {}, {}, {}
local base, total, mult = {}, {}, {}
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local unit_ms = tonumber(ARGV[b]) * 1000
  local start = now_ms - (now_ms % unit_ms)
  local k = KEYS[i] .. ':' .. string.format('%d', start / 1000)
  keys[i] = k
  ttls[i] = start + unit_ms - now_ms
  limits[i] = tonumber(ARGV[b + 1])
  shadows[i] = ARGV[b + 3] == '1'
  if base[k] == nil then
    base[k] = tonumber(redis.call('GET', k) or '0')
  end
  mult[k] = (mult[k] or 0) + 1
  total[k] = (total[k] or 0) + tonumber(ARGV[b + 2])
end
local grant = lease
local overs = {}
for i = 1, n do
  local k = keys[i]
  if lease > 0 then
    local rem = math.floor((limits[i] - base[k]) / mult[k])
    if rem < 0 then rem = 0 end
    overs[i] = rem == 0
    if not shadows[i] and rem < grant then grant = rem end
  else
    overs[i] = base[k] + total[k] > limits[i]
  end
end
local blocked = false
for i = 1, n do
  if overs[i] and not shadows[i] then blocked = true end
end
if lease > 0 and grant <= 0 then blocked = true end
if blocked or lease == 0 then grant = 0 end
local added = {}
if not blocked then
  for i = 1, n do
    local k = keys[i]
    if added[k] == nil then
      local inc = total[k]
      if lease > 0 then inc = grant * mult[k] end
      added[k] = inc
      if inc > 0 then
        redis.call('INCRBY', k, inc)
        redis.call('PEXPIRE', k, ttls[i])
      end
    end
  end
end
local out = {blocked and 0 or 1, grant, now_ms}
for i = 1, n do
  local k = keys[i]
  local over = overs[i]
  if lease > 0 and not blocked then
    over = base[k] + added[k] > limits[i]
  end
  out[#out + 1] = base[k] + (added[k] or 0)
  out[#out + 1] = ttls[i]
  out[#out + 1] = over and 1 or 0
end
return out
"#;

/// A request descriptor that matched a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Index into the request's descriptors.
    pub index: usize,
    /// Redis key prefix: `rls|<domain>|<k>=<v>|...` (components percent-escaped).
    pub key: String,
    pub limit: Limit,
    pub addend: u64,
}

/// What to ask Redis for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub descriptors: usize,
    /// N > 1 leased hits (request `hits_addend` > 1 and no descriptor sets its own), else 0.
    pub lease: u64,
    pub items: Vec<Item>,
    /// False when the domain is not configured.
    pub known_domain: bool,
}

/// The script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub granted: u64,
    pub now_ms: u64,
    /// Per plan item: its counter (after the increments when allowed), ms to its window's
    /// end, and whether it does not fit (shadow items: would not fit).
    pub items: Vec<ItemOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemOutcome {
    pub count: u64,
    pub ttl_ms: u64,
    pub over: bool,
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
}

/// The counter key prefix of a descriptor (window unit and start are added by the script).
pub fn counter_key(domain: &str, entries: &[(&str, &str)], limit: &Limit) -> String {
    let mut key = String::from("rls|");
    escape(domain, &mut key);
    for (k, v) in entries {
        key.push('|');
        escape(k, &mut key);
        key.push('=');
        escape(v, &mut key);
    }
    key.push('|');
    key.push_str(&limit.unit.seconds().to_string());
    key
}

/// Matches the request's descriptors against its domain.
pub fn plan(config: &Config, req: &RateLimitRequest) -> Plan {
    let request_hits = u64::from(req.hits_addend.max(1));
    let own_addend = req.descriptors.iter().any(|d| d.hits_addend.is_some());
    let lease = if request_hits > 1 && !own_addend {
        request_hits
    } else {
        0
    };
    let mut items = Vec::new();
    let domain = config.domain(&req.domain);
    if let Some(domain) = domain {
        for (index, d) in req.descriptors.iter().enumerate() {
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let Some(limit) = domain.lookup(&entries) else {
                continue;
            };
            // Limits are at most 2^32 - 1, so a larger addend never fits anyway; the clamp keeps
            // the script's sums exact in Lua's doubles.
            let addend = d.hits_addend.map_or(request_hits, |h| h.value.min(1 << 32));
            items.push(Item {
                index,
                key: counter_key(&domain.name, &entries, limit),
                limit: limit.clone(),
                addend,
            });
        }
    }
    Plan {
        descriptors: req.descriptors.len(),
        lease,
        items,
        known_domain: domain.is_some(),
    }
}

impl Plan {
    /// KEYS and ARGV of the script.
    pub fn script_args(&self) -> (Vec<String>, Vec<u64>) {
        let keys = self.items.iter().map(|i| i.key.clone()).collect();
        let mut args = vec![self.lease];
        for i in &self.items {
            args.extend([
                i.limit.unit.seconds(),
                u64::from(i.limit.requests_per_unit),
                i.addend,
                u64::from(i.limit.shadow_mode),
            ]);
        }
        (keys, args)
    }
}

/// Parses the script's flat integer array.
pub fn parse_outcome(values: &[i64], items: usize) -> Option<Outcome> {
    if values.len() != 3 + 3 * items {
        return None;
    }
    let u = |v: i64| u64::try_from(v).ok();
    let items = values[3..]
        .chunks(3)
        .map(|c| {
            Some(ItemOutcome {
                count: u(c[0])?,
                ttl_ms: u(c[1])?,
                over: c[2] == 1,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Outcome {
        allowed: values[0] == 1,
        granted: u(values[1])?,
        now_ms: u(values[2])?,
        items,
    })
}

fn duration_ms(ms: u64) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A status for a descriptor that matched no limit.
fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

/// Builds the response for a plan and its outcome; also returns how many shadowed descriptors
/// were over their limit.
pub fn respond(plan: &Plan, outcome: &Outcome, headers: bool) -> (RateLimitResponse, u64) {
    let mut statuses: Vec<DescriptorStatus> = (0..plan.descriptors).map(|_| unlimited()).collect();
    let mut shadow_over = 0;
    // The most restrictive limit, for the IETF headers: (remaining, reset ms, item).
    let mut tightest: Option<(u64, u64, &Item)> = None;
    for (item, result) in plan.items.iter().zip(&outcome.items) {
        let (count, ttl, over) = (result.count, &result.ttl_ms, result.over);
        let limit = u64::from(item.limit.requests_per_unit);
        let remaining = limit.saturating_sub(count);
        let code = if over && item.limit.shadow_mode {
            shadow_over += 1;
            Code::Ok
        } else if over {
            Code::OverLimit
        } else {
            Code::Ok
        };
        let quota = (plan.lease > 0 && outcome.allowed).then(|| Quota {
            requests: u32::try_from(outcome.granted).unwrap_or(u32::MAX),
            id: String::new(),
            expiration_specifier: Some(ExpirationSpecifier::ValidUntil(Timestamp {
                seconds: i64::try_from((outcome.now_ms + ttl) / 1000).unwrap_or(i64::MAX),
                nanos: i32::try_from(((outcome.now_ms + ttl) % 1000) * 1_000_000).unwrap_or(0),
            })),
        });
        if let Some(status) = statuses.get_mut(item.index) {
            *status = DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: item.limit.name.clone(),
                    requests_per_unit: item.limit.requests_per_unit,
                    unit: item.limit.unit.proto(),
                }),
                limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(duration_ms(*ttl)),
                quota,
            };
        }
        if !item.limit.shadow_mode && tightest.is_none_or(|(r, _, _)| remaining < r) {
            tightest = Some((remaining, *ttl, item));
        }
    }
    let overall = if outcome.allowed {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let mut response = RateLimitResponse {
        overall_code: overall as i32,
        statuses,
        ..Default::default()
    };
    if headers {
        if let Some((remaining, ttl, item)) = tightest {
            response.response_headers_to_add = ietf_headers(item, remaining, ttl);
        }
    }
    (response, shadow_over)
}

/// `RateLimit-Policy: "<name>";q=<limit>;w=<window s>` and
/// `RateLimit: "<name>";r=<remaining>;t=<s to reset>` (draft-ietf-httpapi-ratelimit-headers).
fn ietf_headers(item: &Item, remaining: u64, ttl_ms: u64) -> Vec<HeaderValue> {
    let name: String = item
        .limit
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:/*".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    vec![
        HeaderValue {
            key: "ratelimit-policy".to_string(),
            value: format!(
                "\"{name}\";q={};w={}",
                item.limit.requests_per_unit,
                item.limit.unit.seconds()
            ),
            ..Default::default()
        },
        HeaderValue {
            key: "ratelimit".to_string(),
            value: format!("\"{name}\";r={remaining};t={}", ttl_ms.div_ceil(1000)),
            ..Default::default()
        },
    ]
}

/// The answer when no descriptor carries a limit (no Redis call).
pub fn all_unlimited(plan: &Plan) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: (0..plan.descriptors).map(|_| unlimited()).collect(),
        ..Default::default()
    }
}

/// The answer of `redis_failure: allow` / `deny`.
pub fn failure_answer(plan: &Plan, allow: bool) -> RateLimitResponse {
    let code = if allow { Code::Ok } else { Code::OverLimit };
    let mut statuses: Vec<DescriptorStatus> = (0..plan.descriptors).map(|_| unlimited()).collect();
    for item in &plan.items {
        if let Some(s) = statuses.get_mut(item.index) {
            s.code = code as i32;
        }
    }
    RateLimitResponse {
        overall_code: code as i32,
        statuses,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor as desc;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::google::protobuf::UInt64Value;

    fn config() -> Config {
        Config::parse(
            r#"
domain: d
descriptors:
  - key: a
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: b
    value: "x|y"
    rate_limit: { unit: second, requests_per_unit: 2 }
    shadow_mode: true
"#,
        )
        .unwrap()
    }

    fn request(hits: u32, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend: hits,
        }
    }

    /// A request with a limited descriptor, an unknown one and one whose value needs escaping.
    fn three_descriptors() -> RateLimitRequest {
        request(
            0,
            vec![
                desc(&[("a", "1")]),
                desc(&[("zz", "1")]),
                desc(&[("b", "x|y")]),
            ],
        )
    }

    #[test]
    fn plan_matches_and_escapes_keys() {
        let c = config();
        let p = plan(&c, &three_descriptors());
        assert_eq!(p.descriptors, 3);
        assert_eq!(p.lease, 0);
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[0].index, 0);
        assert_eq!(p.items[0].key, "rls|d|a=1|60");
        assert_eq!(p.items[0].addend, 1);
        assert_eq!(p.items[1].index, 2);
        assert_eq!(p.items[1].key, "rls|d|b=x%7Cy|1");
        let (keys, args) = p.script_args();
        assert_eq!(keys.len(), 2);
        assert_eq!(args, vec![0, 60, 5, 1, 0, 1, 2, 1, 1]);
    }

    #[test]
    fn lease_only_without_descriptor_addends() {
        let c = config();
        let p = plan(&c, &request(7, vec![desc(&[("a", "1")])]));
        assert_eq!((p.lease, p.items[0].addend), (7, 7));
        let mut d = desc(&[("a", "1")]);
        d.hits_addend = Some(UInt64Value { value: 3 });
        let p = plan(&c, &request(7, vec![d]));
        assert_eq!((p.lease, p.items[0].addend), (0, 3));
        let other = RateLimitRequest {
            domain: "other".into(),
            ..request(1, vec![desc(&[("a", "1")])])
        };
        let p = plan(&c, &other);
        assert!(!p.known_domain && p.items.is_empty());
        assert_eq!(all_unlimited(&p).statuses.len(), 1);
    }

    #[test]
    fn response_statuses_and_headers() {
        let c = config();
        let p = plan(&c, &three_descriptors());
        let outcome = parse_outcome(&[1, 0, 1_000, 3, 30_000, 0, 3, 500, 1], 2).unwrap();
        let (r, shadow) = respond(&p, &outcome, true);
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(shadow, 1);
        assert_eq!(r.statuses.len(), 3);
        assert_eq!(r.statuses[0].limit_remaining, 2);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 30);
        assert!(r.statuses[1].current_limit.is_none());
        assert_eq!(r.statuses[2].code, Code::Ok as i32); // shadowed
        assert_eq!(r.response_headers_to_add[0].value, "\"a\";q=5;w=60");
        assert_eq!(r.response_headers_to_add[1].value, "\"a\";r=2;t=30");

        let blocked = parse_outcome(&[0, 0, 1_000, 5, 30_000, 1, 0, 500, 0], 2).unwrap();
        let (r, _) = respond(&p, &blocked, false);
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[2].code, Code::Ok as i32);
        assert!(r.response_headers_to_add.is_empty());
        assert!(parse_outcome(&[1, 0, 1], 1).is_none());
        assert!(parse_outcome(&[1, 0, 1, -1, 2, 0], 1).is_none());
    }

    #[test]
    fn lease_response_carries_quota() {
        let c = config();
        let p = plan(&c, &request(4, vec![desc(&[("a", "1")])]));
        let o = parse_outcome(&[1, 2, 10_500, 5, 1_500, 0], 1).unwrap();
        let (r, _) = respond(&p, &o, false);
        let q = r.statuses[0].quota.clone().unwrap();
        assert_eq!(q.requests, 2);
        assert_eq!(
            q.expiration_specifier,
            Some(ExpirationSpecifier::ValidUntil(Timestamp {
                seconds: 12,
                nanos: 0
            }))
        );
        assert_eq!(r.statuses[0].limit_remaining, 0);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
    }
}
