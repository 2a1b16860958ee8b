//! The request's context, built from typed values, holding only what the policies read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::RestrictedExpression;
use cedar_policy_core::ast::{self, Value};
use drawbridge_config::ValueType;
use smol_str::SmolStr;

use crate::request::{BadRequest, RequestView};
use crate::{Principal, RoutePolicies};

/// Which top-level context attributes a set of policies reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads(u16);

impl Reads {
    const FIELDS: [&'static str; 11] = [
        "path", "host", "method", "params", "query", "headers", "ip", "time", "authn", "grpc",
        // Anything else: the policy uses `context` whole.
        "*",
    ];
    pub(crate) const ALL: Reads = Reads(u16::MAX);

    fn bit(name: &str) -> u16 {
        let i = Self::FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap_or(Self::FIELDS.len() - 1);
        1 << i
    }

    pub(crate) fn has(self, name: &str) -> bool {
        self.0 & Self::bit(name) != 0
    }

    pub(crate) fn union(self, o: Reads) -> Reads {
        Reads(self.0 | o.0)
    }

    /// What the policy (as Cedar's JSON form) reads of `context`.
    pub(crate) fn of_policy(est: &serde_json::Value) -> Reads {
        let mut r = Reads::default();
        walk(est, &mut r);
        r
    }
}

fn walk(v: &serde_json::Value, r: &mut Reads) {
    use serde_json::Value as J;
    match v {
        J::Object(o) => {
            for op in [".", "has"] {
                if let Some(J::Object(inner)) = o.get(op)
                    && inner.get("left") == Some(&serde_json::json!({"Var": "context"}))
                {
                    match inner.get("attr").and_then(J::as_str) {
                        Some(attr) => r.0 |= Reads::bit(attr),
                        None => *r = Reads::ALL,
                    }
                    return;
                }
            }
            if o.get("Var").and_then(J::as_str) == Some("context") {
                // `context` used whole (compared, passed to a function): give it all.
                *r = Reads::ALL;
                return;
            }
            for x in o.values() {
                walk(x, r);
            }
        }
        J::Array(a) => a.iter().for_each(|x| walk(x, r)),
        _ => {}
    }
}

/// A built context: the values of a Cedar `Context::Value`, and a fingerprint of them (equal
/// contexts have equal fingerprints; a remembered decision is looked up by fingerprint first,
/// then compared whole).
pub(crate) struct Built {
    pub(crate) values: Arc<BTreeMap<SmolStr, Value>>,
    pub(crate) fingerprint: u64,
}

/// Builds the context `reads` asks for; `context.authn` tells `factors` (the principal's own,
/// or those a step-up would add).
pub(crate) fn build(
    reads: Reads,
    route: &RoutePolicies,
    principal: &Principal,
    factors: &[drawbridge_identity::Factor],
    req: &RequestView<'_>,
    grpc: bool,
) -> Result<Built, BadRequest> {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut m: BTreeMap<SmolStr, Value> = BTreeMap::new();
    let mut h = FINGERPRINT.build_hasher();
    let text = |s: &str| Value::from(SmolStr::new(s));
    if reads.has("path") {
        (0u8, req.path).hash(&mut h);
        m.insert("path".into(), text(req.path));
    }
    if reads.has("host") {
        (1u8, req.host).hash(&mut h);
        m.insert("host".into(), text(req.host));
    }
    if reads.has("method") {
        (2u8, req.method).hash(&mut h);
        m.insert("method".into(), text(req.method));
    }
    if reads.has("params") {
        (3u8, req.params).hash(&mut h);
        let pairs = route
            .params
            .iter()
            .zip(req.params.iter())
            .map(|(k, v)| (k.clone(), text(v)));
        m.insert("params".into(), Value::record(pairs, None));
    }
    // Query and headers are checked whenever the route selects them, read or not: a request
    // that would mean different things to the policy and to the upstream never passes.
    let query = query(route, req.query)?;
    if reads.has("query") {
        4u8.hash(&mut h);
        for (k, v) in &query {
            (k, hash_literal(v)).hash(&mut h);
        }
        m.insert("query".into(), Value::record(query, None));
    }
    let headers = headers(route, req.headers)?;
    if reads.has("headers") {
        5u8.hash(&mut h);
        for (k, v) in &headers {
            (k, hash_literal(v)).hash(&mut h);
        }
        m.insert("headers".into(), Value::record(headers, None));
    }
    if reads.has("ip") {
        (6u8, req.ip).hash(&mut h);
        m.insert("ip".into(), ip_value(req.ip));
    }
    if reads.has("time") {
        let secs = req
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (7u8, secs).hash(&mut h);
        m.insert("time".into(), time_value(req.now));
    }
    if reads.has("authn") {
        8u8.hash(&mut h);
        let now = req
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age_of = |at: u64| i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX);
        let methods = Value::set(principal.methods.iter().map(|a| text(a.as_str())), None);
        let mut authn = vec![(SmolStr::new_static("methods"), methods)];
        if let Some(at) = principal.authenticated_at {
            let age = age_of(at);
            age.hash(&mut h);
            authn.push((SmolStr::new_static("age"), Value::from(age)));
        }
        // A factor dated in the future (beyond clock skew) counts for nothing.
        let counted: Vec<(&'static str, i64)> = factors
            .iter()
            .filter_map(|f| {
                let age = f.age(now)?;
                Some((f.method.as_str(), i64::try_from(age).unwrap_or(i64::MAX)))
            })
            .collect();
        let mut ages: Vec<(SmolStr, Value)> = Vec::with_capacity(counted.len());
        for &(method, age) in &counted {
            (method, age).hash(&mut h);
            ages.push((SmolStr::new_static(method), Value::from(age)));
        }
        authn.push((
            SmolStr::new_static("mfa"),
            Value::set(counted.iter().map(|(m, _)| text(m)), None),
        ));
        if let Some(youngest) = counted.iter().map(|(_, age)| *age).min() {
            authn.push((SmolStr::new_static("mfa_age"), Value::from(youngest)));
        }
        authn.push((SmolStr::new_static("factors"), Value::record(ages, None)));
        m.insert("authn".into(), Value::record(authn, None));
    }
    if grpc && reads.has("grpc") {
        let (service, method) = req.grpc.unwrap_or(("", ""));
        (9u8, service, method).hash(&mut h);
        m.insert(
            "grpc".into(),
            Value::record(
                [
                    (SmolStr::new_static("service"), text(service)),
                    (SmolStr::new_static("method"), text(method)),
                ],
                None,
            ),
        );
    }
    Ok(Built {
        values: Arc::new(m),
        fingerprint: h.finish(),
    })
}

/// The fingerprint's hasher, the same for the whole process.
static FINGERPRINT: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x6472_6177);

/// A literal's hash (query and header values are literals); other values hash alike, which
/// only makes the fingerprint coarser, never wrong.
fn hash_literal(v: &Value) -> u64 {
    use std::hash::BuildHasher;
    match &v.value {
        cedar_policy_core::ast::ValueKind::Lit(l) => FINGERPRINT.hash_one(l),
        _ => 0,
    }
}

/// The route's selected query parameters, decoded and typed. A parameter is found by every
/// spelling frameworks read as its name (`Tenant`, `tenant[]`, `%74enant`: see
/// [`drawbridge_config::params::canonical_param`]), with `&` or `;` between pairs; two
/// spellings of one selected name, a name with a control character, a value that is not UTF-8
/// or does not parse as its type refuse the request.
fn query(route: &RoutePolicies, raw: Option<&str>) -> Result<Vec<(SmolStr, Value)>, BadRequest> {
    let mut out: Vec<(SmolStr, Value)> = Vec::new();
    let (Some(raw), false) = (raw, route.query.is_empty()) else {
        return Ok(out);
    };
    for pair in raw.split(['&', ';']).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = drawbridge_config::params::canonical_param(name).map_err(|e| match e {
            drawbridge_config::params::ParamNameError::Control => BadRequest::QueryControl,
            drawbridge_config::params::ParamNameError::Encoding => BadRequest::QueryEncoding,
        })?;
        let Some((key, ty)) = route
            .query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
        else {
            continue;
        };
        if out.iter().any(|(k, _)| k == key) {
            return Err(BadRequest::RepeatedQuery(key.to_string()));
        }
        let value = decode(value).ok_or(BadRequest::QueryEncoding)?;
        let v = match ty {
            ValueType::Long => value
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| BadRequest::QueryType(key.to_string(), "Long"))?,
            ValueType::Bool => match value.as_str() {
                "true" => Value::from(true),
                "false" => Value::from(false),
                _ => return Err(BadRequest::QueryType(key.to_string(), "Bool")),
            },
            ValueType::String | ValueType::StringSet => Value::from(SmolStr::new(&value)),
        };
        out.push((key.clone(), v));
    }
    Ok(out)
}

/// Form decoding (`+` is a space), refusing what is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn headers(
    route: &RoutePolicies,
    map: &http::HeaderMap,
) -> Result<Vec<(SmolStr, Value)>, BadRequest> {
    let mut out = Vec::new();
    for (key, name) in &route.headers {
        let mut values = map.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(BadRequest::RepeatedHeader(key.to_string()));
        }
        let v = v
            .to_str()
            .map_err(|_| BadRequest::HeaderNotText(key.to_string()))?;
        out.push((key.clone(), Value::from(SmolStr::new(v))));
    }
    Ok(out)
}

thread_local! {
    /// The last client address and second seen on this thread: the extension values are
    /// costly to make and a connection's requests repeat them.
    static LAST_IP: RefCell<Option<(IpAddr, Value)>> = const { RefCell::new(None) };
    static LAST_TIME: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
}

fn ip_value(ip: IpAddr) -> Value {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    LAST_IP.with_borrow_mut(|last| {
        if let Some((seen, v)) = last.as_ref()
            && *seen == ip
        {
            return v.clone();
        }
        let v = extension_value(RestrictedExpression::new_ip(ip.to_string()));
        *last = Some((ip, v.clone()));
        v
    })
}

fn time_value(now: SystemTime) -> Value {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST_TIME.with_borrow_mut(|last| {
        if let Some((seen, v)) = last.as_ref()
            && *seen == secs
        {
            return v.clone();
        }
        let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let v = extension_value(RestrictedExpression::new_datetime(
            humantime::format_rfc3339_seconds(at).to_string(),
        ));
        *last = Some((secs, v.clone()));
        v
    })
}

/// Evaluates an extension constructor (`ip("...")`, `datetime("...")`) to its value. The
/// inputs are made here from typed values, so evaluation cannot fail; if it ever did, the
/// value would be an empty record, which no policy comparing it as an address or a time can
/// accept (it is a type error, and errors deny).
fn extension_value(e: RestrictedExpression) -> Value {
    let ctx = cedar_policy::Context::from_pairs([("v".to_string(), e)]);
    if let Ok(ctx) = ctx
        && let ast::Context::Value(m) = ctx.as_ref()
        && let Some(v) = m.get("v")
    {
        return v.clone();
    }
    Value::empty_record(None)
}
