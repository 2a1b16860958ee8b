//! The checked configuration: every value parsed, every reference resolved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Location;

/// A configuration that passed every check.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// A hash of the file's bytes and of the files it names (key sets, keys files), shown as
    /// the config version.
    pub version: String,
    /// Files the configuration reads besides itself (JWK Sets, API keys): a reload follows
    /// their changes too.
    pub files: Vec<PathBuf>,
    /// Process-wide settings.
    pub server: Server,
    /// Where Drawbridge accepts connections.
    pub listeners: Vec<Listener>,
    /// Where admitted requests go.
    pub upstreams: Vec<Upstream>,
    /// Which requests go where, and how they are admitted.
    pub routes: Vec<Route>,
    /// How callers prove who they are.
    pub authenticators: Vec<Authenticator>,
    /// The identity assertion Drawbridge signs for upstreams.
    pub identity: IdentityAssertion,
    /// The Cedar policies that authorize requests, when `[policy]` is present.
    pub policy: Option<PolicyConfig>,
    /// Drawbridge's own listener for health checks, when `[admin]` is present.
    pub admin: Option<Admin>,
    /// How the audit trail rotates, and whether requests wait on it (`[audit]`).
    pub audit: Audit,
    /// Detectors over the stream of decisions, and where their firings go (`[alerts]`).
    pub alerts: Alerts,
    /// OpenTelemetry traces, when `[tracing]` is present.
    pub tracing: Option<Tracing>,
    /// Where people's sessions are kept, when an `oidc` authenticator signs them in.
    pub sessions: Option<Sessions>,
    /// Second factors Drawbridge enrols and verifies itself (`[mfa]`); present whenever
    /// people sign in.
    pub mfa: Option<Mfa>,
    /// What `check` should tell the operator without refusing the file.
    pub warnings: Vec<crate::Diagnostic>,
}

/// `[admin]`: Drawbridge's own listener (`/healthz`, `/readyz`), apart from every route.
#[derive(Debug)]
pub struct Admin {
    /// Where it listens. Any address but loopback needs `authenticators`.
    pub address: SocketAddr,
    /// Who may use it (indices into `authenticators`): every path but `/healthz` and
    /// `/readyz` needs a caller one of them admits. Empty: loopback only, unauthenticated.
    pub authenticators: Vec<usize>,
    /// When not empty, the caller must be in one of these groups too.
    pub groups: Vec<String>,
    /// TLS for the admin listener (needed for `mtls` authenticators).
    pub tls: Option<Tls>,
    /// Where it was declared.
    pub location: Location,
}

/// `[tracing]`: a span per request, exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces address (`.../v1/traces`).
    pub endpoint: JwksUrl,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of traces started here that are recorded (0 to 1); a trusted caller's
    /// own decision is followed.
    pub sample_ratio: f64,
    /// Peers whose `traceparent` and `tracestate` are continued; any other caller's are
    /// replaced.
    pub trusted_sources: Vec<IpNet>,
}

/// `[alerts]`: detectors, and the webhook their firings are posted to.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    /// Where firings are posted, signed.
    pub webhook: Option<Webhook>,
    /// The detectors, in the order written.
    pub detectors: Vec<Detector>,
}

/// A webhook: a JSON body per firing, signed with HMAC-SHA256.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where: `https://`, or `http://` to a loopback address.
    pub url: JwksUrl,
    /// The HMAC key, from its file.
    pub secret: Secret,
}

/// One detector: `threshold` signals `on` one key (`by`) within `window` fire it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detector {
    /// Its name, in alerts and metrics.
    pub name: String,
    /// What it counts.
    pub on: Signal,
    /// What it counts per.
    pub by: AlertKey,
    /// How many within `window` fire it (for `principal_addresses`: distinct addresses).
    pub threshold: u64,
    /// The sliding window.
    pub window: Duration,
    /// Block the key for this long when it fires.
    pub block: Option<Duration>,
    /// Where it was declared.
    pub location: Location,
}

/// What a detector counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Credentials missing or refused (401).
    FailedAuthentication,
    /// Requests refused by authentication or policy (401 and 403).
    Denial,
    /// Wrong or refused second-factor attempts.
    MfaFailure,
    /// Client addresses one principal is seen from (distinct ones).
    PrincipalAddresses,
    /// Requests the shadow policies would refuse while the enforced ones allow them.
    ShadowDenial,
}

impl Signal {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::FailedAuthentication => "failed_authentication",
            Signal::Denial => "denial",
            Signal::MfaFailure => "mfa_failure",
            Signal::PrincipalAddresses => "principal_addresses",
            Signal::ShadowDenial => "shadow_denial",
        }
    }
}

/// What a detector counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKey {
    /// The client's address.
    Client,
    /// The principal (authenticator and id).
    Principal,
    /// The route.
    Route,
}

impl AlertKey {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKey::Client => "client",
            AlertKey::Principal => "principal",
            AlertKey::Route => "route",
        }
    }
}

/// `[audit]`: the audit trail's rotation, and whether it must be written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Start a new file once the current one holds this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Start a new file once the current one is this old.
    pub rotate_every: Option<Duration>,
    /// Refuse (503) requests whose decision cannot be written, instead of admitting them
    /// unrecorded.
    pub required: bool,
    /// A copy of every line to a syslog receiver.
    pub syslog: Option<SyslogTarget>,
}

/// Where syslog messages go (RFC 5424 over a datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A UDP receiver.
    Udp(SocketAddr),
    /// A local datagram socket (`/dev/log`).
    Unix(PathBuf),
}

/// `[policy]`: where the Cedar policies are and what the schema holds beyond its fixed part.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Policies that decide, in the order their files were named.
    pub enforce: Vec<PolicyFile>,
    /// Policies evaluated beside them whose verdict is only recorded (shadow mode).
    pub shadow: Vec<PolicyFile>,
    /// Test-case files `drawbridge test` runs.
    pub tests: Vec<PathBuf>,
    /// Principal attributes the policies may read, with their types.
    pub attributes: Vec<(String, ValueType)>,
    /// Authenticators whose principals and groups policies name without the authenticator
    /// (`User::\"alice\"` for `User::\"corp/alice\"`); several listed are declared
    /// equivalent: the same names mean the same callers.
    pub plain_names: Vec<String>,
    /// Where the `[policy]` table is.
    pub location: Location,
}

/// One `.cedar` file, read when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// The file, resolved against the config's directory.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// The Cedar type of a value Drawbridge hands policies (principal attributes, typed query
/// parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `String`.
    String,
    /// `Long`: a signed 64-bit integer.
    Long,
    /// `Bool`.
    Bool,
    /// `Set<String>`: a JSON array of strings, or one space-separated string (OAuth `scope`).
    StringSet,
}

impl ValueType {
    /// The name written in the config and in the Cedar schema.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "String",
            ValueType::Long => "Long",
            ValueType::Bool => "Bool",
            ValueType::StringSet => "Set<String>",
        }
    }
}

/// The signed identity Drawbridge hands upstreams on authenticated routes (`[identity]`).
#[derive(Debug, Clone)]
pub struct IdentityAssertion {
    /// `iss` of the assertions.
    pub issuer: String,
    /// Signature algorithm.
    pub algorithm: AssertionAlgorithm,
    /// The signing key's file and its PKCS#8 DER; a key is generated at start when `None`.
    pub key: Option<(PathBuf, Secret)>,
    /// How long an assertion is valid.
    pub lifetime: Duration,
    /// The request header that carries it, lower-case.
    pub header: String,
    /// Sign one assertion per request (with the request id in it) instead of reusing one
    /// per caller and upstream for up to half its lifetime.
    pub per_request: bool,
    /// Where the `[identity]` table is (the file's start when there is none).
    pub location: Location,
}

impl PartialEq for IdentityAssertion {
    /// Same settings, wherever in the file they were written.
    fn eq(&self, o: &Self) -> bool {
        self.issuer == o.issuer
            && self.algorithm == o.algorithm
            && self.key == o.key
            && self.lifetime == o.lifetime
            && self.header == o.header
            && self.per_request == o.per_request
    }
}

/// Algorithms Drawbridge signs assertions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

/// Process-wide settings (`[server]`).
#[derive(Debug, Clone)]
pub struct Server {
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is kept.
    pub trusted_proxies: Vec<IpNet>,
    /// Where access-log lines go.
    pub access_log: AccessLogTarget,
    /// Where audit events (one per authorization decision) go.
    pub audit_log: AccessLogTarget,
    /// Reload when the config file changes.
    pub watch: bool,
    /// Request headers removed besides the built-in identity and forwarding headers,
    /// lower-case; a name ending in `*` is a prefix.
    pub strip_headers: Vec<String>,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
    /// Not written.
    Off,
}

/// One listening socket (`[[listeners]]`).
#[derive(Debug)]
pub struct Listener {
    /// Unique name, used by routes and in the access log.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Whether HTTP/2 is offered (ALPN `h2` with TLS, prior knowledge without).
    pub http2: bool,
    /// TLS termination; plaintext when absent.
    pub tls: Option<Tls>,
    /// Bounds on what a client may send.
    pub limits: Limits,
    /// What becomes of request headers whose names hold `_` or `.`.
    pub nonstandard_header_names: NonstandardHeaderNames,
    /// A listener that only redirects to HTTPS (`308`, same host, path and query), on this
    /// port; it serves no route.
    pub redirect_to_https: Option<u16>,
    /// Where the listener was declared.
    pub location: Location,
}

/// What a listener does with request header names that hold `_` or `.`: servers in the
/// CGI tradition read `X_Auth_User` and `X.Auth.User` as `X-Auth-User`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonstandardHeaderNames {
    /// Removed before routing (the default, as nginx does).
    #[default]
    Drop,
    /// The request is refused with 400.
    Refuse,
    /// Forwarded, unless they spell a header Drawbridge removes.
    Forward,
}

/// What a route tells its upstream of the client certificate, in Envoy's
/// `X-Forwarded-Client-Cert` format (a client's own such header is always removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Nothing (the default).
    #[default]
    Off,
    /// `Hash`, `URI` and `DNS`.
    On,
    /// `Hash`, `Subject`, `URI` and `DNS`.
    WithSubject,
}

/// What a route does with a query parameter it does not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryRule {
    /// The request is refused with 400 (the default).
    #[default]
    Refuse,
    /// The parameter is removed from what the upstream receives.
    Strip,
}

/// TLS settings of a listener.
#[derive(Debug)]
pub struct Tls {
    /// Certificates, chosen by SNI; the first one serves clients that send no known name.
    pub certificates: Vec<Certificate>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Client certificates: asked for, and checked against these CAs.
    pub client_auth: Option<ClientAuth>,
    /// The `Strict-Transport-Security` value sent with every response, when set.
    pub hsts: Option<String>,
}

/// How a listener asks for client certificates.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// CAs a client certificate must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// Refuse the handshake without one (`require`), or let the route decide (`request`).
    pub required: bool,
}

/// Lowest accepted TLS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Secret bytes (a signing key, an HMAC secret): never printed (`Debug` says only how long
/// it is), and wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes `bytes` as a secret.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(zeroize::Zeroizing::new(bytes))
    }

    /// The secret bytes, for the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

/// A certificate chain with its key.
#[derive(Debug)]
pub struct Certificate {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Names this certificate serves (exact or `*.suffix`), lower-case.
    pub server_names: Vec<String>,
    /// Where the certificate was declared.
    pub location: Location,
}

/// Bounds applied to every connection of a listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Longest request target in bytes.
    pub max_uri_bytes: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// Time allowed to receive a request head.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving for this long is closed (HTTP/1.1); an HTTP/2
    /// connection with no stream open or opened for this long is closed.
    pub idle_timeout: Duration,
    /// A request body from which no bytes arrive for this long is abandoned: `408`, and the
    /// upstream's connection is released.
    pub body_idle_timeout: Duration,
    /// A connection older than this is closed gracefully: HTTP/2 `GOAWAY`, HTTP/1.1
    /// `Connection: close` after the request in flight.
    pub max_connection_age: Duration,
    /// Most open connections on the listener.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_idle_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(3600),
            max_connections: 10_000,
            max_concurrent_streams: 128,
        }
    }
}

/// A service behind Drawbridge (`[[upstreams]]`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Where the service listens.
    pub endpoints: Vec<Endpoint>,
    /// The HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// How an endpoint is chosen.
    pub balance: Balance,
    /// Trust anchors for `https` endpoints; the system roots when absent.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// The name checked in the endpoints' certificates, when it differs from their host.
    pub tls_server_name: Option<String>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response head.
    pub request_timeout: Duration,
    /// Pooled connections idle longer than this are closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub max_idle_connections: usize,
    /// Most requests in flight to one endpoint; further requests get 503.
    pub max_requests: usize,
    /// Extra attempts for idempotent requests without a body whose attempt failed.
    pub retries: u32,
    /// Passive health checking.
    pub health: Health,
    /// The `Host` (HTTP/2 `:authority`) the upstream is sent.
    pub host_header: HostHeader,
    /// Where the upstream was declared.
    pub location: Location,
}

/// The `Host` an upstream is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// The host the client asked for (and the route was chosen by).
    Client,
    /// The endpoint's own `host:port` (a service behind a virtual-host-based load balancer,
    /// a SaaS API); the client's is still sent as `X-Forwarded-Host`.
    Endpoint,
}

impl Upstream {
    /// Whether `other` makes the same pool: every setting but where it was declared. The
    /// fields are named one by one, so a new setting cannot be forgotten here.
    pub fn same_settings(&self, other: &Upstream) -> bool {
        let Upstream {
            name,
            endpoints,
            protocol,
            balance,
            ca,
            tls_server_name,
            connect_timeout,
            request_timeout,
            idle_timeout,
            max_idle_connections,
            max_requests,
            retries,
            health,
            host_header,
            location: _,
        } = self;
        *name == other.name
            && *endpoints == other.endpoints
            && *protocol == other.protocol
            && *balance == other.balance
            && *ca == other.ca
            && *tls_server_name == other.tls_server_name
            && *connect_timeout == other.connect_timeout
            && *request_timeout == other.request_timeout
            && *idle_timeout == other.idle_timeout
            && *max_idle_connections == other.max_idle_connections
            && *max_requests == other.max_requests
            && *retries == other.retries
            && *health == other.health
            && *host_header == other.host_header
    }
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether the endpoint speaks TLS.
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http://host:port` or `https://host:port`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }
}

/// HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge over plaintext, `h2` ALPN over TLS).
    Http2,
    /// Whatever ALPN picks for `https`, HTTP/1.1 for `http`.
    Auto,
}

/// How an endpoint is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each healthy endpoint in turn.
    RoundRobin,
    /// The healthy endpoint with the fewest requests in flight.
    LeastRequests,
}

/// Passive health: endpoints failing in a row are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Consecutive failures (connect errors, resets, timeouts) that eject an endpoint.
    pub max_failures: u32,
    /// How long an ejected endpoint receives no requests.
    pub ejection: Duration,
    /// Active checks, when `check_path` is set.
    pub check: Option<HealthCheck>,
}

/// Active health checks: each endpoint is asked `GET path` every `interval`; any 2xx within
/// `timeout` passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path asked for, with its query if any.
    pub path: String,
    /// How often each endpoint is asked.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive passes that bring a failed endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an endpoint out.
    pub unhealthy_threshold: u32,
}

/// Which requests a route takes, and where they go (`[[routes]]`).
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name, shown in the access log.
    pub name: String,
    /// The hosts the route serves.
    pub host: HostMatch,
    /// The paths the route serves.
    pub path: PathMatch,
    /// Methods served, upper-case; all when `None`.
    pub methods: Option<Vec<String>>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Remove the matched prefix before forwarding.
    pub strip_prefix: bool,
    /// How callers are admitted.
    pub admission: Admission,
    /// Indexes into [`Config::listeners`]; every listener when `None`.
    pub listeners: Option<Vec<usize>>,
    /// Overrides the listener's body limit.
    pub max_body_bytes: Option<u64>,
    /// Also send the principal as plain `X-Drawbridge-User` and `X-Drawbridge-Groups`
    /// headers, for upstreams that cannot verify a JWT.
    pub identity_headers: bool,
    /// Names of the path parameters its pattern captures (`/orders/{order_id}`), in order.
    pub params: Vec<String>,
    /// What of the request its policies see beside the path (`[routes.context]`).
    pub context: RouteContext,
    /// Client headers the built-in or configured strip list would remove that this route
    /// lets through (lower-case).
    pub pass_headers: Vec<String>,
    /// Forward the request's trailers (after the header rules); dropped otherwise.
    pub request_trailers: bool,
    /// What becomes of credentials in the query string (`access_token`, API-key parameters)
    /// on an authenticated route.
    pub query_credentials: QueryRule,
    /// What becomes of method-override query parameters (`_method`) on a route that
    /// authenticates or restricts methods.
    pub method_override: QueryRule,
    /// Longest a WebSocket tunnel or a streaming response may stay open; on an authenticated
    /// route it also ends when the credential that admitted it expires or is revoked.
    pub max_stream_lifetime: Duration,
    /// Whether the upstream is told the client certificate in `X-Forwarded-Client-Cert`.
    pub forward_client_cert: ForwardClientCert,
    /// Headers set on or removed from the request the upstream receives.
    pub request_headers: HeaderEdits,
    /// Headers set on or removed from the response the client receives.
    pub response_headers: HeaderEdits,
    /// The second factor every request must have proved, and how lately (`mfa`); policies
    /// may ask more of some requests.
    pub mfa: Option<MfaRequirement>,
    /// Where the route was declared.
    pub location: Location,
}

/// Headers a route sets or removes (`[routes.request_headers]`, `[routes.response_headers]`).
/// Removals apply first, then the values set replace any of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Lower-case names and their values.
    pub set: Vec<(String, String)>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

/// The parts of a request a route hands its policies as `context.query` and
/// `context.headers`. Nothing else of the query or headers reaches a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteContext {
    /// Query parameters by name, with the type they are read as.
    pub query: Vec<(String, ValueType)>,
    /// Request headers by lower-case name; never credentials.
    pub headers: Vec<String>,
}

/// How a route admits callers: who may come in, and whether its policies decide about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Anyone, without credentials (`public = true`); with `authorize = true` the policies
    /// decide about the anonymous caller (its address, the time, the path).
    Public {
        /// Whether the route's policies decide.
        authorization: Authorization,
    },
    /// Callers one of the authenticators admits, tried in order (`authenticate = [...]`).
    Authenticated {
        /// Indexes into [`Config::authenticators`].
        authenticators: Vec<usize>,
        /// Forward the client's own credentials (`pass_credentials = true`); by default the
        /// upstream never sees them.
        pass_credentials: bool,
        /// Whether the route's policies decide (`authorize = false` admits every
        /// authenticated caller).
        authorization: Authorization,
    },
}

/// Whether a route's policies are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// The route's Cedar policies decide every request.
    Policies,
    /// Nobody is asked: everyone the route admits reaches the upstream.
    Unchecked,
}

impl Admission {
    /// Whether the route's policies decide who may use it.
    pub fn authorizes(&self) -> bool {
        let (Self::Public { authorization } | Self::Authenticated { authorization, .. }) = self;
        *authorization == Authorization::Policies
    }

    /// The same admission, decided (or not) by policies as `authorization` says.
    pub fn with(self, authorization: Authorization) -> Self {
        match self {
            Self::Public { .. } => Self::Public { authorization },
            Self::Authenticated {
                authenticators,
                pass_credentials,
                ..
            } => Self::Authenticated {
                authenticators,
                pass_credentials,
                authorization,
            },
        }
    }
}

impl Route {
    /// Whether the route's policies decide who may use it.
    pub fn authorizes(&self) -> bool {
        self.admission.authorizes()
    }
}

/// A way for callers to prove who they are (`[[authenticators]]`).
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Unique name; routes refer to it.
    pub name: String,
    /// What it checks.
    pub kind: AuthenticatorKind,
    /// Where it was declared.
    pub location: Location,
}

/// The kinds of authenticator.
#[derive(Debug, Clone)]
pub enum AuthenticatorKind {
    /// Bearer JWTs from one issuer (`type = "jwt"`).
    Jwt(Box<JwtIssuer>),
    /// API keys from a keys file (`type = "api_key"`).
    ApiKey(ApiKeys),
    /// Client certificates verified by the listener (`type = "mtls"`).
    Mtls(MtlsIdentity),
    /// People signed in at an OpenID provider, then known by their session
    /// (`type = "oidc"`).
    Oidc(Box<OidcProvider>),
}

/// An OpenID provider people sign in at (authorization code flow with PKCE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// The provider's exact issuer identifier: the `iss` of its ID tokens and of its
    /// authorization responses, and where its discovery document is.
    pub issuer: String,
    /// `{issuer}/.well-known/openid-configuration`, checked like a JWKS address.
    pub discovery: JwksUrl,
    /// The client id Drawbridge is registered under.
    pub client_id: String,
    /// How Drawbridge proves to the token endpoint that it is the client.
    pub client_auth: ClientAuthentication,
    /// Scopes asked for; always holds `openid`.
    pub scopes: Vec<String>,
    /// Accepted ID-token signature algorithms.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on the ID token's times.
    pub leeway: Duration,
    /// Longest accepted ID-token lifetime.
    pub max_lifetime: Duration,
    /// How the provider's keys are refreshed (as a `jwt` authenticator's).
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by an unknown `kid`.
    pub jwks_cooldown: Duration,
    /// How long keys stay in use while fetching fails.
    pub jwks_grace: Duration,
    /// Bound on one request to the provider.
    pub timeout: Duration,
    /// Which claims make the principal (as a `jwt` authenticator's).
    pub claims: ClaimMapping,
    /// When not empty, only people whose verified `email` is in one of these domains.
    pub allowed_email_domains: Vec<String>,
    /// Claims the ID token must carry, each with the values it may have (a string claim
    /// equal to one, or an array claim holding one).
    pub required_claims: Vec<(String, Vec<String>)>,
    /// The name people see on the sign-in page.
    pub display_name: String,
}

/// How Drawbridge authenticates to a provider's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuthentication {
    /// `client_secret_basic`: the client secret, from `client_secret_file`.
    SecretBasic {
        /// The secret.
        secret: Secret,
        /// Its file, for messages.
        file: PathBuf,
    },
    /// `private_key_jwt` (RFC 7523): a short-lived JWT signed with the client's key; the
    /// provider holds only the public key.
    PrivateKeyJwt {
        /// The private key, PKCS#8 PEM, from `client_key_file`.
        key: Secret,
        /// Its file, for messages.
        file: PathBuf,
        /// The `kid` the assertion names, when the provider wants one.
        key_id: Option<String>,
    },
}

/// `[sessions]`: where people's sessions are kept and how long they last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    /// The store.
    pub store: SessionStore,
    /// The key sessions' secrets are sealed with, from `key_file`; generated and kept in
    /// the store when `None`.
    pub key: Option<(PathBuf, Secret)>,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after its sign-in, used or not.
    pub lifetime: Duration,
    /// Longest time an instance trusts a session it read from the store without reading
    /// it again (a revocation elsewhere takes effect within it).
    pub cache_ttl: Duration,
    /// The origin (`https://host[:port]`) where every host's people sign in; each host
    /// signs in on itself (its own callback) when `None`.
    pub sign_in: Option<SignIn>,
    /// Where `[sessions]` is (the file's start when absent).
    pub location: Location,
}

/// The central sign-in origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// Host name, lower-case.
    pub host: String,
    /// Port; 443 unless written.
    pub port: u16,
}

/// Where sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStore {
    /// A file on this instance (redb): sessions survive a restart.
    Embedded {
        /// The file, resolved against the config's directory.
        path: PathBuf,
    },
    /// A Redis server shared by several instances.
    Redis {
        /// `redis://` or `rediss://` (TLS) address, as written (it may hold a password).
        url: Secret,
        /// CAs trusted for a `rediss://` server instead of the system's roots.
        ca: Option<Vec<CertificateDer<'static>>>,
        /// Prefix of every key Drawbridge writes.
        key_prefix: String,
    },
}

/// Workload identity from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsIdentity {
    /// The trust domain: a SPIFFE id must be `spiffe://<trust_domain>/...`, a DNS name must
    /// be `<trust_domain>` or end in `.<trust_domain>`.
    pub trust_domain: String,
    /// The CAs that may issue identities in this trust domain; a certificate another CA
    /// issued (even one the listener trusts) is refused.
    pub roots: Vec<CertificateDer<'static>>,
}

/// API keys: who holds which key, stored as an HMAC of the key under a server secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeys {
    /// Where clients put the key.
    pub header: ApiKeyHeader,
    /// The HMAC key the stored hashes were made with.
    pub secret: Secret,
    /// The keys file, for messages.
    pub keys_file: PathBuf,
    /// The keys.
    pub keys: Vec<ApiKeyEntry>,
}

/// Where an API key travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyHeader {
    /// `Authorization: ApiKey <key>`.
    Authorization,
    /// A header of its own (`X-Api-Key: <key>`), lower-case.
    Named(String),
}

/// One API key as the keys file holds it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// The key's public id (the part after `dbk_`).
    pub id: String,
    /// What the key is for, shown in logs.
    pub name: String,
    /// The principal's id; `name` by default.
    pub principal: String,
    /// HMAC-SHA256 of the whole key under the server secret.
    pub hash: [u8; 32],
    /// When the key stops working, Unix seconds.
    pub expires: Option<u64>,
    /// Groups of the principal.
    pub groups: Vec<String>,
    /// Attributes of the principal.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// One JWT issuer and how its tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (asymmetric only), upper-case JOSE names.
    pub algorithms: Vec<String>,
    /// Where its public keys come from.
    pub jwks: JwksSource,
    /// How long fetched keys are used before they are fetched again.
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by tokens naming an unknown `kid`.
    pub jwks_cooldown: Duration,
    /// How long keys stay in use past `jwks_refresh` while fetching fails; after that every
    /// token of this issuer is refused.
    pub jwks_grace: Duration,
    /// Bound on one fetch: connect, TLS, request and body.
    pub jwks_timeout: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Longest accepted lifetime (`exp` minus `iat`, or minus now without `iat`).
    pub max_lifetime: Duration,
    /// Required `typ` header (`at+jwt`), compared without case and without `application/`.
    pub token_type: Option<String>,
    /// What kind of caller the tokens stand for.
    pub principal: PrincipalKind,
    /// Which claims make the principal.
    pub claims: ClaimMapping,
    /// Whether verified tokens are cached until they expire.
    pub cache: bool,
    /// Most tokens held in the cache.
    pub cache_size: usize,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWK Set file, read when the configuration is loaded.
    File {
        /// The file, resolved against the config's directory.
        path: PathBuf,
        /// Its contents.
        bytes: Vec<u8>,
    },
    /// A JWK Set fetched over HTTPS (plain HTTP only to a loopback address).
    Url(JwksUrl),
}

/// A checked JWKS address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    /// The address as written.
    pub url: String,
    /// `https`.
    pub tls: bool,
    /// Host name or IP address, lower-case, IPv6 without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// Certificates trusted for this address instead of the system's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

/// The kind of caller a credential stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A person.
    User,
    /// A workload.
    Service,
    /// The holder of an API key.
    ApiKey,
    /// Nobody in particular: the caller of a public route whose policies decide (by client
    /// address, time, path).
    Anonymous,
}

impl PrincipalKind {
    /// The name used in config, identity assertions and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
            PrincipalKind::ApiKey => "api_key",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
}

/// Which claims of a token make the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The principal's id (`sub` by default).
    pub id: String,
    /// The claim holding groups or roles.
    pub groups: Option<String>,
    /// The shape that claim must have; a token whose claim has another is refused.
    pub groups_format: GroupsFormat,
    /// Claims copied as attributes.
    pub attributes: Vec<String>,
    /// Which of a token's `amr` and `acr` values count as a second factor done at its
    /// issuer (`trusted_mfa`); none by default.
    pub trusted_mfa: TrustedMfa,
}

/// The `amr` and `acr` values of an issuer's tokens that stand for a second factor done
/// there, at the token's `auth_time`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedMfa {
    /// `amr` members (RFC 8176: `mfa`, `otp`, `hwk`...), any one of which is enough.
    pub amr: Vec<String>,
    /// `acr` values, any one of which is enough.
    pub acr: Vec<String>,
}

impl TrustedMfa {
    /// Whether nothing is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.amr.is_empty() && self.acr.is_empty()
    }
}

/// A second factor: how a person proved, beyond signing in, that it is them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MfaMethod {
    /// A time-based one-time code (RFC 6238) from an app Drawbridge enrolled.
    Totp,
    /// A security key or passkey (WebAuthn) Drawbridge registered.
    Webauthn,
    /// One of the single-use recovery codes Drawbridge gave at enrolment.
    RecoveryCode,
    /// A factor done at the identity provider, whose token says so in a trusted `amr` or
    /// `acr` (`trusted_mfa`).
    Idp,
}

impl MfaMethod {
    /// Every method, in the order pages offer them.
    pub const ALL: [MfaMethod; 4] = [
        MfaMethod::Totp,
        MfaMethod::Webauthn,
        MfaMethod::RecoveryCode,
        MfaMethod::Idp,
    ];

    /// The name used in config, policies, assertions and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaMethod::Totp => "totp",
            MfaMethod::Webauthn => "webauthn",
            MfaMethod::RecoveryCode => "recovery_code",
            MfaMethod::Idp => "idp",
        }
    }

    /// The method of that name.
    pub fn parse(name: &str) -> Option<MfaMethod> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Its RFC 8176 `amr` value, for identity assertions.
    pub fn amr(self) -> &'static str {
        match self {
            MfaMethod::Totp => "otp",
            MfaMethod::Webauthn => "hwk",
            MfaMethod::RecoveryCode => "kba",
            MfaMethod::Idp => "mfa",
        }
    }
}

/// A route's `mfa`: a second factor of one of `methods`, done within `max_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaRequirement {
    /// How long ago the factor may have been done.
    pub max_age: Duration,
    /// The factors that count, any one of them.
    pub methods: Vec<MfaMethod>,
}

/// `[mfa]`: how Drawbridge enrols and checks second factors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mfa {
    /// The name authenticator apps show beside the account (`issuer` in the TOTP URI).
    pub issuer: String,
    /// TOTP parameters for new enrolments.
    pub totp: TotpSettings,
    /// Most failed attempts per account within `failure_window`; then every attempt is
    /// refused until the window ends, whatever the code.
    pub max_failures: u32,
    /// The window failed attempts are counted in.
    pub failure_window: Duration,
    /// How long a started enrolment (a secret shown, not yet confirmed) stays open.
    pub enrol_timeout: Duration,
    /// WebAuthn: user verification (PIN, biometrics) required of the authenticator.
    pub user_verification: bool,
    /// Where `[mfa]` is (the file's start when absent).
    pub location: Location,
}

/// RFC 6238 parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpSettings {
    /// The HMAC hash.
    pub algorithm: TotpAlgorithm,
    /// Digits per code (6 to 8).
    pub digits: u32,
    /// Seconds per step.
    pub period: u64,
}

impl Default for TotpSettings {
    fn default() -> Self {
        TotpSettings {
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period: 30,
        }
    }
}

/// A TOTP HMAC hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TotpAlgorithm {
    /// HMAC-SHA-1, what every authenticator app supports (the default).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl TotpAlgorithm {
    /// The name in a TOTP URI.
    pub fn as_str(self) -> &'static str {
        match self {
            TotpAlgorithm::Sha1 => "SHA1",
            TotpAlgorithm::Sha256 => "SHA256",
            TotpAlgorithm::Sha512 => "SHA512",
        }
    }
}

/// The shape of a token's group claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupsFormat {
    /// A JSON array of strings (`"groups": ["admin", "eng"]`), as group and role claims are.
    #[default]
    Array,
    /// One string of space-separated names, as OAuth `scope` is (`"scope": "read write"`).
    SpaceSeparated,
}

/// The hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Every host.
    Any,
    /// One host, lower-case, without port.
    Exact(String),
    /// Any host ending in `.suffix` (`*.example.com` holds `example.com`).
    Suffix(String),
}

/// The paths a route serves; compared with the normalised, decoded path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// Exactly this path, and the same path with a trailing slash (`/admin` takes `/admin/`),
    /// unless another route names that form.
    Exact(String),
    /// This path and everything below it, on segment boundaries (`/api` holds `/api` and
    /// `/api/x`, not `/apix`). Stored without a trailing slash; `/` holds every path.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (normalised) falls under this match.
    pub fn matches(&self, path: &str) -> bool {
        if self.is_pattern() {
            return self.capture(path).is_some();
        }
        match self {
            PathMatch::Exact(p) => p == path || (p != "/" && path.strip_suffix('/') == Some(p)),
            PathMatch::Prefix(p) => prefix_matches(p, path),
        }
    }

    /// The path or prefix as written (patterns keep their `{name}` segments).
    pub fn text(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    /// Whether it holds `{name}` segments.
    pub fn is_pattern(&self) -> bool {
        self.text().contains("/{")
    }

    /// The values of the pattern's parameters in `path`, in order, when `path` matches. A
    /// parameter takes one whole, non-empty segment of the decoded path.
    pub fn capture<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let (pattern, exact) = match self {
            PathMatch::Exact(p) => (p.as_str(), true),
            PathMatch::Prefix(p) if p == "/" => return Some(Vec::new()),
            PathMatch::Prefix(p) => (p.as_str(), false),
        };
        let mut want = pattern.split('/').skip(1);
        let mut have = path.strip_prefix('/')?.split('/');
        let mut values = Vec::new();
        for w in want.by_ref() {
            let h = have.next()?;
            if w.starts_with('{') {
                if h.is_empty() {
                    return None;
                }
                values.push(h);
            } else if w != h {
                return None;
            }
        }
        // An exact path also takes its trailing-slash form.
        if exact && !matches!((have.next(), have.next()), (None, _) | (Some(""), None)) {
            return None;
        }
        Some(values)
    }

    /// The pattern with its parameter names erased: two routes of the same shape match the
    /// same paths.
    pub fn shape(&self) -> (bool, String) {
        let text = self
            .text()
            .split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        (matches!(self, PathMatch::Exact(_)), text)
    }

    /// Orders matches that could take the same path, most specific first: more segments,
    /// then a literal segment before a parameter at the first place they differ.
    pub fn specificity(&self) -> (std::cmp::Reverse<usize>, Vec<bool>) {
        let segs: Vec<bool> = if self.text() == "/" {
            Vec::new()
        } else {
            self.text()
                .split('/')
                .skip(1)
                .map(|seg| seg.starts_with('{'))
                .collect()
        };
        (std::cmp::Reverse(segs.len()), segs)
    }
}

/// Segment-boundary prefix test; `prefix` has no trailing slash except the root.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
