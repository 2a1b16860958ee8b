//! Malformed and smuggling-shaped HTTP/1.1 on raw sockets: each is refused, or normalised so
//! that the upstream sees exactly one well-formed request; framing errors close the connection.

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;

struct Case {
    name: &'static str,
    request: &'static [u8],
    /// `None`: must be refused with 400 and the connection closed, nothing forwarded.
    /// `Some(target)`: may be served, but the upstream sees exactly one request, for `target`,
    /// with an empty body, and the connection is closed.
    served_as: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped, and the
        // connection closes after the response, so the smuggled request is never read.
        name: "content-length and transfer-encoding",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: Some("/a"),
    },
    Case {
        name: "transfer-encoding and content-length (reversed order)",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: Some("/a"),
    },
    Case {
        name: "two different content-lengths",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "content-length list",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "signed content-length",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
        served_as: None,
    },
    Case {
        name: "transfer-encoding xchunked",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "transfer-encoding chunked then identity",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "space before colon",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd",
        served_as: None,
    },
    Case {
        name: "obs-folded header",
        request: b"GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "bare LF line endings",
        request: b"GET /a HTTP/1.1\nHost: x\nConnection: close\n\n",
        served_as: Some("/a"),
    },
    Case {
        name: "invalid chunk size",
        request: b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "request line with two spaces",
        request: b"GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "two host headers",
        request: b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "user info in an absolute-form target",
        request: b"GET http://admin@x/a HTTP/1.1\r\nHost: x\r\n\r\n",
        served_as: None,
    },
    Case {
        name: "HTTP/1.1 without host",
        request: b"GET /a HTTP/1.1\r\n\r\n",
        served_as: None,
    },
];

#[tokio::test]
async fn smuggling_shapes_are_refused_or_normalised() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let mut failures = Vec::new();
    for case in CASES {
        up.clear();
        let (reply, closed) = raw_closed(h.addr, case.request).await;
        let status = status_of(&reply);
        let seen: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
        match case.served_as {
            None => {
                if status != 400
                    || !closed
                    || !seen.is_empty()
                    || reply.matches("HTTP/1.1").count() != 1
                {
                    failures.push(format!(
                        "{}: status {status}, closed {closed}, upstream saw {seen:?}\n{reply}",
                        case.name
                    ));
                }
            }
            Some(target) => {
                let empty = up.received().iter().all(|r| r.body.is_empty());
                if seen != [target.to_string()] || !empty || !closed {
                    failures.push(format!(
                        "{}: status {status}, closed {closed}, upstream saw {seen:?}",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[tokio::test]
async fn chunked_bodies_are_reframed_for_the_upstream() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let req = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (reply, _) = raw_closed(h.addr, req).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"abcdef");
    assert_eq!(got[0].target, "/a");
}

#[tokio::test]
async fn pipelined_requests_are_forwarded_one_by_one() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let req = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (reply, closed) = raw_closed(h.addr, req).await;
    assert!(closed);
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 3, "{reply}");
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two", "/three"]);
}
