//! The floor of the full access path: what checking and recording a request costs when done
//! the least way on the crates Drawbridge uses, so that the benchmark can tell Drawbridge's
//! own work on that path from the work the path itself asks for.
//!
//! A request needs a bearer token: verified once (jsonwebtoken, RS256 with the key the JWKS
//! file names, issuer and audience checked), then found by its bytes in a cache and its
//! expiry checked. The policies (cedar-policy) are asked once per caller, route and action
//! (`Action::"read"` for `GET`, `HEAD` and `OPTIONS`, `Action::"write"` for any other
//! method, on `Route::"<first segment>"` in `Upstream::"upstream"`; no context), and their
//! answer remembered: it cannot change while the caller, the route and the policies do not.
//! Every decision is an audit line (JSON, each line carrying the SHA-256 of the one before
//! it) and every answer an access line (JSON), written where they happen into 64 KiB
//! buffers that go to their files when full and every second (nginx's `buffer=` and
//! `flush=`): no hand-over to another thread. The lines say what Drawbridge's say (a request
//! id shared by the two, the configuration's version, the caller with its kind,
//! authenticator and groups, the route, the upstream, the client's address and port, the
//! policies that decided; the host, protocol, bytes and duration of the answer), so that the
//! floor hashes and writes as much as Drawbridge does for the same request. Nothing else: no
//! header rules, no metrics.

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
    /// `rs256:` and the subject, as the access line names a caller.
    named: String,
    groups: Vec<String>,
    exp: u64,
    principal: EntityUid,
    /// The caller and its groups; the route and its upstream are added per decision.
    entities: Vec<Entity>,
    /// Per route: whether the policies allow reading it, and writing it, and the policies
    /// that decided, once asked.
    decisions: Mutex<Map<[Option<Decided>; 2]>>,
}

/// The policies' answer for a caller, route and action.
type Decided = (bool, Arc<[String]>);

/// What a request asks, as its records name it.
pub struct Asked {
    id: String,
    method: http::Method,
    host: Option<String>,
    path: String,
    protocol: &'static str,
    client: Arc<str>,
}

impl Asked {
    /// The request's id (a per-process prefix and a count), its target and its client.
    pub fn of<B>(req: &http::Request<B>, client: &Arc<str>, gate: &Gate) -> Asked {
        let n = gate.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Asked {
            id: format!("{}{n:016x}", gate.id_prefix),
            method: req.method().clone(),
            host: req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned),
            path: req.uri().path().to_owned(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            client: client.clone(),
        }
    }
}

/// The two logs, and the audit chain's last link.
struct Logs {
    audit: std::io::BufWriter<std::fs::File>,
    access: std::io::BufWriter<std::fs::File>,
    seq: u64,
    prev: [u8; 32],
    line: Vec<u8>,
}

/// Per-request maps, keyed by route, with the hasher Drawbridge's caches use.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Verified tokens by their bytes, hashed as Drawbridge's token cache hashes them: the
/// length and the last 32 bytes (the signature's), compared whole.
type Tokens = HashMap<Box<[u8]>, Arc<Caller>, TailState>;

#[derive(Default)]
struct TailState(foldhash::fast::RandomState);

struct TailHasher(foldhash::fast::FoldHasher<'static>);

impl std::hash::BuildHasher for TailState {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

impl std::hash::Hasher for TailHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(&bytes[bytes.len().saturating_sub(32)..]);
    }
    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }
}

/// The checks and the logs of the full path.
pub struct Gate {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    cache: Mutex<Tokens>,
    policies: PolicySet,
    authorizer: Authorizer,
    read: EntityUid,
    write: EntityUid,
    upstream: EntityUid,
    logs: Arc<Mutex<Logs>>,
    /// Request ids: this prefix, then a count.
    id_prefix: String,
    ids: std::sync::atomic::AtomicU64,
    /// The policies' version, as Drawbridge's lines carry the configuration's.
    version: String,
    /// Where requests go, as the access line names it.
    upstream_url: String,
}

fn uid(kind: &str, id: &str) -> std::io::Result<EntityUid> {
    format!("{kind}::{}", serde_json::Value::from(id))
        .parse()
        .map_err(std::io::Error::other)
}

impl Gate {
    /// Keys from `jwks`, policies from `policies`, logs written to `dir`; tokens must be
    /// issued by `issuer` for the audience `bench`.
    pub fn new(
        jwks: &str,
        policies: &str,
        dir: &str,
        issuer: &str,
        upstream_url: String,
    ) -> std::io::Result<Self> {
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
        let text = std::fs::read_to_string(policies)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let mut hex = [0u8; 64];
        let version = base16ct::lower::encode_str(&digest.as_ref()[..16], &mut hex)
            .unwrap_or("")
            .to_owned();
        let mut prefix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| std::io::Error::other("no randomness"))?;
        let mut hex = [0u8; 16];
        let id_prefix = base16ct::lower::encode_str(&prefix, &mut hex)
            .unwrap_or("")
            .to_owned();
        let policies: PolicySet = text.parse().map_err(std::io::Error::other)?;
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
            cache: Mutex::new(Tokens::default()),
            policies,
            authorizer: Authorizer::new(),
            read: uid("Action", "read")?,
            write: uid("Action", "write")?,
            upstream: uid("Upstream", "upstream")?,
            logs,
            id_prefix,
            ids: std::sync::atomic::AtomicU64::new(0),
            version,
            upstream_url,
        })
    }

    /// The caller, when its token is good and the policies let it do what `asked` asks;
    /// the status to answer with otherwise. The decision is audited.
    pub fn admit(&self, headers: &HeaderMap, asked: &Asked) -> Result<Arc<Caller>, StatusCode> {
        let caller = self.caller(headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let read = matches!(
            asked.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        let route = route_of(&asked.path);
        let (allow, policies) = self
            .allows(&caller, read, route)
            .unwrap_or_else(|| (false, Arc::from([])));
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
                log: "audit",
                request_id: &asked.id,
                version: &self.version,
                principal: AuditPrincipal {
                    id: &caller.sub,
                    kind: "user",
                    authenticator: "rs256",
                    groups: &caller.groups,
                },
                action: asked.method.as_str(),
                resource: route,
                upstream: "upstream",
                path: &asked.path,
                client: &asked.client,
                decision: if allow { "allow" } else { "deny" },
                policies: &policies,
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

    /// Records an answer: `sent` body bytes, `started` when the request arrived.
    pub fn answered(
        &self,
        caller: Option<&Caller>,
        asked: &Asked,
        status: StatusCode,
        sent: u64,
        started: std::time::Instant,
    ) {
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let admitted = caller.is_some();
        let mut logs = lock(&self.logs);
        let Logs { access, line, .. } = &mut *logs;
        line.clear();
        let _ = serde_json::to_writer(
            &mut *line,
            &AccessLine {
                time,
                request_id: &asked.id,
                listener: "full",
                host: asked.host.as_deref(),
                route: admitted.then(|| route_of(&asked.path)),
                client: &asked.client,
                principal: caller.map(|c| c.named.as_str()),
                method: asked.method.as_str(),
                path: &asked.path,
                protocol: asked.protocol,
                status: status.as_u16(),
                bytes_sent: sent,
                upstream: admitted.then_some(self.upstream_url.as_str()),
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            },
        );
        line.push(b'\n');
        let _ = access.write_all(line);
    }

    fn caller(&self, headers: &HeaderMap) -> Option<Arc<Caller>> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .as_bytes()
            .strip_prefix(b"Bearer ")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let cached = lock(&self.cache).get(token).cloned();
        if let Some(c) = cached {
            return (c.exp > now).then_some(c);
        }
        let held = token;
        let token = std::str::from_utf8(token).ok()?;
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
            named: format!("rs256:{}", claims.sub),
            sub: claims.sub,
            groups: claims.groups,
            exp: claims.exp,
            principal,
            entities,
            decisions: Mutex::new(Map::default()),
        });
        lock(&self.cache).insert(held.into(), caller.clone());
        (caller.exp > now).then_some(caller)
    }

    fn allows(&self, caller: &Caller, read: bool, route: &str) -> Option<Decided> {
        let known = lock(&caller.decisions)
            .get(route)
            .and_then(|d| d[usize::from(read)].clone());
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
        let answer = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let decided: Decided = (
            answer.decision() == Decision::Allow,
            answer
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect(),
        );
        lock(&caller.decisions).entry(route.to_owned()).or_default()[usize::from(read)] =
            Some(decided.clone());
        Some(decided)
    }
}

/// The route a path names: its first segment.
fn route_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
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
    log: &'static str,
    request_id: &'a str,
    version: &'a str,
    principal: AuditPrincipal<'a>,
    action: &'a str,
    resource: &'a str,
    upstream: &'static str,
    path: &'a str,
    client: &'a str,
    decision: &'static str,
    policies: &'a [String],
}

#[derive(serde::Serialize)]
struct AuditPrincipal<'a> {
    id: &'a str,
    kind: &'static str,
    authenticator: &'static str,
    groups: &'a [String],
}

#[derive(serde::Serialize)]
struct AccessLine<'a> {
    time: String,
    request_id: &'a str,
    listener: &'static str,
    host: Option<&'a str>,
    route: Option<&'a str>,
    client: &'a str,
    principal: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_sent: u64,
    upstream: Option<&'a str>,
    duration_us: u64,
}
