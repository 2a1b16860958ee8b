//! The file format as written: serde structs that mirror the TOML, with spans kept for
//! diagnostics. Nothing here is trusted; `compile` turns it into checked types.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub authenticators: Vec<Spanned<RawAuthenticator>>,
    pub identity: Option<Spanned<RawIdentity>>,
    pub policy: Option<Spanned<RawPolicy>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub audit: Option<Spanned<RawAudit>>,
    pub alerts: Option<Spanned<RawAlerts>>,
    pub tracing: Option<Spanned<RawTracing>>,
    pub sessions: Option<Spanned<RawSessions>>,
    pub mfa: Option<Spanned<RawMfa>>,
}

/// `[mfa]`: how second factors are enrolled and checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMfa {
    pub issuer: Option<Spanned<String>>,
    pub max_failures: Option<Spanned<i64>>,
    pub failure_window: Option<Spanned<String>>,
    pub enrol_timeout: Option<Spanned<String>>,
    pub user_verification: Option<Spanned<String>>,
    pub totp: Option<Spanned<RawTotp>>,
}

/// `[mfa.totp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTotp {
    pub algorithm: Option<Spanned<String>>,
    pub digits: Option<Spanned<i64>>,
    pub period: Option<Spanned<String>>,
}

/// A route's `mfa = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteMfa {
    pub required: Option<Spanned<bool>>,
    pub max_age: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
}

/// An authenticator's `trusted_mfa = { amr = [...], acr = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrustedMfa {
    pub amr: Option<Spanned<Vec<Spanned<String>>>>,
    pub acr: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[sessions]`: where people's sessions are kept and how long they last.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSessions {
    pub store: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub redis_url: Option<Spanned<String>>,
    pub redis_ca_file: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub lifetime: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub sign_in_url: Option<Spanned<String>>,
}

/// `[admin]`: Drawbridge's own listener for health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Option<Spanned<String>>,
    pub authenticators: Option<Spanned<Vec<Spanned<String>>>>,
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `[tracing]`: OpenTelemetry traces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub otlp_endpoint: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    pub sample_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    pub trusted_sources: Vec<Spanned<String>>,
}

/// `[alerts]`: detectors over the stream of decisions, and where firings go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub webhook_url: Option<Spanned<String>>,
    pub webhook_secret_file: Option<Spanned<String>>,
    pub webhook_ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub detectors: Vec<Spanned<RawDetector>>,
}

/// `[[alerts.detectors]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDetector {
    pub name: Spanned<String>,
    pub on: Spanned<String>,
    pub by: Option<Spanned<String>>,
    pub threshold: Spanned<i64>,
    pub window: Option<Spanned<String>>,
    pub block: Option<Spanned<String>>,
}

/// `[audit]`: how the audit trail's files rotate, and whether it must be written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub rotate_bytes: Option<Spanned<i64>>,
    pub rotate_every: Option<Spanned<String>>,
    pub required: Option<bool>,
    pub syslog: Option<Spanned<String>>,
}

/// `[policy]`: the Cedar policies that authorize requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub files: Spanned<Vec<Spanned<String>>>,
    pub shadow: Option<Spanned<Vec<Spanned<String>>>>,
    pub tests: Option<Spanned<Vec<Spanned<String>>>>,
    pub attributes: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub plain_names: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[routes.context]`: what of the request a route's policies see beside the path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteContext {
    pub query: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub headers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub issuer: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub lifetime: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub per_request: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub shutdown_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub audit_log: Option<Spanned<String>>,
    pub watch: Option<bool>,
    #[serde(default)]
    pub strip_headers: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub http2: Option<bool>,
    pub tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub limits: RawLimits,
    pub nonstandard_header_names: Option<Spanned<String>>,
    pub redirect_to_https: Option<Spanned<bool>>,
    pub https_port: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certificates: Vec<Spanned<RawCertificate>>,
    pub min_version: Option<Spanned<String>>,
    pub client_ca_file: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub hsts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub server_names: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_uri_bytes: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_idle_timeout: Option<Spanned<String>>,
    pub max_connection_age: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub name: Spanned<String>,
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub protocol: Option<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle_connections: Option<Spanned<i64>>,
    pub max_requests: Option<Spanned<i64>>,
    pub retries: Option<Spanned<i64>>,
    #[serde(default)]
    pub health: RawHealth,
    pub host_header: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub max_failures: Option<Spanned<i64>>,
    pub ejection: Option<Spanned<String>>,
    pub check_path: Option<Spanned<String>>,
    pub check_interval: Option<Spanned<String>>,
    pub check_timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream: Spanned<String>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub public: Option<Spanned<bool>>,
    pub authenticate: Option<Spanned<Vec<Spanned<String>>>>,
    pub pass_credentials: Option<Spanned<bool>>,
    pub identity_headers: Option<Spanned<bool>>,
    pub listeners: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub authorize: Option<Spanned<bool>>,
    pub context: Option<Spanned<RawRouteContext>>,
    pub pass_headers: Option<Spanned<Vec<Spanned<String>>>>,
    pub request_trailers: Option<Spanned<bool>>,
    pub query_credentials: Option<Spanned<String>>,
    pub method_override: Option<Spanned<String>>,
    pub max_stream_lifetime: Option<Spanned<String>>,
    pub forward_client_cert: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
    pub mfa: Option<Spanned<RawRouteMfa>>,
}

/// `[routes.request_headers]`, `[routes.response_headers]`: headers to set or remove.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderEdits {
    pub set: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub remove: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[authenticators]]` table. Flat, with `type` saying which fields apply, so that a
/// field of another type is reported by name rather than as a failed variant match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthenticator {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_url: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_ca_file: Option<Spanned<String>>,
    pub jwks_refresh: Option<Spanned<String>>,
    pub jwks_cooldown: Option<Spanned<String>>,
    pub jwks_grace: Option<Spanned<String>>,
    pub jwks_timeout: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub max_lifetime: Option<Spanned<String>>,
    pub token_type: Option<Spanned<String>>,
    pub principal: Option<Spanned<String>>,
    pub claims: Option<Spanned<RawClaims>>,
    pub cache: Option<Spanned<bool>>,
    pub cache_size: Option<Spanned<i64>>,
    pub trust_domain: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub keys_file: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
    pub client_key_id: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub allowed_email_domains: Option<Spanned<Vec<Spanned<String>>>>,
    pub required_claims: Option<Spanned<ClaimValues>>,
    pub display_name: Option<Spanned<String>>,
    pub issuer_ca_file: Option<Spanned<String>>,
    pub trusted_mfa: Option<Spanned<RawTrustedMfa>>,
}

/// `required_claims`: claim names, each with the values it may have.
pub(crate) type ClaimValues =
    std::collections::BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>;

/// An API keys file: `[[keys]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeysFile {
    #[serde(default)]
    pub keys: Vec<Spanned<RawApiKey>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKey {
    pub id: Spanned<String>,
    pub name: Spanned<String>,
    pub principal: Option<Spanned<String>>,
    pub hash: Spanned<String>,
    pub expires: Option<Spanned<String>>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClaims {
    pub id: Option<Spanned<String>>,
    pub groups: Option<Spanned<String>>,
    pub groups_format: Option<Spanned<String>>,
    #[serde(default)]
    pub attributes: Vec<Spanned<String>>,
}
