//! `drawbridge test`: declarative cases (a request in, a decision out) run against the
//! configuration and its policies, exactly as `serve` would decide them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use drawbridge_identity::Simulated;
use drawbridge_proxy::admission::{Decided, Proof, Refused};
use drawbridge_proxy::context::{ConnInfo, Ctx};
use drawbridge_proxy::pipeline::Entry;
use drawbridge_proxy::rescue::ProxyError;
use drawbridge_proxy::snapshot::{RouteEntry, Snapshot};
use serde::Deserialize;
use toml::Spanned;

/// A test file: `[[cases]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cases: Vec<Spanned<Case>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    host: String,
    /// Path and query, as sent.
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    client_ip: Option<std::net::IpAddr>,
    /// RFC 3339.
    time: Option<String>,
    #[serde(default)]
    kind: Kind,
    listener: Option<String>,
    principal: Option<Caller>,
    expect: Expect,
    /// The ids of the policies that must decide, when given.
    policies: Option<Vec<String>>,
    /// What the shadow policies must say, when given.
    shadow: Option<Expect>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    Http,
    Grpc,
    Websocket,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Caller {
    authenticator: String,
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    key: Option<String>,
    id: Option<String>,
    /// Second factors the caller proved, each with its age (`totp = "2m"`).
    #[serde(default)]
    mfa: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
    Unchecked,
    BadRequest,
    Unauthenticated,
    NotFound,
    MethodNotAllowed,
    /// 401 asking for a second factor (the route's `mfa`, or a policy that one would
    /// satisfy).
    StepUp,
}

/// Runs every test file the configuration names; exit 1 on any failure.
pub fn run(config: &Path) -> ExitCode {
    let snapshot = match drawbridge_proxy::compile(config, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let files: Vec<PathBuf> = drawbridge_config::load(config)
        .ok()
        .and_then(|c| c.policy.map(|p| p.tests))
        .unwrap_or_default();
    if files.is_empty() {
        eprintln!(
            "error: {}: no test files: list them in `[policy] tests = [\"policy-tests.toml\"]`",
            config.display()
        );
        return ExitCode::FAILURE;
    }
    // Admission is async (authenticators may fetch keys); a simulated caller never waits.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", f.display());
                return ExitCode::FAILURE;
            }
        };
        let parsed: File = match toml::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                let line = e.span().map_or(0, |s| line_of(&text, s.start));
                eprintln!("error: {}:{line}: {}", f.display(), e.message().trim());
                return ExitCode::FAILURE;
            }
        };
        for case in &parsed.cases {
            let line = line_of(&text, case.span().start);
            let c = case.get_ref();
            match runtime.block_on(check(&snapshot, c)) {
                Ok(()) => {
                    passed += 1;
                    crate::out::say!("ok    {}:{line}  {}", f.display(), c.name);
                }
                Err(why) => {
                    failed += 1;
                    crate::out::say!("FAIL  {}:{line}  {}\n      {why}", f.display(), c.name);
                }
            }
        }
    }
    crate::out::say!(
        "\n{} cases: {passed} passed, {failed} failed (config version {})",
        passed + failed,
        snapshot.version
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one case; `Err` says how it failed.
async fn check(snapshot: &Snapshot, c: &Case) -> Result<(), String> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &c.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`{k}` is not a header name"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("header `{k}` has a value that cannot be sent"))?;
        headers.append(name, value);
    }
    let time = match &c.time {
        None => SystemTime::now(),
        Some(t) => humantime::parse_rfc3339(t).map_err(|e| format!("`time`: {e}"))?,
    };
    let factors = match &c.principal {
        None => Vec::new(),
        Some(p) => factors(&p.mfa, time)?,
    };
    let caller = match &c.principal {
        None => None,
        Some(p) => {
            let sim = match (&p.claims, &p.key, &p.id) {
                (Some(claims), None, None) => Simulated::Claims(claims),
                (None, Some(key), None) => Simulated::Key(key),
                (None, None, Some(id)) => Simulated::Id(id),
                _ => {
                    return Err(
                        "`principal` takes exactly one of `claims` (jwt), `key` (api_key) or `id` (mtls)"
                            .into(),
                    );
                }
            };
            Some((p.authenticator.as_str(), sim, factors.as_slice()))
        }
    };
    let outcome = decide(snapshot, c, headers, time, caller).await?;
    let (got, verdicts) = match &outcome {
        Outcome::Allowed(v) => (Expect::Allow, Some(v)),
        Outcome::Denied(v) => (Expect::Deny, Some(v)),
        Outcome::Unchecked => (Expect::Unchecked, None),
        Outcome::BadRequest(_) => (Expect::BadRequest, None),
        Outcome::Unauthenticated(_) => (Expect::Unauthenticated, None),
        Outcome::NotFound(_) => (Expect::NotFound, None),
        Outcome::MethodNotAllowed => (Expect::MethodNotAllowed, None),
        Outcome::StepUp(_, v) => (Expect::StepUp, v.as_ref()),
    };
    if got != c.expect {
        return Err(format!(
            "expected {}, got {}",
            word(c.expect),
            describe(&outcome)
        ));
    }
    if let Some(want) = &c.policies {
        let have = verdicts
            .map(|v| v.enforced.policies.clone())
            .unwrap_or_default();
        let mut want = want.clone();
        want.sort();
        if have != want {
            return Err(format!(
                "expected policies [{}], decided by [{}]",
                want.join(", "),
                have.join(", ")
            ));
        }
    }
    if let Some(want) = c.shadow {
        let have = verdicts.and_then(|v| v.shadow.as_ref());
        match have {
            None => return Err("expected a shadow verdict; no shadow policies are loaded".into()),
            Some(s)
                if (want == Expect::Allow) != s.allow
                    || !matches!(want, Expect::Allow | Expect::Deny) =>
            {
                return Err(format!(
                    "expected shadow {}, shadow says {}",
                    word(want),
                    if s.allow { "allow" } else { "deny" }
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn word(e: Expect) -> &'static str {
    match e {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
        Expect::Unchecked => "unchecked",
        Expect::BadRequest => "bad_request",
        Expect::Unauthenticated => "unauthenticated",
        Expect::NotFound => "not_found",
        Expect::MethodNotAllowed => "method_not_allowed",
        Expect::StepUp => "step_up",
    }
}

/// A case's `mfa = { totp = "2m" }`: factors proved that long before the case's time.
fn factors(
    ages: &BTreeMap<String, String>,
    time: SystemTime,
) -> Result<Vec<drawbridge_identity::Factor>, String> {
    let now = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ages.iter()
        .map(|(name, age)| {
            let method = drawbridge_config::MfaMethod::parse(name).ok_or_else(|| {
                format!(
                    "`mfa.{name}`: not a second factor (`totp`, `webauthn`, `recovery_code`, `idp`)"
                )
            })?;
            let age = humantime::parse_duration(age)
                .map_err(|e| format!("`mfa.{name}`: `{age}` is not a duration: {e}"))?;
            Ok(drawbridge_identity::Factor {
                method,
                at: now.saturating_sub(age.as_secs()),
            })
        })
        .collect()
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Allowed(v) => format!(
            "allow on route `{}` by [{}]",
            v.route,
            v.enforced.policies.join(", ")
        ),
        Outcome::Denied(v) if !v.enforced.errors.is_empty() => format!(
            "deny on route `{}`: {}",
            v.route,
            v.enforced.errors.join("; ")
        ),
        Outcome::Denied(v) if v.enforced.policies.is_empty() => {
            format!("deny on route `{}`: no policy permits it", v.route)
        }
        Outcome::Denied(v) => format!(
            "deny on route `{}`, forbidden by [{}]",
            v.route,
            v.enforced.policies.join(", ")
        ),
        Outcome::Unchecked => "unchecked (a public route, or `authorize = false`)".into(),
        Outcome::BadRequest(why) => format!("bad_request ({why})"),
        Outcome::Unauthenticated(why) => format!("unauthenticated ({why})"),
        Outcome::NotFound(why) => format!("not_found ({why})"),
        Outcome::MethodNotAllowed => "method_not_allowed".into(),
        Outcome::StepUp(why, _) => format!("step_up ({why})"),
    }
}

/// How the pipeline ended a case, up to and including the authorize phase.
#[derive(Debug)]
enum Outcome {
    /// The policies allow it.
    Allowed(Verdicts),
    /// The policies deny it.
    Denied(Verdicts),
    /// Admitted without policies: a public route, or one with `authorize = false`.
    Unchecked,
    /// 400: the target, the host, a header, the query or a credential cannot be read one way.
    BadRequest(String),
    /// 401: no credentials, or the route does not accept this caller.
    Unauthenticated(String),
    /// 404 (or 421, another virtual host than the listener's certificate serves).
    NotFound(String),
    /// 405.
    MethodNotAllowed,
    /// 401 asking for a second factor: what would do, and the policies' verdict when they
    /// were asked.
    StepUp(String, Option<Verdicts>),
}

/// The enforced and shadow verdicts, and the route that decided.
#[derive(Debug)]
struct Verdicts {
    route: String,
    enforced: drawbridge_policy::Verdict,
    shadow: Option<drawbridge_policy::Verdict>,
}

/// Decides the case's request exactly as `serve` would: the request is built as a client
/// would send it and runs the pipeline's own parse, sanitize and admission phases; only the
/// caller's proof is simulated (claims, a key's name or a certificate's id, signatures and
/// expiry aside).
async fn decide(
    snapshot: &Snapshot,
    c: &Case,
    headers: http::HeaderMap,
    time: SystemTime,
    caller: Option<(&str, Simulated<'_>, &[drawbridge_identity::Factor])>,
) -> Result<Outcome, String> {
    let index = match &c.listener {
        None => 0,
        Some(name) => snapshot
            .listeners
            .iter()
            .position(|l| &*l.name == name.as_str())
            .ok_or_else(|| format!("no listener is named `{name}`"))?,
    };
    let listener = snapshot
        .listeners
        .get(index)
        .ok_or("the configuration has no listener")?;
    let host = if c.host.is_empty() {
        "localhost"
    } else {
        &c.host
    };
    let mut req = http::Request::builder()
        .method(c.method.to_ascii_uppercase().as_str())
        .uri(&c.path);
    let h = req
        .headers_mut()
        .ok_or("`method` or `path` cannot be sent")?;
    *h = headers;
    if !h.contains_key(http::header::HOST) {
        h.insert(
            http::header::HOST,
            http::HeaderValue::from_str(host).map_err(|_| "`host` cannot be sent")?,
        );
    }
    match c.kind {
        Kind::Http => {}
        Kind::Grpc => {
            req = req.version(http::Version::HTTP_2);
            let h = req
                .headers_mut()
                .ok_or("`method` or `path` cannot be sent")?;
            h.entry(http::header::CONTENT_TYPE)
                .or_insert(http::HeaderValue::from_static("application/grpc"));
            h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        }
        Kind::Websocket => {
            let h = req
                .headers_mut()
                .ok_or("`method` or `path` cannot be sent")?;
            h.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            h.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
        }
    }
    let (mut parts, ()) = match req.body(()) {
        Ok(r) => r.into_parts(),
        Err(e) => {
            return Ok(Outcome::BadRequest(format!(
                "the request cannot be sent: {e}"
            )));
        }
    };
    let client = c
        .client_ip
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let tls = listener.tls.is_some();
    // Over TLS, a client names the host it wants in the handshake too.
    let sni = tls.then(|| Box::<str>::from(host.to_ascii_lowercase()));
    let conn = ConnInfo::new(
        index,
        std::net::SocketAddr::new(client, 0),
        tls,
        None,
        sni,
        Default::default(),
    );
    let mut ctx = Ctx::new(
        &conn,
        listener.name.clone(),
        drawbridge_telemetry::RequestId::default(),
        &parts.method,
        parts.version,
    );
    ctx.event.time = time;
    let entry = drawbridge_proxy::pipeline::admit(
        &mut ctx,
        snapshot,
        listener,
        conn.sni.as_deref(),
        &mut parts,
        Proof::Simulated(caller),
        None,
    )
    .await;
    let verdicts = |route: &RouteEntry, d: &Decided| Verdicts {
        route: route.name.to_string(),
        enforced: d.decision.enforced.clone(),
        shadow: d.decision.shadow.clone(),
    };
    Ok(match entry {
        Ok(Entry::Own) => Outcome::NotFound("a path Drawbridge answers itself".into()),
        Ok(Entry::Route { admitted, .. }) => match &admitted.decided {
            None => Outcome::Unchecked,
            Some(d) => Outcome::Allowed(verdicts(&admitted.route, d)),
        },
        Err(Refused {
            route: Some(route),
            decided: Some(d),
            error,
        }) => match error {
            ProxyError::PolicyInput(e) => Outcome::BadRequest(e.to_string()),
            ProxyError::StepUp(c) => {
                let asked = route.config.admission.authorizes();
                Outcome::StepUp(c.describe(), asked.then(|| verdicts(&route, &d)))
            }
            _ => Outcome::Denied(verdicts(&route, &d)),
        },
        Err(Refused { error, .. }) => match error.status().as_u16() {
            400 => Outcome::BadRequest(error.to_string()),
            401 => Outcome::Unauthenticated(error.to_string()),
            405 => Outcome::MethodNotAllowed,
            404 | 421 => Outcome::NotFound(error.to_string()),
            _ => Outcome::BadRequest(error.to_string()),
        },
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
