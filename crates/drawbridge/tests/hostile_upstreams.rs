//! Upstreams are not trusted either: a response whose framing two parsers could read two
//! ways, or a flood of interim responses, is answered 502 and its connection never reused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drawbridge_testkit::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request on every connection with `reply`; counts the
/// connections it accepted.
async fn canned(reply: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    scripted(move |_, _, _| Some(reply.clone())).await
}

/// An upstream that answers the `n`th request on its `c`th connection (both from 0), whose
/// head is `h`, with `reply(c, n, h)`, and closes that connection unanswered at `None`;
/// counts the connections it accepted.
async fn scripted(
    reply: impl Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let conn = c.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let Some(r) = reply(conn, served, &String::from_utf8_lossy(&head)) else {
                            return;
                        };
                        served += 1;
                        if s.write_all(&r).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), conns)
}

/// Drawbridge with one public route to `url`, which it never retries.
async fn without_retries(url: &str) -> Harness {
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{url}\"]\nretries = 0\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n"
    ));
    Harness::start(&cfg).await
}

#[tokio::test]
async fn ambiguous_upstream_framing_is_502_and_the_connection_is_dropped() {
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "transfer-encoding with content-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "two different content-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        ),
        (
            "a thousand interim responses",
            {
                let mut r = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
                r.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                r
            },
        ),
    ];
    for (name, reply) in cases {
        let (url, conns) = canned(reply).await;
        let h = without_retries(&url).await;
        for i in 0..2 {
            let req = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let reply = raw(h.addr, req, Duration::from_secs(3)).await;
            assert_eq!(status_of(&reply), 502, "{name} #{i}: {reply}");
            assert!(
                !reply.contains("hello") && !reply.ends_with("ok"),
                "{name}: {reply}"
            );
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            2,
            "{name}: a connection was reused"
        );
    }
}

/// Interim responses are counted per exchange, not per connection: a kept-alive upstream
/// connection that sends a few before each final response serves every request on it.
#[tokio::test]
async fn a_few_interim_responses_before_each_answer_pass_on_a_reused_connection() {
    let mut reply = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n".repeat(6);
    reply.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let (url, conns) = canned(reply).await;
    let h = without_retries(&url).await;
    for i in 0..3 {
        let req = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let reply = raw(h.addr, req, Duration::from_secs(3)).await;
        assert_eq!(status_of(&reply), 200, "request {i}: {reply}");
        assert!(reply.ends_with("ok"), "request {i}: {reply}");
    }
    // Six a request, eighteen in all on the one connection: more than a flood's eight.
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the connection was not reused"
    );
}

/// A request sent again on a new connection (its pooled one had been closed by the
/// upstream while idle) is held to the same interim-response limit as the first attempt.
#[tokio::test]
async fn an_interim_flood_on_the_resend_after_a_stale_connection_is_502() {
    let (url, conns) = scripted(|conn, served, _| match (conn, served) {
        // The first connection answers once, then closes on the next request unanswered:
        // what a pooled connection the upstream timed out looks like.
        (0, 0) => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        (0, _) => None,
        _ => {
            let mut r = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
            r.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            Some(r)
        }
    })
    .await;
    let h = without_retries(&url).await;
    let req = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let first = raw(h.addr, req, Duration::from_secs(3)).await;
    assert_eq!(status_of(&first), 200, "{first}");
    // Idle long enough for the pooled connection to be sent again on failure.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = raw(h.addr, req, Duration::from_secs(3)).await;
    assert_eq!(status_of(&second), 502, "{second}");
    assert!(!second.ends_with("ok"), "{second}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the request was not sent again"
    );
}

/// A request sent again on a new connection (its pooled one closed by the upstream while
/// idle) is the request the route admitted: same target, query and headers.
#[tokio::test]
async fn a_request_sent_again_after_a_stale_connection_is_the_same_request() {
    let (url, conns) = scripted(|conn, served, head| match (conn, served) {
        (0, 0) => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        (0, _) => None,
        _ => {
            // Echo the head the upstream was sent.
            let body = head.replace("\r\n", "|");
            Some(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        }
    })
    .await;
    let h = without_retries(&url).await;
    let first = raw(
        h.addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&first), 200, "{first}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = raw(
        h.addr,
        b"GET /a/%7e/../b?q=1&r=%20 HTTP/1.1\r\nHost: x\r\nX-Custom: kept\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&second), 200, "{second}");
    let echoed = second.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        echoed.starts_with("GET /a/b?q=1&r=%20 HTTP/1.1|"),
        "resent as: {echoed}"
    );
    assert!(echoed.contains("|x-custom: kept|"), "resent as: {echoed}");
    assert!(echoed.contains("|host: x|"), "resent as: {echoed}");
    assert_eq!(conns.load(Ordering::SeqCst), 2, "not sent again");
}

/// An HTTP/1.0 upstream's version is its own: the client keeps HTTP/1.1 and its kept-alive
/// connection, whatever the upstream speaks.
#[tokio::test]
async fn an_http_10_upstream_does_not_downgrade_the_client() {
    let (url, _) = canned(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{url}\"]\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n"
    ));
    let h = Harness::start(&cfg).await;
    // Two requests on one connection: the second is answered only if the first kept it open.
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw(h.addr, req, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert!(!reply.contains("HTTP/1.0"), "{reply}");
}
