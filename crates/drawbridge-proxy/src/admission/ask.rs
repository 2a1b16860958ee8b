//! The neutral description of a request that the admission core decides: what it asks,
//! and how its caller proves who they are.

use std::net::IpAddr;
use std::time::SystemTime;

use drawbridge_identity::{ClientCert, Factor, Simulated};
use http::HeaderMap;

/// What kind of exchange a request asks for: its action, when the policies read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain HTTP request: its method is its action.
    Http,
    /// A gRPC call (`Action::"grpc"`).
    Grpc,
    /// A WebSocket upgrade (`Action::"connect"`).
    WebSocket,
}

/// A request as admission sees it, whatever its protocol: who asks (the credentials in
/// `headers`, or a [`Proof`]), what for (`kind`, `method`), on which resource (the route
/// `host` and `path` pick), and in what context.
pub struct Ask<'a> {
    /// The host the route was chosen by.
    pub host: &'a str,
    /// The normalised, decoded path.
    pub path: &'a str,
    /// The method as received (upper-case for the standard ones).
    pub method: &'a str,
    /// What kind of exchange.
    pub kind: Kind,
    /// The query as the route lets it through.
    pub query: Option<&'a str>,
    /// The headers as sanitize left them, credentials still in them.
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub client: IpAddr,
    /// When the request arrived.
    pub time: SystemTime,
}

/// How the caller proves who they are.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The credentials the request carries, and the client certificate its connection's
    /// handshake verified.
    Presented {
        /// The verified client certificate.
        client_cert: Option<&'a ClientCert>,
    },
    /// A caller a test case describes (`drawbridge test`): an authenticator's name, what
    /// it would verify (signatures and expiry aside) and the second factors the caller
    /// proved; `None` when the case names no caller.
    Simulated(Option<(&'a str, Simulated<'a>, &'a [Factor])>),
}
