//! Drawbridge's own paths (`/.drawbridge/`): the sign-in page and the provider's callback,
//! the hand-over between hosts, sign-out, "who am I", the pages' stylesheet and the
//! identity assertion's keys. (The session a request carries is read in phase 5,
//! `session.rs`.)
//!
//! ```text
//! GET  /.drawbridge/sign_in?rd=TARGET  one provider: straight to it; several: the choice
//! POST /.drawbridge/sign_in            idp, rd, csrf (tied to the login cookie)
//! GET  /.drawbridge/callback           state, code, iss -> a new session, back to TARGET
//! GET  /.drawbridge/handover?code=     a central sign-in handed to this host (once, 1 min)
//! POST /.drawbridge/sign_out           csrf (tied to the session) -> ended here and at the IdP
//! GET  /.drawbridge/signed_out         the page after signing out
//! GET  /.drawbridge/whoami             who the session says the person is
//! GET  /.drawbridge/jwks.json          the identity assertion's public keys
//! GET  /.drawbridge/style.css          the pages' stylesheet
//! ```

use drawbridge_identity::{Authenticator, OidcAuthenticator};
use drawbridge_session::{
    CALLBACK_PATH, Callback, LOGIN_COOKIE, LOGIN_MAX_AGE, Origin, SESSION_COOKIE, SsoError,
    cookies, pages,
};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::context::Ctx;
use crate::page::{Page, field, oidc, only, origin, query_value};
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, Snapshot};

/// Answers a request for one of Drawbridge's own paths.
pub async fn own(
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    ctx: &Ctx,
    req: &Parts,
    body: Incoming,
    decisions: &crate::record::Decisions<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let path = ctx.path.decoded.as_str();
    match path {
        "/.drawbridge/jwks.json" => {
            only(&req.method, &[Method::GET, Method::HEAD])?;
            let mut res = Response::new(ResponseBody::full(snapshot.minter.jwks().clone()));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            return Ok(res);
        }
        pages::STYLESHEET_PATH => {
            return crate::page::asset(&req.method, pages::STYLESHEET, "text/css");
        }
        _ => {}
    }
    // The rest is signing in: on a TLS listener of a configuration with sessions.
    let (Some(sessions), Some(_)) = (&snapshot.sessions, &listener.tls) else {
        return Err(ProxyError::NoRoute);
    };
    let from = origin(ctx, req, listener)?;
    let page = Page {
        snapshot,
        listener,
        sessions,
        from: &from,
        headers: &req.headers,
        request_id: ctx.request_id(),
    };
    match (path, &req.method) {
        ("/.drawbridge/sign_in", &Method::GET) => {
            let rd = query_value(req.uri.query(), "rd").unwrap_or_else(|| "/".into());
            page.sign_in_page(&rd).await
        }
        ("/.drawbridge/sign_in", &Method::POST) => {
            let form = page.form(body).await?;
            let login = cookies::find(&req.headers, LOGIN_COOKIE);
            if !login.is_some_and(|c| drawbridge_session::csrf_valid(c, field(&form, "csrf"))) {
                return Err(ProxyError::Csrf);
            }
            let name = field(&form, "idp");
            let oidc = oidc(snapshot).find(|o| **o.name() == *name);
            match oidc {
                Some(o) => page.begin(o, field(&form, "rd")).await,
                None => Err(ProxyError::BadRequest("unknown identity provider")),
            }
        }
        ("/.drawbridge/sign_in", _) => Err(ProxyError::MethodNotAllowed("GET, POST".into())),
        (CALLBACK_PATH, &Method::GET) => page.callback(req.uri.query()).await,
        ("/.drawbridge/handover", &Method::GET) => {
            page.redeem(&query_value(req.uri.query(), "code").unwrap_or_default())
                .await
        }
        ("/.drawbridge/handover", _) => Err(ProxyError::MethodNotAllowed("GET".into())),
        (CALLBACK_PATH, _) => Err(ProxyError::MethodNotAllowed("GET".into())),
        ("/.drawbridge/sign_out", &Method::POST) => {
            let form = page.form(body).await?;
            page.sign_out(field(&form, "csrf")).await
        }
        ("/.drawbridge/sign_out", _) => Err(ProxyError::MethodNotAllowed("POST".into())),
        ("/.drawbridge/signed_out", &Method::GET) => {
            Ok(page.html(StatusCode::OK, pages::signed_out()))
        }
        ("/.drawbridge/whoami", &Method::GET) => page.whoami().await,
        ("/.drawbridge/signed_out" | "/.drawbridge/whoami", _) => {
            Err(ProxyError::MethodNotAllowed("GET".into()))
        }
        _ if drawbridge_config::prefix_matches(drawbridge_mfa::pages::MANAGE_PATH, path) => {
            crate::mfa::own(&page, ctx, req, body, decisions).await
        }
        _ => Err(ProxyError::NoRoute),
    }
}

impl Page<'_> {
    /// The providers a person may choose to reach `target`: those of the route that takes
    /// it (on this listener), or every one when no route people sign in to takes it.
    fn providers_for(&self, target: &str) -> Vec<&OidcAuthenticator> {
        let route = url::Url::parse(target).ok().and_then(|u| {
            let host = u.host_str()?.to_string();
            match self.listener.routes.lookup(&host, u.path(), "GET") {
                crate::route::Match::Found(r) if r.signs_in() => Some(r.clone()),
                _ => None,
            }
        });
        match route {
            Some(r) => r
                .authenticators
                .iter()
                .filter_map(|a| match &**a {
                    Authenticator::Oidc(o) => Some(o),
                    _ => None,
                })
                .filter_map(|o| oidc(self.snapshot).find(|x| x.name() == o.name()))
                .collect(),
            None => oidc(self.snapshot).collect(),
        }
    }

    /// The central sign-in origin, when every host signs in there.
    fn central(&self) -> Option<Origin> {
        let s = self.sessions.config().sign_in.as_ref()?;
        Origin::new(&s.host, s.port).ok()
    }

    /// Whether this request came to the central sign-in host (or every host signs in on
    /// itself).
    fn on_central(&self) -> bool {
        self.central()
            .is_none_or(|c| c.host() == self.from.host() && c.port() == self.from.port())
    }

    async fn sign_in_page(&self, rd: &str) -> Result<Response<ResponseBody>, ProxyError> {
        let target = self.sessions.served().return_target(rd, self.from).url;
        if let Some(central) = self.central().filter(|_| !self.on_central()) {
            // Every host signs in at the central one, which hands the sign-in back.
            let rd: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
            return self.redirect(&format!("{}.drawbridge/sign_in?rd={rd}", central.root()));
        }
        let providers = self.providers_for(&target);
        if self.central().is_some()
            && let Some(c) = cookies::find(self.headers, SESSION_COOKIE)
        {
            // Signed in here already: hand the sign-in to the host asked for.
            let session = self
                .sessions
                .lookup(c, self.from.host(), &self.snapshot.authenticators)
                .await
                .map_err(|_| ProxyError::SessionUnavailable)?;
            if let Some(session) = session
                && providers
                    .iter()
                    .any(|p| **p.name() == *session.record.authenticator)
            {
                return self.hand_over(&session, &target).await;
            }
        }
        if let [only] = providers[..] {
            return self.begin(only, rd).await;
        }
        // The anti-forgery token is tied to the login cookie, set here when missing.
        let (login, new) = match cookies::find(self.headers, LOGIN_COOKIE) {
            Some(c) if c.len() == 43 => (c.to_string(), false),
            _ => (
                drawbridge_session::SessionId::generate()
                    .map_err(|_| ProxyError::SessionUnavailable)?
                    .cookie()
                    .to_string(),
                true,
            ),
        };
        let choices: Vec<pages::Choice<'_>> = providers
            .iter()
            .map(|o| pages::Choice {
                name: o.name(),
                display_name: &o.config().display_name,
            })
            .collect();
        let mut res = self.html(
            StatusCode::OK,
            pages::sign_in(&choices, &target, &drawbridge_session::csrf_token(&login)),
        );
        if new && let Some(c) = cookies::set(LOGIN_COOKIE, &login, Some(LOGIN_MAX_AGE.as_secs())) {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(res)
    }

    async fn begin(
        &self,
        oidc: &OidcAuthenticator,
        rd: &str,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let login = cookies::find(self.headers, LOGIN_COOKIE);
        match self.sessions.begin(oidc, login, self.from, rd).await {
            Ok(begun) => {
                let mut res = self.redirect(&begun.location)?;
                if let Some(c) = begun
                    .login_cookie
                    .and_then(|c| cookies::set(LOGIN_COOKIE, &c, Some(LOGIN_MAX_AGE.as_secs())))
                {
                    res.headers_mut().append(header::SET_COOKIE, c);
                }
                Ok(res)
            }
            Err(e) => Ok(self.failed(&e)),
        }
    }

    async fn callback(&self, query: Option<&str>) -> Result<Response<ResponseBody>, ProxyError> {
        let values = ["state", "code", "iss", "error"].map(|n| query_value(query, n));
        let [state, code, iss, error] = &values;
        let callback = Callback {
            state: state.as_deref(),
            code: code.as_deref(),
            iss: iss.as_deref(),
            error: error.as_deref(),
        };
        let login = cookies::find(self.headers, LOGIN_COOKIE);
        match self
            .sessions
            .finish(&self.snapshot.authenticators, &callback, login)
            .await
        {
            Ok(done) if done.host == self.from.host() => {
                tracing::info!(
                    request_id = self.request_id,
                    principal = %format!("{}:{}", done.principal.authenticator, done.principal.id),
                    "signed in"
                );
                let mut res = if self.central().is_some() {
                    let session = self
                        .sessions
                        .lookup(
                            &done.session_cookie,
                            self.from.host(),
                            &self.snapshot.authenticators,
                        )
                        .await
                        .map_err(|_| ProxyError::SessionUnavailable)?
                        .ok_or(ProxyError::SessionUnavailable)?;
                    self.hand_over(&session, &done.location).await?
                } else {
                    self.redirect(&done.location)?
                };
                if let Some(c) = cookies::set(SESSION_COOKIE, &done.session_cookie, None) {
                    res.headers_mut().append(header::SET_COOKIE, c);
                }
                Ok(res)
            }
            Ok(done) => {
                // A sign-in started on another host than its callback's: refused.
                tracing::warn!(request_id = self.request_id, host = %done.host, "sign-in for another host refused");
                Ok(self.html(StatusCode::BAD_REQUEST, pages::failed(self.request_id)))
            }
            Err(e) => Ok(self.failed(&e)),
        }
    }

    /// Sends the browser to `target`: directly when it is on this host, through a
    /// hand-over code when it is on another.
    async fn hand_over(
        &self,
        session: &drawbridge_session::Session,
        target: &str,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Ok(url) = url::Url::parse(target) else {
            return self.redirect(&self.from.root());
        };
        let host = url.host_str().unwrap_or_default();
        if host == self.from.host() && url.port_or_known_default() == Some(self.from.port()) {
            return self.redirect(target);
        }
        match self.sessions.hand_over(session, host, target).await {
            Ok(code) => self.redirect(&format!(
                "{}/.drawbridge/handover?code={code}",
                url.origin().ascii_serialization()
            )),
            Err(e) => Ok(self.failed(&e)),
        }
    }

    async fn redeem(&self, code: &str) -> Result<Response<ResponseBody>, ProxyError> {
        match self
            .sessions
            .redeem(code, self.from.host(), &self.snapshot.authenticators)
            .await
        {
            Ok(done) => {
                let mut res = self.redirect(&done.location)?;
                if let Some(c) = cookies::set(SESSION_COOKIE, &done.session_cookie, None) {
                    res.headers_mut().append(header::SET_COOKIE, c);
                }
                Ok(res)
            }
            Err(e) => Ok(self.failed(&e)),
        }
    }

    /// A failed sign-in: a generic page for the person, the cause in the log.
    fn failed(&self, e: &SsoError) -> Response<ResponseBody> {
        let status = match e {
            SsoError::Store(_) | SsoError::Oidc(drawbridge_identity::OidcError::Fetch { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        tracing::warn!(request_id = self.request_id, error = %e, "sign-in failed");
        self.html(status, pages::failed(self.request_id))
    }

    async fn sign_out(&self, csrf: &str) -> Result<Response<ResponseBody>, ProxyError> {
        let Some(cookie) = cookies::find(self.headers, SESSION_COOKIE) else {
            return self.redirect("/.drawbridge/signed_out");
        };
        if !drawbridge_session::csrf_valid(cookie, csrf) {
            return Err(ProxyError::Csrf);
        }
        let ended = self.sessions.end(cookie).await.map_err(|e| {
            tracing::error!(error = %e, "ending a session failed");
            ProxyError::SessionUnavailable
        })?;
        let signed_out = format!(
            "{}/.drawbridge/signed_out",
            self.from.root().trim_end_matches('/')
        );
        let mut location = "/.drawbridge/signed_out".to_string();
        if let Some((record, id_token)) = ended {
            tracing::info!(request_id = self.request_id, principal = %format!("{}:{}", record.authenticator, record.user), "signed out");
            let provider = oidc(self.snapshot).find(|o| **o.name() == *record.authenticator);
            if let Some(o) = provider
                && let Ok(d) = o.discovered().await
                && let Some(url) = o.logout_url(&d, id_token.as_deref(), &signed_out)
            {
                location = url;
            }
        }
        let mut res = self.redirect(&location)?;
        res.headers_mut()
            .append(header::SET_COOKIE, cookies::clear(SESSION_COOKIE));
        Ok(res)
    }

    async fn whoami(&self) -> Result<Response<ResponseBody>, ProxyError> {
        let all = &self.snapshot.authenticators;
        let session = match cookies::find(self.headers, SESSION_COOKIE) {
            Some(c) => self
                .sessions
                .lookup(c, self.from.host(), all)
                .await
                .map_err(|_| ProxyError::SessionUnavailable)?,
            None => None,
        };
        let Some(s) = session else {
            return self.redirect("/.drawbridge/sign_in?rd=%2F.drawbridge%2Fwhoami");
        };
        let Some(cookie) = cookies::find(self.headers, SESSION_COOKIE) else {
            return Err(ProxyError::SessionUnavailable);
        };
        let r = &s.record;
        let time = |t: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        };
        let csrf = drawbridge_session::csrf_token(cookie);
        let w = pages::WhoAmI {
            user: &r.user,
            groups: &r.groups,
            email: r.attributes.get("email").and_then(|v| v.as_str()),
            authenticator: &r.authenticator,
            issuer: &r.issuer,
            signed_in: time(r.authenticated_at),
            expires: time(r.expires_at),
            handle: &s.handle,
            csrf: &csrf,
        };
        Ok(self.html(StatusCode::OK, pages::whoami(&w)))
    }
}
