//! What the phases share: the process ([`Shared`]), the connection ([`ConnInfo`]) and the
//! request ([`Ctx`], filled in phase by phase and written out by the record phase).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use drawbridge_telemetry::{AccessEvent, AccessLog, AuditLog, RequestId};
use http::HeaderValue;

use crate::sanitize::headers::ClientHeaders;
use crate::sanitize::path::NormalPath;
use crate::snapshot::Snapshot;

/// What every connection task shares.
pub struct Shared {
    /// The configuration in force.
    pub snapshot: ArcSwap<Snapshot>,
    /// Access log.
    pub log: AccessLog,
    /// Audit trail: one event per authorization decision.
    pub audit: AuditLog,
    /// Decisions where the shadow policies disagreed with the enforced ones.
    pub shadow_disagreements: std::sync::atomic::AtomicU64,
    /// Request id source.
    pub ids: RequestIds,
    /// Counts reloads; open tunnels watch it to check their credentials again.
    pub reloads: tokio::sync::watch::Sender<u64>,
    /// Set when the drain begins: the process is no longer ready for traffic.
    pub draining: std::sync::atomic::AtomicBool,
    /// The config file, read again at every reload.
    pub config_path: std::path::PathBuf,
    /// The latest reloads, newest last.
    pub reload_history: std::sync::Mutex<std::collections::VecDeque<Reloaded>>,
    /// The key the audit trail's seals are signed with: the identity assertion key in
    /// force.
    pub audit_key: Arc<ArcSwap<drawbridge_identity::Minter>>,
    /// The detectors' queue, and the blocks in force.
    pub alerter: crate::alerts::Alerter,
    /// The open connections, to close idle ones when a listener or the process is full.
    pub roster: Arc<crate::roster::Roster>,
}

/// One reload, as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// When it was tried, RFC 3339.
    pub time: String,
    /// Whether the new configuration took effect.
    pub ok: bool,
    /// The version in force afterwards.
    pub version: String,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What is known of a connection.
pub struct ConnInfo {
    /// Index of the listener in the snapshot.
    pub listener: usize,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// `peer` as text, made once per connection for the access log.
    pub peer_label: Arc<str>,
    /// The peer's IP as a header value, made once per connection.
    pub peer_ip: HeaderValue,
    /// The client certificate the TLS handshake verified, read once per connection (boxed:
    /// most connections have none, and each idle one keeps this).
    pub client_cert: Option<Box<drawbridge_identity::ClientCert>>,
    /// The connection's requests, for its idle deadline.
    pub streams: Arc<crate::io::Streams>,
    /// The server name the TLS handshake asked for.
    pub sni: Option<Box<str>>,
    /// Turns true when the server starts to drain: a tunnel outliving its request watches it.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// What the connection holds while it lives (its listener slot, its place in the
    /// drain); released when the last holder of the connection (a tunnel's relay, maybe)
    /// lets it go.
    pub held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Shared {
    /// Where decisions are recorded.
    pub fn decisions(&self) -> crate::record::Decisions<'_> {
        crate::record::Decisions {
            audit: &self.audit,
            disagreements: &self.shadow_disagreements,
            alerter: &self.alerter,
        }
    }
}

/// `v`, its bytes made shared now: a header value made from text owns its bytes until first
/// cloned, and the first clone (in a request, for the upstream) moves them into a shared
/// allocation made then. Made here, with the connection, it lives with the connection's
/// state rather than among the request's short-lived allocations.
fn shared_now(v: HeaderValue) -> HeaderValue {
    drop(v.clone());
    v
}

impl ConnInfo {
    /// A connection accepted on listener `listener` from `peer`.
    pub fn new(
        listener: usize,
        peer: SocketAddr,
        tls: bool,
        client_cert: Option<drawbridge_identity::ClientCert>,
        sni: Option<Box<str>>,
        streams: Arc<crate::io::Streams>,
    ) -> Self {
        ConnInfo {
            listener,
            peer,
            tls,
            peer_label: peer.to_string().into(),
            peer_ip: shared_now(
                HeaderValue::from_str(&peer.ip().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            ),
            client_cert: client_cert.map(Box::new),
            streams,
            sni,
            stop: None,
            held: None,
        }
    }

    /// The same connection, watching `stop` and holding `held` for as long as it lives.
    pub fn holding(
        mut self,
        stop: tokio::sync::watch::Receiver<bool>,
        held: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        self.stop = Some(stop);
        self.held = Some(held);
        self
    }
}

/// One request as the phases learn it. Each phase fills in what it establishes; the record
/// phase writes `event` when the response ends.
pub struct Ctx {
    /// When the request arrived, by the monotonic clock.
    pub arrived: Instant,
    /// The access-log record, completed phase by phase (it holds the request id, the time,
    /// the host and path as far as they were read).
    pub event: AccessEvent,
    /// A gRPC call, classified once from the headers as sanitize leaves them: answered with
    /// gRPC statuses and authorized as `Action::"grpc"`.
    pub grpc: bool,
    /// The host the request is for, lower-case, without port or trailing dot (parse).
    pub host: Arc<str>,
    /// The one normalised path (sanitize).
    pub path: NormalPath,
    /// What sanitize learnt from the client's headers.
    pub headers: ClientHeaders,
    /// The query as the route lets it through, when screening changed it.
    pub query: Option<String>,
    /// The client's address for policies: the peer, or the nearest address a trusted proxy
    /// named (sanitize).
    pub client: IpAddr,
    /// The `Host` header as the client sent it.
    pub original_host: Option<HeaderValue>,
    /// The route's counters, once a route took the request.
    pub metrics: Option<Arc<drawbridge_telemetry::metrics::RouteMetrics>>,
    /// The request's span, when `[tracing]` is on.
    pub trace: Option<Box<crate::trace::Trace>>,
    /// `host` was read (parse): the record takes it from here when the request ends,
    /// rather than a copy made when it was read.
    pub host_read: bool,
    /// `path` was read (sanitize), likewise.
    pub path_read: bool,
}

impl Ctx {
    /// The context of a request that arrived now on `conn`, with id `request_id`.
    pub fn new(
        conn: &ConnInfo,
        listener: Arc<str>,
        request_id: RequestId,
        method: &http::Method,
        version: http::Version,
    ) -> Ctx {
        Ctx {
            arrived: Instant::now(),
            event: crate::record::access_event(
                SystemTime::now(),
                request_id,
                listener,
                conn.peer_label.clone(),
                method,
                version,
            ),
            grpc: false,
            host: Arc::default(),
            path: NormalPath::default(),
            headers: ClientHeaders::default(),
            query: None,
            client: conn.peer.ip(),
            original_host: None,
            metrics: None,
            trace: None,
            host_read: false,
            path_read: false,
        }
    }

    /// The request's id.
    pub fn request_id(&self) -> &str {
        self.event.request_id.as_str()
    }

    /// When the request arrived, by the wall clock.
    pub fn time(&self) -> SystemTime {
        self.event.time
    }

    /// The query the route and its policies see: the screened one, or the client's.
    pub fn query<'a>(&'a self, sent: Option<&'a str>) -> Option<&'a str> {
        self.query.as_deref().or(sent)
    }
}

/// Request ids: a random per-process prefix and a counter, so ids never repeat.
pub struct RequestIds {
    /// The prefix: 8 random bytes.
    prefix: [u8; 8],
    counter: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    /// A fresh id source.
    pub fn new() -> Self {
        let mut prefix = [0u8; 8];
        // A failing OS random source leaves a zero prefix: ids stay unique within the process.
        let _ = getrandom::fill(&mut prefix);
        Self {
            prefix,
            counter: Default::default(),
        }
    }

    /// The next id: 32 hex digits.
    pub fn next(&self) -> RequestId {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.prefix);
        raw[8..].copy_from_slice(&n.to_be_bytes());
        let mut digits = [0u8; RequestId::MAX];
        // 16 bytes make 32 hex digits: they fit, are ASCII, and are as long as an id may be,
        // so this never falls back.
        base16ct::lower::encode_str(&raw, &mut digits)
            .ok()
            .and_then(RequestId::new)
            .unwrap_or_default()
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_unique() {
        let ids = RequestIds::new();
        let a = ids.next().to_string();
        let b = ids.next().to_string();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(a[..16], b[..16], "one process prefix");
        assert_eq!(&a[16..], "0000000000000000");
        assert_eq!(&b[16..], "0000000000000001");
    }

    #[test]
    fn hex_digits_are_the_prefix_then_the_counter_in_order() {
        let ids = RequestIds {
            prefix: [0xa0, 0, 0, 0, 0, 0, 0, 0x1f],
            counter: 0x0123_4567_89ab_cdef.into(),
        };
        assert_eq!(ids.next().as_str(), "a00000000000001f0123456789abcdef");
        assert_eq!(ids.next().as_str(), "a00000000000001f0123456789abcdf0");
        let ids = RequestIds {
            prefix: [0xff; 8],
            counter: u64::MAX.into(),
        };
        assert_eq!(ids.next().as_str(), "ffffffffffffffffffffffffffffffff");
        assert_eq!(ids.next().as_str(), "ffffffffffffffff0000000000000000");
    }
}
