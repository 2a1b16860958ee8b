//! The rescue: the one place where a refusal or failure becomes an answer for the client's
//! protocol (an HTTP status, or a gRPC status for gRPC calls).

use drawbridge_config::MfaMethod;
use drawbridge_telemetry::Phase;
use http::{HeaderValue, Response, StatusCode, header};

use drawbridge_identity::AuthError;

use crate::body::ResponseBody;
use crate::sanitize::path::PathError;

/// Every way the pipeline can refuse or fail a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request target's path is ambiguous or malformed.
    #[error("rejected path: {0}")]
    Path(#[from] PathError),
    /// The request is malformed in another way.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A header that cannot be read one way only, or a name the listener refuses.
    #[error("rejected header: {0}")]
    Header(#[from] crate::sanitize::headers::HeaderError),
    /// The query string carries what the route does not let through.
    #[error("rejected query: {0}")]
    Query(#[from] crate::sanitize::params::QueryError),
    /// Framing that could be read two ways (request smuggling).
    #[error("ambiguous framing: {0}")]
    Framing(&'static str),
    /// The request target is longer than the listener allows.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// The request line and headers are larger than the listener allows.
    #[error("request line and headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The body is larger than the route allows.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client stopped sending its body (or sent it too slowly for the upstream's
    /// deadline): its fault, never the upstream's.
    #[error("request body not received in time ({0:?})")]
    BodyTimeout(std::time::Duration),
    /// No route takes this host and path.
    #[error("no route")]
    NoRoute,
    /// The host asked for is another virtual host than the TLS handshake's server name.
    #[error("host does not match the TLS server name")]
    Misdirected,
    /// A route takes this path but not this method.
    #[error("method not allowed")]
    MethodNotAllowed(String),
    /// The caller's credentials are missing, malformed or refused.
    #[error("authentication: {0}")]
    Unauthenticated(drawbridge_identity::AuthError, Schemes),
    /// The policies did not allow the request (the reason is for the audit trail and the
    /// access log, never for the client).
    #[error("forbidden: {0}")]
    Forbidden(Forbidden),
    /// The parts of the request the route's policies read cannot be read one way only.
    #[error("bad request: {0}")]
    PolicyInput(#[from] drawbridge_policy::BadRequest),
    /// Every endpoint is ejected.
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
    /// Every healthy endpoint is at its request cap.
    #[error("upstream at capacity")]
    UpstreamAtCapacity,
    /// The upstream could not be reached, reset the connection or answered malformed.
    #[error("upstream failed: {0}")]
    UpstreamFailed(#[from] UpstreamError),
    /// Drawbridge itself failed (signing an assertion): the request is refused, never sent
    /// without the identity it should carry.
    #[error("internal error: {0}")]
    Internal(#[from] drawbridge_identity::MintError),
    /// The upstream did not answer in time.
    #[error("upstream timed out after {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// A browser without a session on a route people sign in to: sent to sign in (this
    /// location) and back, never refused outright.
    #[error("no session: sent to sign in")]
    SignIn(String),
    /// The session store could not say whether the session exists: refused (fail closed).
    #[error("session store unavailable")]
    SessionUnavailable,
    /// A form of Drawbridge's own pages without its anti-forgery token, or posted from
    /// another origin.
    #[error("cross-site request refused")]
    Csrf,
    /// The caller must prove a second factor (or prove it again) first.
    #[error("second factor required: {}", .0.describe())]
    StepUp(Box<Challenge>),
    /// A browser that must prove a second factor: sent to do so (this location) and back.
    #[error("second factor required: sent to prove it")]
    ToMfa(String),
    /// `[audit] required`: the decision could not be written to the audit trail, so the
    /// request is refused rather than admitted unrecorded.
    #[error("audit trail unavailable: the decision could not be recorded")]
    AuditUnavailable,
    /// The client address, or the principal, is blocked for now.
    #[error("blocked: {0}")]
    Blocked(&'static str),
}

/// What a caller must prove before it is let through: one of `methods`, within `max_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The factors that would each do.
    pub methods: Vec<MfaMethod>,
    /// How lately, when said.
    pub max_age: Option<std::time::Duration>,
    /// The `acr` values the caller's token issuer would need to assert (those the route's
    /// authenticators trust); the methods' names when none do.
    pub acr_values: Vec<String>,
    /// The caller had such a factor, grown too old.
    pub stale: bool,
}

impl Challenge {
    /// In words, for logs.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        match self.max_age {
            Some(a) => format!("{} within {}s", names.join(" or "), a.as_secs()),
            None => names.join(" or "),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 9470 §3).
    pub fn www_authenticate(&self) -> String {
        let description = if self.stale {
            "a more recent second factor is required"
        } else {
            "a second factor is required"
        };
        let mut s = format!(
            "Bearer realm=\"drawbridge\", error=\"insufficient_user_authentication\", error_description=\"{description}\""
        );
        if !self.acr_values.is_empty() {
            s.push_str(&format!(", acr_values=\"{}\"", self.acr_values.join(" ")));
        }
        if let Some(a) = self.max_age {
            s.push_str(&format!(", max_age={}", a.as_secs()));
        }
        s
    }
}

/// Why the policies did not allow a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// No policy permits it.
    #[error("no policy permits the request")]
    NoPermit,
    /// A `forbid` applies (these policies).
    #[error("forbidden by {}", .0.join(", "))]
    By(Vec<String>),
    /// The policies could not be evaluated (these errors).
    #[error("policy evaluation failed: {}", .0.join("; "))]
    Evaluation(Vec<String>),
}

/// Why an upstream exchange failed, with its cause kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be had.
    #[error(transparent)]
    Connect(#[from] crate::transport::ConnectError),
    /// The exchange failed on the connection (reset, closed, malformed response).
    #[error("{}", chain(.0))]
    Exchange(#[source] hyper::Error),
    /// The response's length could be read two ways.
    #[error(
        "response framing is ambiguous (Transfer-Encoding with Content-Length, or several Content-Length values)"
    )]
    AmbiguousFraming,
    /// More interim (1xx) responses than allowed before the final one.
    #[error("more than {0} interim (1xx) responses")]
    InterimFlood(u32),
    /// A retry found nothing to send (cannot happen; kept total).
    #[error("no request to resend")]
    NothingToResend,
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

impl ProxyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Path(_)
            | Self::BadRequest(_)
            | Self::Header(_)
            | Self::Query(_)
            | Self::Framing(_)
            | Self::PolicyInput(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthenticated(AuthError::Malformed(_), _) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(..) => StatusCode::UNAUTHORIZED,
            Self::NoHealthyEndpoint | Self::UpstreamAtCapacity => StatusCode::SERVICE_UNAVAILABLE,
            // Out of descriptors here: the gateway is overloaded, the upstream is not at fault.
            Self::UpstreamFailed(UpstreamError::Connect(
                crate::transport::ConnectError::OutOfDescriptors(_),
            )) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::SignIn(_) | Self::ToMfa(_) => StatusCode::FOUND,
            Self::StepUp(_) => StatusCode::UNAUTHORIZED,
            Self::SessionUnavailable | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Csrf | Self::Blocked(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status code for this error.
    pub fn grpc_status(&self) -> u16 {
        match self {
            Self::Path(_) | Self::BadRequest(_) | Self::Header(_) | Self::Framing(_) => 13, // INTERNAL, as gRPC maps HTTP 400
            Self::Query(_) => 3, // INVALID_ARGUMENT
            Self::UriTooLong(_) | Self::HeadersTooLarge(_) | Self::BodyTooLarge(_) => 8, // RESOURCE_EXHAUSTED
            Self::NoRoute | Self::MethodNotAllowed(_) => 12, // UNIMPLEMENTED
            Self::Misdirected => 14, // UNAVAILABLE: retry on a connection for that host
            Self::Unauthenticated(..) => 16, // UNAUTHENTICATED
            Self::Forbidden(_) => 7, // PERMISSION_DENIED
            Self::PolicyInput(_) => 3, // INVALID_ARGUMENT
            Self::NoHealthyEndpoint | Self::UpstreamAtCapacity | Self::UpstreamFailed(_) => 14, // UNAVAILABLE
            Self::UpstreamTimeout(_) | Self::BodyTimeout(_) => 4, // DEADLINE_EXCEEDED
            Self::Internal(_) => 13,                              // INTERNAL
            Self::SignIn(_) | Self::ToMfa(_) | Self::StepUp(_) => 16, // UNAUTHENTICATED
            Self::SessionUnavailable | Self::AuditUnavailable => 14, // UNAVAILABLE
            Self::Csrf | Self::Blocked(_) => 7,                   // PERMISSION_DENIED
        }
    }

    /// The pipeline phase the error belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            Self::UriTooLong(_)
            | Self::HeadersTooLarge(_)
            | Self::BodyTooLarge(_)
            | Self::BodyTimeout(_)
            | Self::BadRequest(_) => Phase::Parse,
            Self::Path(_) | Self::Framing(_) | Self::Header(_) | Self::Query(_) => Phase::Sanitize,
            Self::NoRoute | Self::MethodNotAllowed(_) | Self::Misdirected => Phase::Route,
            Self::Unauthenticated(..) | Self::SignIn(_) | Self::SessionUnavailable => {
                Phase::Authenticate
            }
            Self::Csrf => Phase::Sanitize,
            Self::StepUp(_) | Self::ToMfa(_) => Phase::Verify,
            Self::Forbidden(_) | Self::PolicyInput(_) => Phase::Authorize,
            Self::NoHealthyEndpoint
            | Self::UpstreamAtCapacity
            | Self::UpstreamFailed(_)
            | Self::UpstreamTimeout(_) => Phase::Forward,
            Self::Internal(_) => Phase::Mutate,
            Self::AuditUnavailable => Phase::Record,
            Self::Blocked(_) => Phase::Block,
        }
    }

    /// Whether the connection must close after the answer: after a malformed request or an
    /// unread body, what follows on the connection cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::Framing(_)
                | Self::BodyTooLarge(_)
                | Self::BodyTimeout(_)
                | Self::Path(_)
                | Self::BadRequest(_)
                | Self::UriTooLong(_)
                | Self::HeadersTooLarge(_)
        )
    }

    /// What the client is told: the status's reason, never internal details (nor which
    /// policy refused it).
    fn public_message(&self) -> std::borrow::Cow<'static, str> {
        if let Self::PolicyInput(e) = self {
            return e.to_string().into();
        }
        let m: &'static str = match self {
            Self::Path(_) => "ambiguous or malformed path",
            Self::Header(_) => "malformed or refused header",
            Self::Query(crate::sanitize::params::QueryError::Credential(_)) => {
                "credentials are not accepted as request parameters"
            }
            Self::Query(crate::sanitize::params::QueryError::MethodOverride(_)) => {
                "method overrides are not accepted"
            }
            Self::Query(_) => "malformed query",
            Self::BadRequest(m) | Self::Framing(m) => m,
            Self::UriTooLong(_) => "request target too long",
            Self::HeadersTooLarge(_) => "request headers too large",
            Self::BodyTooLarge(_) => "request body too large",
            Self::BodyTimeout(_) => "request body not received in time",
            Self::NoRoute => "not found",
            Self::Misdirected => "misdirected request",
            Self::MethodNotAllowed(_) => "method not allowed",
            Self::Unauthenticated(AuthError::Missing, _) => "authentication required",
            Self::Unauthenticated(AuthError::Malformed(_), _) => "malformed credentials",
            Self::Unauthenticated(AuthError::Invalid(_), _) => "invalid credentials",
            Self::NoHealthyEndpoint | Self::UpstreamAtCapacity => "service unavailable",
            Self::UpstreamFailed(_) => "bad gateway",
            Self::UpstreamTimeout(_) => "gateway timeout",
            Self::Internal(_) => "internal error",
            Self::Forbidden(_) => "forbidden",
            Self::PolicyInput(_) => "bad request",
            Self::SignIn(_) => "sign in required",
            Self::StepUp(_) | Self::ToMfa(_) => "a second factor is required",
            Self::SessionUnavailable | Self::AuditUnavailable => "service unavailable",
            Self::Csrf | Self::Blocked(_) => "forbidden",
        };
        m.into()
    }
}

/// Turns `err` into a response for the client's protocol.
pub fn respond(err: &ProxyError, grpc: bool, request_id: &str) -> Response<ResponseBody> {
    let mut res = if grpc {
        // A trailers-only gRPC response: HTTP 200, status in the headers.
        let mut res = Response::new(ResponseBody::empty());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(err.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&err.public_message()) {
            h.insert("grpc-message", v);
        }
        if let ProxyError::StepUp(c) = err
            && let Ok(v) = HeaderValue::from_str(&c.www_authenticate())
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        res
    } else {
        let status = err.status();
        let text = format!(
            "{} {}\nrequest id: {request_id}\n",
            status.as_u16(),
            err.public_message()
        );
        let mut res = Response::new(ResponseBody::full(text));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ProxyError::MethodNotAllowed(allow) = err
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            h.insert(header::ALLOW, v);
        }
        if let ProxyError::SignIn(location) | ProxyError::ToMfa(location) = err
            && let Ok(v) = HeaderValue::from_str(location)
        {
            h.insert(header::LOCATION, v);
        }
        if let ProxyError::StepUp(c) = err
            && let Ok(v) = HeaderValue::from_str(&c.www_authenticate())
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if let ProxyError::Unauthenticated(e, schemes) = err {
            for c in challenges(e, *schemes) {
                h.append(header::WWW_AUTHENTICATE, c);
            }
        }
        res
    };
    if err.closes_connection() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// The schemes a refused request is challenged with: those of the route's authenticators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schemes {
    /// Bearer tokens (RFC 6750).
    pub bearer: bool,
    /// API keys.
    pub api_key: bool,
}

impl Schemes {
    /// The schemes of `authenticators`.
    pub fn of(authenticators: &[std::sync::Arc<drawbridge_identity::Authenticator>]) -> Self {
        let mut s = Schemes::default();
        for a in authenticators {
            match a.scheme() {
                Some(drawbridge_identity::Scheme::Bearer) => s.bearer = true,
                Some(drawbridge_identity::Scheme::ApiKey) => s.api_key = true,
                None => {}
            }
        }
        s
    }
}

/// One challenge per scheme the route accepts (RFC 9110 §11.6.1). Which check failed is
/// never said, only whether credentials were missing, malformed or not accepted.
fn challenges(e: &AuthError, schemes: Schemes) -> Vec<HeaderValue> {
    let detail = match e {
        AuthError::Missing => "",
        AuthError::Malformed(_) => {
            ", error=\"invalid_request\", error_description=\"malformed credentials\""
        }
        AuthError::Invalid(_) => {
            ", error=\"invalid_token\", error_description=\"the credentials are not valid\""
        }
    };
    let mut out = Vec::new();
    if schemes.bearer {
        out.push(format!("Bearer realm=\"drawbridge\"{detail}"));
    }
    if schemes.api_key {
        out.push(format!("ApiKey realm=\"drawbridge\"{detail}"));
    }
    out.into_iter()
        .filter_map(|c| HeaderValue::from_str(&c).ok())
        .collect()
}
