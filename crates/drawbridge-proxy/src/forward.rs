//! Phase 10, forward: pick an endpoint, send, retry only what is safe to retry, classify
//! failures, and relay WebSocket upgrades once the request was admitted.

use std::error::Error as _;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{BodyError, RequestBody};
use crate::rescue::ProxyError;
use crate::sanitize;
use crate::upstream::{InFlight, PickError, UpstreamPool};

/// A request ready to leave: everything but the endpoint.
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Canonical path and the client's query.
    pub path_and_query: String,
    /// Headers after sanitize and mutate.
    pub headers: HeaderMap,
    /// Body.
    pub body: RequestBody,
    /// The client's side of an admitted WebSocket upgrade.
    pub upgrade: Option<OnUpgrade>,
}

/// Sends `out` to `pool`, returning the upstream's response and the endpoint's in-flight guard.
pub async fn forward(
    pool: &Arc<UpstreamPool>,
    out: Outgoing,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let Outgoing {
        method,
        path_and_query,
        mut headers,
        body,
        upgrade,
    } = out;
    if upgrade.is_some() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    // Retries go to another endpoint: with one endpoint there is nothing to gain (hyper
    // already resends a request whose pooled connection closed before it was written).
    let retryable = pool.retries > 0
        && pool.endpoints.len() > 1
        && is_idempotent(&method)
        && http_body::Body::is_end_stream(&body)
        && upgrade.is_none();
    let attempts = if retryable { 1 + pool.retries } else { 1 };
    let version = if upgrade.is_some() {
        Version::HTTP_11
    } else {
        pool.version
    };
    let mut body = Some(body);
    let mut last_endpoint = None;
    let mut last_err = None;
    for attempt in 0..attempts {
        let in_flight = pool.pick(last_endpoint).map_err(|e| match e {
            PickError::NoHealthy => ProxyError::NoHealthyEndpoint,
            PickError::AtCapacity => ProxyError::UpstreamAtCapacity,
        });
        let in_flight = match (in_flight, last_err.take()) {
            (Ok(f), _) => f,
            // Keep the failure that made us retry; it says more than "no endpoint left".
            (Err(_), Some(prev)) => return Err(prev),
            (Err(e), None) => return Err(e),
        };
        last_endpoint = Some(in_flight.index());
        let ep = in_flight.endpoint();
        let uri = Uri::builder()
            .scheme(ep.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query(path_and_query.as_str())
            .build()
            .map_err(|_| ProxyError::BadRequest("unrepresentable request target"))?;
        let last = attempt + 1 == attempts;
        let mut req = Request::new(if last {
            body.take().unwrap_or_else(RequestBody::empty)
        } else {
            RequestBody::empty()
        });
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };

        let sent = tokio::time::timeout(pool.request_timeout, pool.client.request(req)).await;
        let err = match sent {
            Ok(Ok(mut res)) => {
                in_flight.succeeded();
                if let Some(client) = upgrade {
                    return relay_upgrade(res, client, in_flight);
                }
                sanitize::strip_response_headers(res.headers_mut(), false);
                return Ok((res, in_flight));
            }
            Ok(Err(e)) => {
                if let Some(body_err) = find_body_error(&e) {
                    return Err(match body_err {
                        BodyError::TooLarge(n) => ProxyError::BodyTooLarge(*n),
                        BodyError::Client(_) => {
                            ProxyError::BadRequest("request body could not be read")
                        }
                    });
                }
                in_flight.failed();
                ProxyError::UpstreamFailed(describe(&e))
            }
            Err(_) => {
                in_flight.failed();
                ProxyError::UpstreamTimeout(pool.request_timeout)
            }
        };
        tracing::debug!(upstream = %pool.name, endpoint = %ep.label, attempt, error = %err, "upstream attempt failed");
        last_err = Some(err);
    }
    Err(last_err.unwrap_or(ProxyError::NoHealthyEndpoint))
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn find_body_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = err.source();
    }
    None
}

/// The error and its causes on one line, for the access log.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = if e.is_connect() {
        "connect: ".to_string()
    } else {
        String::new()
    };
    s.push_str(&e.to_string());
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

fn relay_upgrade(
    mut res: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined the upgrade; its answer goes back as an ordinary response.
        sanitize::strip_response_headers(res.headers_mut(), false);
        return Ok((res, in_flight));
    }
    let upstream = hyper::upgrade::on(&mut res);
    sanitize::strip_response_headers(res.headers_mut(), true);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "websocket relay ended");
        }
    });
    Ok((res, in_flight))
}
