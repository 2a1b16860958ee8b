//! The request as the policy layer sees it: what the protocol layer hands it, and what it
//! refuses to read two ways.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::Action;

/// What the policy layer needs to know of a request. Built by the protocol layer.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// What the request does.
    pub action: Action,
    /// The HTTP method as received (`context.method`).
    pub method: &'a str,
    /// The host the route was chosen by, lower-case without port.
    pub host: &'a str,
    /// The normalised, decoded path.
    pub path: &'a str,
    /// Values of the route's path parameters, in the order its pattern names them.
    pub params: &'a [&'a str],
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers (only the route's selected ones are read).
    pub headers: &'a http::HeaderMap,
    /// The client's address.
    pub ip: IpAddr,
    /// The time of the request.
    pub now: SystemTime,
    /// A gRPC call's service and method.
    pub grpc: Option<(&'a str, &'a str)>,
}

/// A request whose parts the policies read cannot be read one way only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// A query parameter the route hands its policies appears more than once.
    #[error("query parameter `{0}` appears more than once")]
    RepeatedQuery(String),
    /// A query parameter does not parse as the type the route reads it as.
    #[error("query parameter `{0}` is not a {1}")]
    QueryType(String, &'static str),
    /// The query is not UTF-8 after decoding.
    #[error("query is not valid UTF-8 after percent-decoding")]
    QueryEncoding,
    /// A query parameter's name holds a control character.
    #[error("control character in a query parameter name")]
    QueryControl,
    /// A header the route hands its policies appears more than once.
    #[error("header `{0}` appears more than once")]
    RepeatedHeader(String),
    /// A header the route hands its policies is not visible ASCII.
    #[error("header `{0}` is not text")]
    HeaderNotText(String),
}
