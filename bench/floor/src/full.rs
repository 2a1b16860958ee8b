//! The floor of the full access path: what checking and recording a request costs when done
//! the least way on the crates Drawbridge uses, so that the benchmark can tell Drawbridge's
//! own work on that path from the work the path itself asks for.
//!
//! A request needs a bearer token: verified once (jsonwebtoken, RS256 with the key the JWKS
//! file names, issuer and audience checked), then found by its text in a cache and its
//! expiry checked. The policies (cedar-policy) are asked once per caller, route and action
//! (`Action::"read"` for `GET`, `HEAD` and `OPTIONS`, `Action::"write"` for any other
//! method, on `Route::"<first segment>"` in `Upstream::"upstream"`; no context), and their
//! answer remembered: it cannot change while the caller, the route and the policies do not.
//! Every decision is an audit line (JSON, each line carrying the SHA-256 of the one before
//! it) and every answer an access line (JSON), written where they happen into 64 KiB
//! buffers that go to their files when full and every second (nginx's `buffer=` and
//! `flush=`): no hand-over to another thread. Nothing else: no request id, no header rules,
//! no metrics.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use http::{HeaderMap, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

/// The claims the benchmark's tokens carry.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// A caller a token admitted, kept by the token's text.
pub struct Caller {
    sub: String,
    exp: u64,
    principal: EntityUid,
    /// The caller and its groups; the route and its upstream are added per decision.
    entities: Vec<Entity>,
    /// Per route: whether the policies allow reading it, and writing it, once asked.
    decisions: Mutex<HashMap<String, [Option<bool>; 2]>>,
}

/// The two logs, and the audit chain's last link.
struct Logs {
    audit: std::io::BufWriter<std::fs::File>,
    access: std::io::BufWriter<std::fs::File>,
    seq: u64,
    prev: [u8; 32],
    line: Vec<u8>,
}

/// The checks and the logs of the full path.
pub struct Gate {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    cache: Mutex<HashMap<String, Arc<Caller>>>,
    policies: PolicySet,
    authorizer: Authorizer,
    read: EntityUid,
    write: EntityUid,
    upstream: EntityUid,
    logs: Arc<Mutex<Logs>>,
}

fn uid(kind: &str, id: &str) -> std::io::Result<EntityUid> {
    format!("{kind}::{}", serde_json::Value::from(id))
        .parse()
        .map_err(std::io::Error::other)
}

impl Gate {
    /// Keys from `jwks`, policies from `policies`, logs written to `dir`; tokens must be
    /// issued by `issuer` for the audience `bench`.
    pub fn new(jwks: &str, policies: &str, dir: &str, issuer: &str) -> std::io::Result<Self> {
        let set: JwkSet =
            serde_json::from_str(&std::fs::read_to_string(jwks)?).map_err(std::io::Error::other)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) {
                keys.insert(kid.clone(), key);
            }
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&["bench"]);
        let policies: PolicySet = std::fs::read_to_string(policies)?
            .parse()
            .map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let logs = Arc::new(Mutex::new(Logs {
            audit: open(&Path::new(dir).join("audit.jsonl"))?,
            access: open(&Path::new(dir).join("access.jsonl"))?,
            seq: 0,
            prev: [0; 32],
            line: Vec::with_capacity(512),
        }));
        let flushed = Arc::downgrade(&logs);
        std::thread::Builder::new()
            .name("floor-flush".into())
            .spawn(move || {
                while let Some(logs) = flushed.upgrade() {
                    let mut l = lock(&logs);
                    let _ = l.audit.flush();
                    let _ = l.access.flush();
                    drop(l);
                    drop(logs);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            })?;
        Ok(Self {
            keys,
            validation,
            cache: Mutex::new(HashMap::new()),
            policies,
            authorizer: Authorizer::new(),
            read: uid("Action", "read")?,
            write: uid("Action", "write")?,
            upstream: uid("Upstream", "upstream")?,
            logs,
        })
    }

    /// The caller, when its token is good and the policies let it `method` `path`; the
    /// status to answer with otherwise. The decision is audited.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        method: &http::Method,
        path: &str,
    ) -> Result<Arc<Caller>, StatusCode> {
        let caller = self.caller(headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let read = matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        let allow = self.allows(&caller, read, path).unwrap_or(false);
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut logs = lock(&self.logs);
        let Logs {
            audit,
            seq,
            prev,
            line,
            ..
        } = &mut *logs;
        line.clear();
        let mut prev_hex = [0u8; 64];
        let _ = serde_json::to_writer(
            &mut *line,
            &AuditLine {
                seq: *seq,
                prev: base16ct::lower::encode_str(&prev[..], &mut prev_hex).unwrap_or(""),
                time,
                principal: &caller.sub,
                action: method.as_str(),
                path,
                decision: if allow { "allow" } else { "deny" },
            },
        );
        line.push(b'\n');
        prev.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line).as_ref());
        *seq += 1;
        let _ = audit.write_all(line);
        drop(logs);
        if allow {
            Ok(caller)
        } else {
            Err(StatusCode::FORBIDDEN)
        }
    }

    /// Records an answer.
    pub fn answered(&self, caller: Option<&Caller>, path: &str, status: StatusCode) {
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut logs = lock(&self.logs);
        let Logs { access, line, .. } = &mut *logs;
        line.clear();
        let _ = serde_json::to_writer(
            &mut *line,
            &AccessLine {
                time,
                principal: caller.map(|c| c.sub.as_str()),
                path,
                status: status.as_u16(),
            },
        );
        line.push(b'\n');
        let _ = access.write_all(line);
    }

    fn caller(&self, headers: &HeaderMap) -> Option<Arc<Caller>> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let cached = lock(&self.cache).get(token).cloned();
        if let Some(c) = cached {
            return (c.exp > now).then_some(c);
        }
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let claims = jsonwebtoken::decode::<Claims>(token, self.keys.get(&kid)?, &self.validation)
            .ok()?
            .claims;
        let principal = uid("User", &claims.sub).ok()?;
        let mut attrs = HashMap::new();
        if let Some(t) = &claims.tenant {
            attrs.insert(
                "tenant".to_owned(),
                RestrictedExpression::new_string(t.clone()),
            );
        }
        let groups: Vec<EntityUid> = claims
            .groups
            .iter()
            .filter_map(|g| uid("Group", g).ok())
            .collect();
        let mut entities = vec![
            Entity::new(
                principal.clone(),
                attrs,
                groups.iter().cloned().collect::<HashSet<_>>(),
            )
            .ok()?,
        ];
        entities.extend(groups.into_iter().map(Entity::with_uid));
        let caller = Arc::new(Caller {
            sub: claims.sub,
            exp: claims.exp,
            principal,
            entities,
            decisions: Mutex::new(HashMap::new()),
        });
        lock(&self.cache).insert(token.to_owned(), caller.clone());
        (caller.exp > now).then_some(caller)
    }

    fn allows(&self, caller: &Caller, read: bool, path: &str) -> Option<bool> {
        let route = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let known = lock(&caller.decisions)
            .get(route)
            .and_then(|d| d[usize::from(read)]);
        if known.is_some() {
            return known;
        }
        let resource = uid("Route", route).ok()?;
        let mut all = caller.entities.clone();
        all.push(
            Entity::new(
                resource.clone(),
                HashMap::new(),
                HashSet::from([self.upstream.clone()]),
            )
            .ok()?,
        );
        all.push(Entity::with_uid(self.upstream.clone()));
        let entities = Entities::from_entities(all, None).ok()?;
        let action = if read { &self.read } else { &self.write };
        let request = Request::new(
            caller.principal.clone(),
            action.clone(),
            resource,
            Context::empty(),
            None,
        )
        .ok()?;
        let allow = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities)
            .decision()
            == Decision::Allow;
        lock(&caller.decisions).entry(route.to_owned()).or_default()[usize::from(read)] =
            Some(allow);
        Some(allow)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?,
    ))
}

#[derive(serde::Serialize)]
struct AuditLine<'a> {
    seq: u64,
    prev: &'a str,
    time: String,
    principal: &'a str,
    action: &'a str,
    path: &'a str,
    decision: &'static str,
}

#[derive(serde::Serialize)]
struct AccessLine<'a> {
    time: String,
    principal: Option<&'a str>,
    path: &'a str,
    status: u16,
}
