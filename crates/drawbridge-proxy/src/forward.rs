//! Phase 10, forward: pick an endpoint, send, retry only what is safe to retry, classify
//! failures, and relay WebSocket upgrades once the request was admitted.

use std::error::Error as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_telemetry::metrics::UpstreamFailure;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;

use crate::body::{BodyError, RequestBody};
use crate::deadline::Deadline;
use crate::rescue::{ProxyError, UpstreamError};
use crate::sanitize;
use crate::transport::{Checkout, Sender};
use crate::tunnel::Lease;
use crate::upstream::{InFlight, PickError, UpstreamPool};

/// A request ready to leave: everything but the endpoint.
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Canonical path and the client's query.
    pub path_and_query: PathAndQuery,
    /// The host the client asked for (`Host` or `:authority`), passed on to the upstream.
    pub host: Option<HeaderValue>,
    /// Headers after sanitize and mutate.
    pub headers: HeaderMap,
    /// Body.
    pub body: RequestBody,
    /// The client's side of an admitted WebSocket upgrade.
    pub upgrade: Option<OnUpgrade>,
    /// How long an upgraded tunnel may live, and what ends it (boxed: a kilobyte that only
    /// upgrades carry).
    pub lease: Option<Box<Lease>>,
}

/// What came back from the upstream.
pub struct Forwarded {
    /// The response, hop-by-hop headers removed.
    pub response: Response<Incoming>,
    /// The endpoint that answered, for the access log.
    pub endpoint: Arc<str>,
    /// Counts the request against its endpoint until the response ends (a tunnel's relay
    /// holds it instead).
    pub in_flight: Option<InFlight>,
    /// The HTTP/1.1 connection, to return to the pool once the body was read to its end.
    pub reuse: Option<crate::transport::Http1>,
    /// When the response stream must end at the latest.
    pub deadline: Option<Deadline>,
    /// An upgraded tunnel's relay, waiting for the request's record and connection.
    pub tunnel: Option<tokio::sync::oneshot::Sender<crate::websocket::Kept>>,
}

/// A pooled connection idle this long may have been closed by the upstream: a request that
/// is safe to repeat is kept so that it can go again on a new connection.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// Sends `out` to `pool`; `sent` is when the forward step began (the first attempt's
/// timeout runs from it, read once for the step and its timing).
///
/// A plain function around an `async move` block that uses `out` in place: an `async fn`
/// would keep each of its fields a second time, in every request's state, for as long as
/// the upstream takes to answer.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a copy of each argument beside the one it moves"
)]
pub fn forward(
    pool: &Arc<UpstreamPool>,
    mut out: Outgoing,
    sent: std::time::Instant,
) -> impl Future<Output = Result<Forwarded, ProxyError>> + Send + '_ {
    async move {
        if out.upgrade.is_some() {
            out.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            out.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        // Safe to send twice: idempotent (RFC 9110 §9.2.2) and nothing to stream.
        let repeatable = is_idempotent(&out.method)
            && http_body::Body::is_end_stream(&out.body)
            && out.upgrade.is_none();
        // Retries go to another endpoint, so only with more than one.
        let attempts = if repeatable && pool.endpoints.len() > 1 {
            1 + pool.retries
        } else {
            1
        };
        // Whether the client finished sending its body: a deadline missed before it did is
        // the client's doing, never counted against the upstream.
        let body_progress = out.body.progress();
        let (body_limit, body_idle) = out.body.bounds();
        // An exchange that failed because the client's body did is the client's failure,
        // however the upstream connection reports it (HTTP/2 surfaces a reset without the
        // cause).
        let client_fault = || {
            body_progress
                .as_ref()
                .and_then(|p| p.client_fault(body_limit, body_idle))
                .map(|e| body_failure(&e))
        };
        let mut last_endpoint = None;
        let mut last_err = None;
        for attempt in 0..attempts {
            let in_flight = match (pool.pick(last_endpoint), last_err.take()) {
                (Ok(f), _) => f,
                // Keep the failure that made us retry; it says more than "no endpoint left".
                (Err(_), Some(prev)) => return Err(prev),
                (Err(PickError::NoHealthy), None) => return Err(ProxyError::NoHealthyEndpoint),
                (Err(PickError::AtCapacity), None) => return Err(ProxyError::UpstreamAtCapacity),
            };
            last_endpoint = Some(in_flight.index());
            let started = if attempt == 0 {
                sent
            } else {
                std::time::Instant::now()
            };
            // The last attempt takes the target, headers and body; earlier ones (only ever
            // of a request with nothing to stream) send copies. In a block of its own, so
            // that nothing of it is kept while the upstream answers.
            let exchange = {
                let (path_and_query, headers, body) = if attempt + 1 == attempts {
                    (
                        std::mem::replace(&mut out.path_and_query, PathAndQuery::from_static("/")),
                        std::mem::take(&mut out.headers),
                        std::mem::replace(&mut out.body, RequestBody::empty()),
                    )
                } else {
                    (
                        out.path_and_query.clone(),
                        out.headers.clone(),
                        RequestBody::empty(),
                    )
                };
                Exchange {
                    method: &out.method,
                    path_and_query,
                    host: out.host.as_ref(),
                    headers,
                    body,
                    repeatable,
                    http1_only: out.upgrade.is_some(),
                    started,
                }
            };
            let outcome = crate::timer::within(
                (started + pool.request_timeout).into(),
                exchange.run(pool, &in_flight),
            )
            .await;
            let err = match outcome {
                Ok(Ok((response, _))) if ambiguous_framing(response.headers()) => {
                    // Two readers could take the body two ways: the answer is not forwarded
                    // and the connection, dropped here with its sender, is never reused.
                    in_flight.failed();
                    tracing::warn!(upstream = %pool.name, endpoint = %in_flight.endpoint().label, "upstream response with ambiguous framing");
                    return Err(UpstreamError::AmbiguousFraming.into());
                }
                Ok(Ok((mut response, reuse))) => {
                    in_flight.succeeded();
                    if let Some(client) = out.upgrade.take() {
                        return relay_upgrade(response, client, in_flight, out.lease.take());
                    }
                    sanitize::strip_response_headers(response.headers_mut(), false);
                    // The upstream's protocol is its own: the client's connection keeps its
                    // version and keep-alive (hyper answers an HTTP/1.0 client in HTTP/1.0).
                    *response.version_mut() = Version::HTTP_11;
                    return Ok(Forwarded {
                        response,
                        endpoint: in_flight.endpoint().label.clone(),
                        in_flight: Some(in_flight),
                        reuse,
                        deadline: None,
                        tunnel: None,
                    });
                }
                Ok(Err(Failure::Client(e))) => return Err(e),
                Ok(Err(Failure::Upstream(e))) => match client_fault() {
                    Some(client) => return Err(client),
                    // No socket to be had here: the endpoint's health is not in question.
                    None if matches!(
                        e,
                        ProxyError::UpstreamFailed(UpstreamError::Connect(
                            crate::transport::ConnectError::OutOfDescriptors(_)
                        ))
                    ) =>
                    {
                        e
                    }
                    None => {
                        in_flight.failed();
                        e
                    }
                },
                Err(_) if body_progress.as_ref().is_some_and(|p| !p.done()) => {
                    return Err(
                        client_fault().unwrap_or(ProxyError::BodyTimeout(pool.request_timeout))
                    );
                }
                Err(_) => {
                    in_flight.failed();
                    ProxyError::UpstreamTimeout(pool.request_timeout)
                }
            };
            pool.metrics.failure(match &err {
                ProxyError::UpstreamFailed(UpstreamError::Connect(_)) => UpstreamFailure::Connect,
                ProxyError::UpstreamTimeout(_) => UpstreamFailure::Timeout,
                _ => UpstreamFailure::Failed,
            });
            if attempt + 1 < attempts {
                pool.metrics.retry();
            }
            tracing::debug!(upstream = %pool.name, endpoint = %in_flight.endpoint().label, attempt, error = %err, "upstream attempt failed");
            last_err = Some(err);
        }
        Err(last_err.unwrap_or(ProxyError::NoHealthyEndpoint))
    }
}

/// Most interim (1xx) responses an upstream may send before its final one.
const MAX_INTERIM: u32 = 8;

/// Why an exchange failed: the client's fault (its body) or the upstream's.
enum Failure {
    Client(ProxyError),
    Upstream(ProxyError),
}

/// One request to one endpoint.
struct Exchange<'a> {
    method: &'a Method,
    path_and_query: PathAndQuery,
    host: Option<&'a HeaderValue>,
    headers: HeaderMap,
    body: RequestBody,
    repeatable: bool,
    http1_only: bool,
    /// When the attempt began.
    started: std::time::Instant,
}

type Exchanged = (Response<Incoming>, Option<crate::transport::Http1>);

/// Where a request goes and as what, to build it for whichever connection takes it.
struct Target<'a> {
    method: &'a Method,
    host: Option<&'a HeaderValue>,
}

impl<'a> Exchange<'a> {
    /// The exchange, its fields used in place (see [`forward`]); what is held while the
    /// upstream answers is the connection, the request's copy for a resend (rarely, boxed)
    /// and hyper's own future.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a copy of each argument beside the one it moves"
    )]
    fn run(
        mut self,
        pool: &'a UpstreamPool,
        in_flight: &'a InFlight,
    ) -> impl Future<Output = Result<Exchanged, Failure>> + Send + 'a {
        async move {
            if pool.settings.host_header == drawbridge_config::HostHeader::Endpoint {
                // The endpoint's own authority; the client's went as X-Forwarded-Host.
                self.host = None;
                self.headers.remove(header::HOST);
            }
            let target = Target {
                method: self.method,
                host: self.host,
            };
            let ep = in_flight.endpoint();
            let Checkout {
                mut sender,
                idle_for,
            } = pool
                .transport
                .checkout(&ep.endpoint, &ep.conns, self.http1_only, self.started)
                .await
                .map_err(connect_failed)?;
            let kept = (self.repeatable && idle_for >= STALE_AFTER)
                .then(|| Box::new((self.path_and_query.clone(), self.headers.clone())));
            let req = target.build(&sender, ep, self.path_and_query, self.headers, self.body)?;
            let sent = sender.send(req).await;
            flooded(&sender)?;
            let (sender, result) = match sent {
                Ok(res) => (sender, Ok(res)),
                // Boxed: rare, and its state would otherwise enlarge every request's future.
                Err(e) => {
                    Box::pin(resend(&target, pool, ep, self.http1_only, e, kept, sender)).await?
                }
            };
            match (result, sender) {
                (Ok(res), Sender::Http1(s)) if !self.http1_only => Ok((res, Some(s))),
                (Ok(res), _) => Ok((res, None)),
                (Err(e), _) => Err(classify(e)),
            }
        }
    }
}

impl Target<'_> {
    /// The request as `sender` takes it: origin-form with `Host` for HTTP/1.1, absolute with
    /// the client's authority (and no `Host`) for HTTP/2.
    fn build(
        &self,
        sender: &Sender,
        ep: &crate::upstream::EndpointState,
        path_and_query: PathAndQuery,
        mut headers: HeaderMap,
        body: RequestBody,
    ) -> Result<Request<RequestBody>, Failure> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        if sender.is_http2() {
            let authority = self
                .host
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| ep.authority.clone());
            headers.remove(header::HOST);
            *req.uri_mut() = Uri::builder()
                .scheme(ep.scheme.clone())
                .authority(authority)
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| bad_target())?;
            *req.version_mut() = Version::HTTP_2;
        } else {
            if !headers.contains_key(header::HOST) {
                let host = self
                    .host
                    .cloned()
                    .or_else(|| HeaderValue::from_str(ep.authority.as_str()).ok())
                    .ok_or_else(bad_target)?;
                headers.insert(header::HOST, host);
            }
            *req.uri_mut() = Uri::from(path_and_query);
            *req.version_mut() = Version::HTTP_11;
        }
        *req.headers_mut() = headers;
        // Whichever connection takes it, its interim responses are counted.
        sender.watch_interims(&mut req);
        Ok(req)
    }
}

/// A request `sender` failed to send: never written (the connection closed first), or
/// written to a connection the upstream closed while it sat idle (`kept`, its target and
/// headers, when it is safe to send again). A new connection gets it, once; any other
/// failure stands.
async fn resend(
    target: &Target<'_>,
    pool: &UpstreamPool,
    ep: &crate::upstream::EndpointState,
    http1_only: bool,
    mut e: TrySendError<Request<RequestBody>>,
    kept: Option<Box<(PathAndQuery, HeaderMap)>>,
    sender: Sender,
) -> Result<(Sender, Result<Response<Incoming>, hyper::Error>), Failure> {
    let unsent = e.take_message();
    let stale = kept.filter(|_| unsent.is_none() && is_stale(e.error()));
    if unsent.is_none() && stale.is_none() {
        return Ok((sender, Err(e.into_error())));
    }
    drop(sender);
    let mut fresh = pool
        .transport
        .connect(&ep.endpoint, &ep.conns, http1_only)
        .await
        .map_err(connect_failed)?;
    let req = match (unsent, stale) {
        (Some(req), _) => {
            let (parts, body) = req.into_parts();
            // The target it was built with, in either form (origin or absolute).
            let path_and_query = parts.uri.path_and_query().cloned().ok_or_else(bad_target)?;
            target.build(&fresh, ep, path_and_query, parts.headers, body)?
        }
        (None, Some(kept)) => {
            let (path_and_query, headers) = *kept;
            target.build(&fresh, ep, path_and_query, headers, RequestBody::empty())?
        }
        (None, None) => unreachable_exchange()?,
    };
    let r = fresh.send(req).await.map_err(|e| e.into_error());
    flooded(&fresh)?;
    Ok((fresh, r))
}

/// Fails the exchange `sender` just made when the upstream sent more interim responses
/// than allowed before its answer (a final one may have followed them in the same read; a
/// flood without one is bounded in time by the request timeout). The connection goes with
/// the sender: never reused.
fn flooded(sender: &Sender) -> Result<(), Failure> {
    if sender.interims() > MAX_INTERIM {
        return Err(Failure::Upstream(
            UpstreamError::InterimFlood(MAX_INTERIM).into(),
        ));
    }
    Ok(())
}

/// A target the request line cannot carry is the client's.
fn bad_target() -> Failure {
    Failure::Client(ProxyError::BadRequest("unrepresentable request target"))
}

/// A connection that could not be had is the upstream's failure.
fn connect_failed(e: crate::transport::ConnectError) -> Failure {
    Failure::Upstream(ProxyError::UpstreamFailed(UpstreamError::Connect(e)))
}

/// The retry branch is entered only with a request to send; this keeps it total.
fn unreachable_exchange() -> Result<Request<RequestBody>, Failure> {
    Err(Failure::Upstream(UpstreamError::NothingToResend.into()))
}

/// A failure that means the connection was gone before the upstream read the request.
fn is_stale(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut cur = e.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        cur = err.source();
    }
    false
}

fn classify(e: hyper::Error) -> Failure {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return Failure::Client(body_failure(b));
        }
        cur = err.source();
    }
    Failure::Upstream(UpstreamError::Exchange(e).into())
}

/// An upstream response whose length two parsers could read differently: `Transfer-Encoding`
/// beside `Content-Length` (RFC 9112 §6.3 calls it a smuggling attempt to be treated as an
/// error by a proxy), or `Content-Length` values that do not agree.
fn ambiguous_framing(h: &HeaderMap) -> bool {
    // One walk over the few headers of a response, rather than a lookup per name.
    let mut length: Option<&HeaderValue> = None;
    let mut chunked = false;
    for (name, value) in h {
        if name == header::CONTENT_LENGTH {
            if length.is_some_and(|first| first != value) || value.as_bytes().contains(&b',') {
                return true;
            }
            length = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            chunked = true;
        }
    }
    length.is_some() && chunked
}

/// What the client is told when its body failed.
fn body_failure(e: &BodyError) -> ProxyError {
    match e {
        BodyError::TooLarge(n) => ProxyError::BodyTooLarge(*n),
        BodyError::Client(_) | BodyError::Malformed => {
            ProxyError::BadRequest("request body could not be read")
        }
        BodyError::Stalled(d) => ProxyError::BodyTimeout(*d),
    }
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn relay_upgrade(
    mut response: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
    lease: Option<Box<Lease>>,
) -> Result<Forwarded, ProxyError> {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined the upgrade; its answer goes back as an ordinary response.
        sanitize::strip_response_headers(response.headers_mut(), false);
        return Ok(Forwarded {
            response,
            endpoint: in_flight.endpoint().label.clone(),
            in_flight: Some(in_flight),
            reuse: None,
            deadline: None,
            tunnel: None,
        });
    }
    let upstream = hyper::upgrade::on(&mut response);
    sanitize::strip_response_headers(response.headers_mut(), true);
    let endpoint = in_flight.endpoint().label.clone();
    // The tunnel holds the endpoint's in-flight count (and, through its record, the
    // connection) for as long as it lives.
    let tunnel = crate::websocket::relay(client, upstream, in_flight, lease.map(|l| *l));
    Ok(Forwarded {
        response,
        endpoint,
        in_flight: None,
        reuse: None,
        deadline: None,
        tunnel: Some(tunnel),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn framing_two_readers_could_take_two_ways_is_ambiguous() {
        let ambiguous = [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5, 5")],
            &[("content-length", "5"), ("content-length", "5, 5")],
            &[("server", "x"), ("content-length", "5,6"), ("date", "y")],
        ];
        for fields in ambiguous {
            assert!(ambiguous_framing(&headers(fields)), "{fields:?}");
        }
        let clear = [
            &[][..],
            &[("content-length", "5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("transfer-encoding", "chunked")],
            &[("server", "x"), ("content-length", "0"), ("date", "y")],
        ];
        for fields in clear {
            assert!(!ambiguous_framing(&headers(fields)), "{fields:?}");
        }
    }
}
