//! The demo's OpenID provider: just enough of one for `drawbridge demo` to show a person
//! signing in (discovery, a sign-in form, the authorization code flow with PKCE, ID and
//! refresh tokens, logout). It serves the demo on a loopback port and nothing else: no
//! consent, no sessions of its own, users and passwords made at start and printed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use super::idp::{Idp, now};

/// The client the demo registers Drawbridge as.
pub const CLIENT_ID: &str = "drawbridge-demo";

/// A person who can sign in.
pub struct User {
    pub name: &'static str,
    pub password: String,
    pub email: &'static str,
    pub groups: &'static [&'static str],
    pub tenant: &'static str,
}

/// What a code stands for until the token endpoint takes it.
struct Grant {
    user: usize,
    nonce: String,
    challenge: String,
    redirect_uri: String,
    expires: i64,
}

struct Provider {
    issuer: String,
    idp: Idp,
    secret: String,
    redirect_uris: Vec<String>,
    users: Vec<User>,
    codes: Mutex<HashMap<String, Grant>>,
    refresh: Mutex<HashMap<String, usize>>,
}

/// Starts the provider on a free loopback port; its issuer URL.
pub async fn start(
    secret: String,
    redirect_uris: Vec<String>,
    users: Vec<User>,
) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo identity provider: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let issuer = format!("http://{addr}");
    let provider = Arc::new(Provider {
        issuer: issuer.clone(),
        idp: Idp::generate("demo-sso-1")?,
        secret,
        redirect_uris,
        users,
        codes: Mutex::new(HashMap::new()),
        refresh: Mutex::new(HashMap::new()),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let p = provider.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let p = p.clone();
                    async move { Ok::<_, Infallible>(p.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(issuer)
}

/// 192 random bits, base64url; `None` when the system's random source fails (the request
/// is then refused rather than given a code or token anyone could guess).
fn random() -> Option<String> {
    let mut b = [0u8; 24];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn respond(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        json!({ "error": error }).to_string(),
    )
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::FOUND, "text/plain", String::new());
    if let Ok(v) = http::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn params(q: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(q).into_owned().collect()
}

impl Provider {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
        };
        let query = params(parts.uri.query().unwrap_or_default().as_bytes());
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/.well-known/openid-configuration") => self.discovery(),
            (&Method::GET, "/jwks") => respond(
                StatusCode::OK,
                "application/json",
                self.idp.jwks().to_string(),
            ),
            (&Method::GET, "/authorize") => self.sign_in_form(&query, None),
            (&Method::POST, "/authorize") => self.sign_in(&params(&body)),
            (&Method::POST, "/token") => self.token(&parts.headers, &params(&body)),
            (&Method::GET, "/logout") => self.logout(&query),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    fn discovery(&self) -> Response<Full<Bytes>> {
        let i = &self.issuer;
        let doc = json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "end_session_endpoint": format!("{i}/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["openid", "email", "profile", "groups"],
        });
        respond(StatusCode::OK, "application/json", doc.to_string())
    }

    /// The authorization request's parameters, checked: our client, a registered redirect
    /// URI, the code flow with PKCE S256.
    fn authorization<'a>(&self, q: &'a HashMap<String, String>) -> Result<&'a str, &'static str> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        if get("client_id") != CLIENT_ID {
            return Err("unknown client");
        }
        let redirect = get("redirect_uri");
        if !self.redirect_uris.iter().any(|r| r == redirect) {
            return Err("redirect_uri not registered");
        }
        if get("response_type") != "code"
            || get("code_challenge_method") != "S256"
            || get("code_challenge").is_empty()
            || !get("scope").split(' ').any(|s| s == "openid")
        {
            return Err("only the code flow with PKCE S256 and the openid scope");
        }
        Ok(redirect)
    }

    fn sign_in_form(
        &self,
        q: &HashMap<String, String>,
        error: Option<&str>,
    ) -> Response<Full<Bytes>> {
        if let Err(e) = self.authorization(q) {
            return respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
        }
        let hidden: String = [
            "client_id",
            "redirect_uri",
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        ]
        .iter()
        .map(|k| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(q.get(*k).map(String::as_str).unwrap_or_default())
            )
        })
        .collect();
        let error = error
            .map(|e| format!("<p role=\"alert\">{}</p>", escape(e)))
            .unwrap_or_default();
        let page = format!(
            r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Demo identity provider</title></head>
<body style="font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:1rem">
<h1>Demo identity provider</h1><p>Sign in with a user the demo printed.</p>{error}
<form method="post" action="/authorize">{hidden}
<p><label>User <input name="login" autocomplete="username" required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Sign in</button></p></form></body></html>"#
        );
        let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", page);
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http://127.0.0.1:*; frame-ancestors 'none'",
            ),
        );
        r
    }

    fn sign_in(&self, form: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let redirect_uri = match self.authorization(form) {
            Ok(r) => r.to_string(),
            Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        };
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let user = self.users.iter().position(|u| {
            u.name == get("login")
                && drawbridge_config::constant_time_eq(
                    u.password.as_bytes(),
                    get("password").as_bytes(),
                )
        });
        let Some(user) = user else {
            return self.sign_in_form(form, Some("Wrong user or password."));
        };
        let Some(code) = random() else {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
        };
        if let Ok(mut codes) = self.codes.lock() {
            codes.retain(|_, g| g.expires > now());
            codes.insert(
                code.clone(),
                Grant {
                    user,
                    nonce: get("nonce"),
                    challenge: get("code_challenge"),
                    redirect_uri: redirect_uri.clone(),
                    expires: now() + 60,
                },
            );
        }
        let mut to = match url::Url::parse(&redirect_uri) {
            Ok(u) => u,
            Err(_) => return respond(StatusCode::BAD_REQUEST, "text/plain", String::new()),
        };
        to.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &get("state"))
            .append_pair("iss", &self.issuer);
        redirect(to.as_str())
    }

    fn token(
        &self,
        headers: &http::HeaderMap,
        form: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        // client_secret_basic.
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{}", self.secret))
        );
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !drawbridge_config::constant_time_eq(presented, expected.as_bytes()) {
            return json_error(StatusCode::UNAUTHORIZED, "invalid_client");
        }
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        let (user, nonce) = match get("grant_type") {
            "authorization_code" => {
                let grant = self
                    .codes
                    .lock()
                    .ok()
                    .and_then(|mut c| c.remove(get("code")));
                let Some(g) = grant.filter(|g| g.expires > now()) else {
                    return json_error(StatusCode::BAD_REQUEST, "invalid_grant");
                };
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                    aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        get("code_verifier").as_bytes(),
                    ),
                );
                if challenge != g.challenge || get("redirect_uri") != g.redirect_uri {
                    return json_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
                (g.user, Some(g.nonce))
            }
            "refresh_token" => {
                let user = self
                    .refresh
                    .lock()
                    .ok()
                    .and_then(|r| r.get(get("refresh_token")).copied());
                let Some(user) = user else {
                    return json_error(StatusCode::BAD_REQUEST, "invalid_grant");
                };
                (user, None)
            }
            _ => return json_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        };
        let u = &self.users[user];
        let n = now();
        let mut claims = json!({
            "iss": self.issuer, "aud": CLIENT_ID, "sub": u.name, "iat": n, "exp": n + 600,
            "auth_time": n, "email": u.email, "email_verified": true, "name": u.name,
            "groups": u.groups, "tenant": u.tenant,
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        let id_token = match self.idp.sign(&claims) {
            Ok(t) => t,
            Err(_) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let (Some(refresh_token), Some(access_token)) = (random(), random()) else {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
        };
        if let Ok(mut r) = self.refresh.lock() {
            r.insert(refresh_token.clone(), user);
        }
        let body = json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": 600,
            "id_token": id_token, "refresh_token": refresh_token,
        });
        respond(StatusCode::OK, "application/json", body.to_string())
    }

    fn logout(&self, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let back = q
            .get("post_logout_redirect_uri")
            .cloned()
            .unwrap_or_default();
        let registered = self.redirect_uris.iter().any(|r| {
            r.strip_suffix("/.drawbridge/callback")
                .is_some_and(|origin| back == format!("{origin}/.drawbridge/signed_out"))
        });
        if registered {
            redirect(&back)
        } else {
            respond(StatusCode::OK, "text/plain", "signed out\n".into())
        }
    }
}
