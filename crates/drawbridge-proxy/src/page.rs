//! What Drawbridge's own pages share (`/.drawbridge/`: sign-in, second factors): one request
//! to a page ([`Page`]), answered as HTML under the pages' Content-Security-Policy or as a
//! redirect, its forms read from the same origin only, and the small readers of queries and
//! forms.

use bytes::Bytes;
use drawbridge_identity::{Authenticator, OidcAuthenticator};
use drawbridge_session::{Origin, Sessions, pages};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::context::Ctx;
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, Snapshot};

/// Largest form Drawbridge's own pages accept.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// The configuration's `oidc` authenticators, in order.
pub(crate) fn oidc(snapshot: &Snapshot) -> impl Iterator<Item = &OidcAuthenticator> {
    snapshot.authenticators.iter().filter_map(|a| match &**a {
        Authenticator::Oidc(o) => Some(o),
        _ => None,
    })
}

/// The origin the request came to: its host, and the port of its authority (HTTP/2's
/// `:authority`, an absolute target's) or of its `Host` header; 443 without.
pub(crate) fn origin(
    ctx: &Ctx,
    req: &Parts,
    listener: &ListenerEntry,
) -> Result<Origin, ProxyError> {
    let from_host = || {
        ctx.original_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .and_then(|a| a.port_u16())
    };
    let port = req
        .uri
        .authority()
        .and_then(|a| a.port_u16())
        .or_else(from_host)
        .unwrap_or(if listener.tls.is_some() { 443 } else { 80 });
    Origin::new(&ctx.host, port).map_err(|_| ProxyError::BadRequest("not a host name"))
}

pub(crate) fn only(method: &Method, allowed: &[Method]) -> Result<(), ProxyError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ProxyError::MethodNotAllowed(
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(query?.as_bytes()) {
        if k == name {
            if found.is_some() {
                // Named twice: neither is used.
                return None;
            }
            found = Some(v.into_owned());
        }
    }
    found
}

pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    let mut values = form.iter().filter(|(k, _)| k == name);
    match (values.next(), values.next()) {
        (Some((_, v)), None) => v,
        _ => "",
    }
}

/// One request to a page of Drawbridge's own.
pub(crate) struct Page<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) listener: &'a ListenerEntry,
    pub(crate) sessions: &'a Sessions,
    pub(crate) from: &'a Origin,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) request_id: &'a str,
}

impl Page<'_> {
    /// A page, with the headers every page has.
    pub(crate) fn html(&self, status: StatusCode, body: String) -> Response<ResponseBody> {
        let mut res = Response::new(ResponseBody::full(body));
        *res.status_mut() = status;
        let csp = pages::content_security_policy(&self.form_targets());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        secure_headers(h);
        res
    }

    /// Where a page's forms may lead after Drawbridge: the providers' origins.
    fn form_targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in oidc(self.snapshot) {
            if let Ok(u) = url::Url::parse(o.issuer()) {
                let origin = u.origin().ascii_serialization();
                if !out.contains(&origin) {
                    out.push(origin);
                }
            }
        }
        out
    }

    pub(crate) fn redirect(&self, location: &str) -> Result<Response<ResponseBody>, ProxyError> {
        let mut res = Response::new(ResponseBody::empty());
        *res.status_mut() = StatusCode::FOUND;
        let v = HeaderValue::from_str(location)
            .map_err(|_| ProxyError::BadRequest("invalid redirect"))?;
        res.headers_mut().insert(header::LOCATION, v);
        secure_headers(res.headers_mut());
        Ok(res)
    }

    /// A POST from a page of another origin is refused (with CSRF tokens besides).
    pub(crate) async fn form(&self, body: Incoming) -> Result<Vec<(String, String)>, ProxyError> {
        let bytes = self.body(body, MAX_FORM_BYTES).await?;
        Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
    }

    /// A JSON body posted by the pages' own script: same origin (sent by every browser on a
    /// `fetch` POST), `application/json` (never a form another site could submit), at most
    /// 64 KiB.
    pub(crate) async fn json(&self, body: Incoming) -> Result<serde_json::Value, ProxyError> {
        if self.headers.get(header::ORIGIN).is_none() {
            return Err(ProxyError::Csrf);
        }
        let json = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(ProxyError::BadRequest("expected application/json"));
        }
        let bytes = self.body(body, 64 * 1024).await?;
        serde_json::from_slice(&bytes).map_err(|_| ProxyError::BadRequest("malformed JSON"))
    }

    /// The body, from this origin only (with anti-forgery tokens besides).
    async fn body(&self, body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
        if let Some(o) = self.headers.get(header::ORIGIN)
            && o.as_bytes() != self.from.root().trim_end_matches('/').as_bytes()
        {
            return Err(ProxyError::Csrf);
        }
        Ok(Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| ProxyError::BodyTooLarge(limit as u64))?
            .to_bytes())
    }

    /// A JSON answer to the pages' script.
    pub(crate) fn json_answer(
        &self,
        status: StatusCode,
        v: &serde_json::Value,
    ) -> Response<ResponseBody> {
        let mut res = Response::new(ResponseBody::full(v.to_string()));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        secure_headers(res.headers_mut());
        res
    }
}

/// One of the pages' static files (their stylesheet, their script): `GET` or `HEAD`,
/// cached for an hour, never sniffed as another type.
pub(crate) fn asset(
    method: &Method,
    body: &'static str,
    content_type: &'static str,
) -> Result<Response<ResponseBody>, ProxyError> {
    only(method, &[Method::GET, Method::HEAD])?;
    let mut res = Response::new(ResponseBody::full(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}

/// What every page and redirect of Drawbridge's own carries: never cached, never framed,
/// no referrer.
pub(crate) fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}
