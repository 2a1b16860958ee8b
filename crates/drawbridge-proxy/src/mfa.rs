//! The second-factor pages under `/.drawbridge/mfa`, and what a browser gets when a request
//! needs a factor it has not proved lately. (Whether a request needs one is phase 6,
//! `verify.rs`; the factors' rules are `drawbridge-mfa`'s.)
//!
//! ```text
//! GET  /.drawbridge/mfa/verify?rd=TARGET  the code form (or a way to enrol)
//! POST /.drawbridge/mfa/verify            code, rd, csrf -> the factor in the session, to TARGET
//! GET  /.drawbridge/mfa/enrol?rd=TARGET   a new TOTP key as a QR code
//! POST /.drawbridge/mfa/enrol             code, rd, csrf -> enrolled; recovery codes, once
//! GET  /.drawbridge/mfa                   the account's factors
//! POST /.drawbridge/mfa/remove            csrf -> removed
//! GET  /.drawbridge/mfa/webauthn.js       the pages' WebAuthn script
//! POST /.drawbridge/mfa/webauthn/register/options, /register   a security key or passkey
//! POST /.drawbridge/mfa/webauthn/verify/options, /verify       an assertion with one
//! ```
//!
//! The WebAuthn endpoints take and answer JSON (`{csrf, rd, credential}` in, `{location}`
//! or `{error}` out), from the pages' own script only.
//!
//! Every page needs a session (else the person signs in first and comes back). Forms carry
//! the session's anti-forgery token and are refused from another origin. Replacing or
//! removing a factor needs one proved in the last five minutes.

use drawbridge_config::MfaMethod;
use drawbridge_mfa::pages::{
    self, ENROL_PATH, MANAGE_PATH, REMOVE_PATH, VERIFY_PATH, WEBAUTHN_PATH, WEBAUTHN_SCRIPT_PATH,
};
use drawbridge_mfa::{Account, Mfa, MfaError, RelyingParty};
use drawbridge_session::{SESSION_COOKIE, Session, cookies};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::context::Ctx;
use crate::page::{Page, field, query_value};
use crate::record::{About, Decisions};
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, Snapshot};

/// How lately a factor must have been proved to replace or remove one.
const FRESH: u64 = 5 * 60;

/// Answers a request for one of the second-factor pages.
pub(crate) async fn own(
    page: &Page<'_>,
    ctx: &Ctx,
    req: &Parts,
    body: Incoming,
    decisions: &Decisions<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(mfa) = page.snapshot.mfa.as_deref() else {
        return Err(ProxyError::NoRoute);
    };
    let path = ctx.path.decoded.as_str();
    if path == WEBAUTHN_SCRIPT_PATH {
        return crate::page::asset(
            &req.method,
            pages::WEBAUTHN_SCRIPT,
            "text/javascript; charset=utf-8",
        );
    }
    let here = req.uri.path_and_query().map_or(path, |pq| pq.as_str());
    let (cookie, session) = match signed_in(page).await? {
        Some(s) => s,
        None if req.method == Method::GET => {
            return page.redirect(&crate::session::sign_in_location(here));
        }
        None => return page.redirect(&crate::session::sign_in_location("/")),
    };
    let at = Pages {
        page,
        mfa,
        session: &session,
        cookie: &cookie,
        ctx,
        decisions,
    };
    let rd = || query_value(req.uri.query(), "rd").unwrap_or_else(|| "/".into());
    match (path, &req.method) {
        (VERIFY_PATH, &Method::GET) => at.verify_page(&rd(), false, None, StatusCode::OK).await,
        (VERIFY_PATH, &Method::POST) => {
            let form = at.form(body).await?;
            at.verify(field(&form, "code"), field(&form, "rd")).await
        }
        (ENROL_PATH, &Method::GET) => at.enrol_page(&rd(), None).await,
        (ENROL_PATH, &Method::POST) => {
            let form = at.form(body).await?;
            at.enrol(field(&form, "code"), field(&form, "rd")).await
        }
        (MANAGE_PATH, &Method::GET) => at.manage().await,
        (_, &Method::POST) if path.starts_with(WEBAUTHN_PATH) => {
            let body = page.json(body).await?;
            if !drawbridge_session::csrf_valid(&cookie, body["csrf"].as_str().unwrap_or_default()) {
                return Err(ProxyError::Csrf);
            }
            at.webauthn(&path[WEBAUTHN_PATH.len()..], &body).await
        }
        (REMOVE_PATH, &Method::POST) => {
            at.form(body).await?;
            at.remove().await
        }
        (VERIFY_PATH | ENROL_PATH, _) => Err(ProxyError::MethodNotAllowed("GET, POST".into())),
        (MANAGE_PATH, _) => Err(ProxyError::MethodNotAllowed("GET".into())),
        (REMOVE_PATH, _) => Err(ProxyError::MethodNotAllowed("POST".into())),
        _ if path.starts_with(WEBAUTHN_PATH) => Err(ProxyError::MethodNotAllowed("POST".into())),
        _ => Err(ProxyError::NoRoute),
    }
}

/// What a browser gets instead of the bare challenge when a request of a signed-in person
/// needs a factor: a page load is sent to prove it and come back; a form submission gets
/// the code form, and is sent back to the page it came from to submit again (its body is
/// never kept nor replayed). `None` for everything else (scripts, API clients, gRPC),
/// which get the RFC 9470 challenge.
pub async fn for_browser(
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    ctx: &Ctx,
    req: &Parts,
    challenge: &crate::rescue::Challenge,
) -> Option<Result<Response<ResponseBody>, ProxyError>> {
    let (Some(sessions), Some(mfa), Some(_)) = (&snapshot.sessions, &snapshot.mfa, &listener.tls)
    else {
        return None;
    };
    // Only the factors Drawbridge asks for itself have a page.
    if !challenge.methods.iter().any(|m| {
        matches!(
            m,
            MfaMethod::Totp | MfaMethod::Webauthn | MfaMethod::RecoveryCode
        )
    }) {
        return None;
    }
    let cookie = cookies::find(&req.headers, SESSION_COOKIE)?;
    if drawbridge_session::is_navigation(&req.method, &req.headers) {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let rd: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
        return Some(Err(ProxyError::ToMfa(format!("{VERIFY_PATH}?rd={rd}"))));
    }
    if !drawbridge_session::is_form_submission(&req.method, &req.headers) {
        return None;
    }
    let from = match crate::page::origin(ctx, req, listener) {
        Ok(o) => o,
        Err(e) => return Some(Err(e)),
    };
    let session = match sessions
        .lookup(cookie, from.host(), &snapshot.authenticators)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(_) => return Some(Err(ProxyError::SessionUnavailable)),
    };
    let page = Page {
        snapshot,
        listener,
        sessions,
        from: &from,
        headers: &req.headers,
        request_id: ctx.request_id(),
    };
    // Back to the page the form was on, when it is on this origin.
    let rd = req
        .headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .filter(|u| u.origin().ascii_serialization() == from.root().trim_end_matches('/'))
        .map_or_else(
            || "/".to_string(),
            |u| match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            },
        );
    let (enrolled, webauthn) = match (
        mfa.status(account(&session)).await,
        mfa.webauthn_keys(account(&session), from.host()).await,
    ) {
        (Ok(s), Ok(keys)) => (s.totp, keys > 0),
        _ => return Some(Err(ProxyError::SessionUnavailable)),
    };
    let csrf = drawbridge_session::csrf_token(cookie);
    let html = pages::verify(&pages::Ask {
        rd: &rd,
        csrf: &csrf,
        enrolled,
        webauthn,
        resend: true,
        error: None,
    });
    let mut res = page.html(StatusCode::UNAUTHORIZED, html);
    if let Ok(v) = HeaderValue::from_str(&challenge.www_authenticate()) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Some(Ok(res))
}

/// The session the request's cookie names on this host, with the cookie.
async fn signed_in(
    page: &Page<'_>,
) -> Result<Option<(String, std::sync::Arc<Session>)>, ProxyError> {
    let Some(cookie) = cookies::find(page.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let session = page
        .sessions
        .lookup(cookie, page.from.host(), &page.snapshot.authenticators)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "session lookup failed; refusing");
            ProxyError::SessionUnavailable
        })?;
    Ok(session.map(|s| (cookie.to_string(), s)))
}

fn account(session: &Session) -> Account<'_> {
    Account {
        authenticator: &session.record.authenticator,
        user: &session.record.user,
    }
}

/// One request to a second-factor page, by a signed-in person.
struct Pages<'a> {
    page: &'a Page<'a>,
    mfa: &'a Mfa,
    session: &'a Session,
    cookie: &'a str,
    ctx: &'a Ctx,
    decisions: &'a Decisions<'a>,
}

impl Pages<'_> {
    fn account(&self) -> Account<'_> {
        account(self.session)
    }

    /// A form of these pages: same origin, and the session's anti-forgery token.
    async fn form(&self, body: Incoming) -> Result<Vec<(String, String)>, ProxyError> {
        let form = self.page.form(body).await?;
        if !drawbridge_session::csrf_valid(self.cookie, field(&form, "csrf")) {
            return Err(ProxyError::Csrf);
        }
        Ok(form)
    }

    fn csrf(&self) -> String {
        drawbridge_session::csrf_token(self.cookie)
    }

    /// Where `rd` may lead: a page of a host Drawbridge serves, or this host's root.
    fn target(&self, rd: &str) -> String {
        self.page
            .sessions
            .served()
            .return_target(rd, self.page.from)
            .url
    }

    fn store_failed(&self, e: &MfaError) -> ProxyError {
        tracing::error!(request_id = self.ctx.request_id(), error = %e, "second factor store failed; refusing");
        ProxyError::SessionUnavailable
    }

    fn audit(
        &self,
        action: &'static str,
        method: Option<MfaMethod>,
        outcome: Result<(), &'static str>,
    ) {
        let client: std::sync::Arc<str> = self.ctx.client.to_string().into();
        crate::record::mfa_attempt(
            self.decisions,
            self.page.snapshot,
            &self.session.principal,
            &About {
                request_id: self.ctx.request_id(),
                time: self.ctx.time(),
                path: &self.ctx.path.decoded,
                client: &client,
                ip: self.ctx.client,
                trace_id: self.ctx.event.trace_id.as_deref(),
            },
            action,
            method,
            outcome,
        );
    }

    async fn verify_page(
        &self,
        rd: &str,
        resend: bool,
        error: Option<&str>,
        status: StatusCode,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let enrolled = self.enrolled().await?;
        let webauthn = self
            .mfa
            .webauthn_keys(self.account(), self.page.from.host())
            .await
            .map_err(|e| self.store_failed(&e))?
            > 0;
        let csrf = self.csrf();
        Ok(self.page.html(
            status,
            pages::verify(&pages::Ask {
                rd,
                csrf: &csrf,
                enrolled,
                webauthn,
                resend,
                error,
            }),
        ))
    }

    async fn verify(&self, code: &str, rd: &str) -> Result<Response<ResponseBody>, ProxyError> {
        match self.mfa.verify(self.account(), code).await {
            Ok(accepted) => {
                self.audit("mfa.verify", Some(accepted.factor.method), Ok(()));
                self.proved(accepted.factor, &self.target(rd)).await
            }
            Err(e) => self.refused("mfa.verify", e, rd).await,
        }
    }

    /// A factor proved: recorded in the session (which may move to a new id), then on to
    /// `location`.
    async fn proved(
        &self,
        factor: drawbridge_identity::Factor,
        location: &str,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let added = self
            .page
            .sessions
            .add_factor(self.cookie, factor)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "recording a second factor failed; refusing");
                ProxyError::SessionUnavailable
            })?;
        tracing::info!(
            request_id = self.ctx.request_id(),
            principal = %format!("{}:{}", self.session.record.authenticator, self.session.record.user),
            method = factor.method.as_str(),
            "second factor proved"
        );
        let mut res = self.page.redirect(location)?;
        if let Some(c) = added
            .and_then(|a| a.cookie)
            .and_then(|c| cookies::set(SESSION_COOKIE, &c, None))
        {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(res)
    }

    /// An attempt refused: audited, and the page again with why.
    async fn refused(
        &self,
        action: &'static str,
        e: MfaError,
        rd: &str,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        self.audit(action, None, Err(e.kind()));
        tracing::warn!(
            request_id = self.ctx.request_id(),
            principal = %format!("{}:{}", self.session.record.authenticator, self.session.record.user),
            reason = e.kind(),
            "second factor refused"
        );
        let (status, message) = self.refusal(&e)?;
        if action == "mfa.enrol" && !matches!(e, MfaError::Locked) {
            return self.enrol_page(rd, Some(&message)).await;
        }
        self.verify_page(rd, false, Some(&message), status).await
    }

    /// What a refused attempt answers: its status and words; a store failure refuses the
    /// request (503).
    fn refusal(&self, e: &MfaError) -> Result<(StatusCode, String), ProxyError> {
        let window = self.mfa.settings().failure_window.as_secs().div_ceil(60);
        Ok(match e {
            MfaError::Locked => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed attempts. Try again in {window} minutes."),
            ),
            MfaError::Wrong | MfaError::Replayed => (
                StatusCode::UNAUTHORIZED,
                "That did not work. Wait for the next code (or use your key again) and try again."
                    .to_string(),
            ),
            MfaError::Cloned => (
                StatusCode::UNAUTHORIZED,
                "This security key was refused: its signature counter went back, as a copied key's would. Use another factor.".to_string(),
            ),
            MfaError::NotEnrolled => (
                StatusCode::UNAUTHORIZED,
                "There is nothing to confirm yet: set up a factor first.".to_string(),
            ),
            MfaError::Store(_) | MfaError::Secret(_) => return Err(self.store_failed(e)),
        })
    }

    /// Whether the person proved a factor in the last five minutes.
    fn fresh(&self) -> bool {
        let now = drawbridge_identity::unix_now();
        self.session
            .principal
            .factor_at(
                &[
                    MfaMethod::Totp,
                    MfaMethod::RecoveryCode,
                    MfaMethod::Webauthn,
                ],
                now,
            )
            .is_some_and(|at| now.saturating_sub(at) <= FRESH)
    }

    /// Sends the person to prove a factor, then back to `here`.
    fn prove_first(&self, here: &str) -> Result<Response<ResponseBody>, ProxyError> {
        let rd: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
        self.page.redirect(&format!("{VERIFY_PATH}?rd={rd}"))
    }

    /// Whether the person has an authenticator app.
    async fn enrolled(&self) -> Result<bool, ProxyError> {
        Ok(self
            .mfa
            .status(self.account())
            .await
            .map_err(|e| self.store_failed(&e))?
            .totp)
    }

    /// Whether the person has any factor at all (an app, a key).
    async fn has_a_factor(&self) -> Result<bool, ProxyError> {
        let s = self
            .mfa
            .status(self.account())
            .await
            .map_err(|e| self.store_failed(&e))?;
        Ok(s.totp || s.webauthn > 0)
    }

    /// A WebAuthn ceremony's step (`/register/options`, `/register`, `/verify/options`,
    /// `/verify`), answered in JSON.
    async fn webauthn(
        &self,
        step: &str,
        body: &serde_json::Value,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let origin = self.page.from.root();
        let rp = RelyingParty {
            host: self.page.from.host(),
            origin: origin.trim_end_matches('/'),
        };
        let account = self.account();
        let label = self.label();
        let rd = body["rd"].as_str().unwrap_or("/");
        let credential = &body["credential"];
        // Adding a key to an account that has a factor needs a fresh one, as replacing does.
        if step.starts_with("/register") && self.has_a_factor().await? && !self.fresh() {
            return Ok(self.page.json_answer(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "confirm it's you first: use a factor you have"}),
            ));
        }
        let outcome = match step {
            "/register/options" => self.mfa.begin_registration(account, rp, label).await,
            "/verify/options" => self.mfa.begin_authentication(account, rp).await,
            "/register" | "/verify" => {
                let done = if step == "/register" {
                    self.mfa.finish_registration(account, rp, credential).await
                } else {
                    self.mfa
                        .finish_authentication(account, rp, credential)
                        .await
                };
                let action = if step == "/register" {
                    "mfa.enrol"
                } else {
                    "mfa.verify"
                };
                return match done {
                    Ok(accepted) => {
                        self.audit(action, Some(accepted.factor.method), Ok(()));
                        let target = self.target(rd);
                        let proved = self.proved(accepted.factor, &target).await?;
                        let mut res = self
                            .page
                            .json_answer(StatusCode::OK, &serde_json::json!({"location": target}));
                        for c in proved.headers().get_all(header::SET_COOKIE) {
                            res.headers_mut().append(header::SET_COOKIE, c.clone());
                        }
                        Ok(res)
                    }
                    Err(e) => {
                        self.audit(action, Some(MfaMethod::Webauthn), Err(e.kind()));
                        let (status, message) = self.refusal(&e)?;
                        Ok(self
                            .page
                            .json_answer(status, &serde_json::json!({"error": message})))
                    }
                };
            }
            _ => return Err(ProxyError::NoRoute),
        };
        match outcome {
            Ok(options) => Ok(self.page.json_answer(StatusCode::OK, &options)),
            Err(e) => {
                let (status, message) = self.refusal(&e)?;
                Ok(self
                    .page
                    .json_answer(status, &serde_json::json!({"error": message})))
            }
        }
    }

    /// The name a person's factors are shown under: their email, else their id.
    fn label(&self) -> &str {
        self.session
            .record
            .attributes
            .get("email")
            .and_then(|v| v.as_str())
            .unwrap_or(&self.session.record.user)
    }

    async fn enrol_page(
        &self,
        rd: &str,
        error: Option<&str>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if self.has_a_factor().await? && !self.fresh() {
            let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
            return self.prove_first(&format!("{ENROL_PATH}?rd={rd}"));
        }
        let label = self.label();
        let started = self
            .mfa
            .begin_totp(self.account(), label)
            .await
            .map_err(|e| self.store_failed(&e))?;
        let csrf = self.csrf();
        Ok(self.page.html(
            StatusCode::OK,
            pages::enrol(&pages::Enrol {
                qr_svg: &started.qr_svg,
                secret: &started.secret,
                uri: &started.uri,
                rd,
                csrf: &csrf,
                error,
            }),
        ))
    }

    async fn enrol(&self, code: &str, rd: &str) -> Result<Response<ResponseBody>, ProxyError> {
        if self.has_a_factor().await? && !self.fresh() {
            return Err(ProxyError::Forbidden(crate::rescue::Forbidden::NoPermit));
        }
        match self.mfa.confirm_totp(self.account(), code.trim()).await {
            Ok((accepted, codes)) => {
                self.audit("mfa.enrol", Some(MfaMethod::Totp), Ok(()));
                let target = self.target(rd);
                // The codes' page leads on; the factor is recorded in the session first.
                let proved = self.proved(accepted.factor, &target).await?;
                let listed: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                let mut res = self
                    .page
                    .html(StatusCode::OK, pages::recovery_codes(&listed, &target));
                for c in proved.headers().get_all(header::SET_COOKIE) {
                    res.headers_mut().append(header::SET_COOKIE, c.clone());
                }
                Ok(res)
            }
            Err(e) => self.refused("mfa.enrol", e, rd).await,
        }
    }

    async fn manage(&self) -> Result<Response<ResponseBody>, ProxyError> {
        let status = self
            .mfa
            .status(self.account())
            .await
            .map_err(|e| self.store_failed(&e))?;
        Ok(self
            .page
            .html(StatusCode::OK, pages::manage(&status, &self.csrf())))
    }

    async fn remove(&self) -> Result<Response<ResponseBody>, ProxyError> {
        if !self.fresh() {
            return self.prove_first(MANAGE_PATH);
        }
        self.mfa
            .remove(self.account())
            .await
            .map_err(|e| self.store_failed(&e))?;
        self.audit("mfa.remove", None, Ok(()));
        self.page.redirect(MANAGE_PATH)
    }
}
