//! Traces through the real server, exported over OTLP/HTTP to a real receiver that decodes
//! them with the OpenTelemetry protocol's own types: one server span per request, continuing
//! a trusted caller's trace and replacing an untrusted one's, its context propagated to the
//! upstream, and joined to the access log by the trace id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// An OTLP/HTTP traces receiver on 127.0.0.1: keeps every span it is sent.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    service: Arc<Mutex<Option<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let service: Arc<Mutex<Option<String>>> = Arc::default();
        let (kept, named) = (spans.clone(), service.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (kept, named) = (kept.clone(), named.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (kept, named) = (kept.clone(), named.clone());
                            async move {
                                assert_eq!(req.uri().path(), "/v1/traces");
                                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                                let body =
                                    req.into_body().collect().await.expect("body").to_bytes();
                                let export =
                                    ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                                for rs in export.resource_spans {
                                    for kv in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                                        if kv.key == "service.name"
                                            && let Some(AnyValue::StringValue(s)) =
                                                kv.value.as_ref().and_then(|v| v.value.clone())
                                        {
                                            *named.lock().expect("lock") = Some(s);
                                        }
                                    }
                                    for ss in rs.scope_spans {
                                        kept.lock().expect("lock").extend(ss.spans);
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            spans,
            service,
        }
    }

    async fn spans(&self, n: usize) -> Vec<Span> {
        for _ in 0..100 {
            if self.spans.lock().expect("lock").len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spans.lock().expect("lock").clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

async fn setup(receiver: &Receiver, tracing: &str) -> (Harness, RecordingUpstream) {
    let up = RecordingUpstream::start().await;
    let cfg = config(&format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nservice_name = \"edge-gateway\"\n{tracing}\n\n{}",
        receiver.addr,
        upstream_and_route("app", &up.url())
    ))
    .server("access_log", "access.jsonl");
    (Harness::start(&cfg).await, up)
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_trusted_callers_trace_is_continued_and_propagated() {
    let receiver = Receiver::start().await;
    let (h, up) = setup(&receiver, "trusted_sources = [\"127.0.0.1\"]").await;
    let r = get_with(
        &h.url("/orders/7"),
        &[
            (
                "traceparent",
                &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
            ),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The upstream sees the caller's trace, with Drawbridge's span as its parent.
    let got = up.last().expect("forwarded");
    let tp = got
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", CALLER_TRACE, "01"),
        "{tp}"
    );
    assert_ne!(parts[2], CALLER_SPAN, "Drawbridge's own span is the parent");
    assert_eq!(got.header("tracestate"), Some("vendor=abc"));

    let spans = receiver.spans(1).await;
    assert_eq!(spans.len(), 1, "one span per request");
    let s = &spans[0];
    assert_eq!(hex(&s.trace_id), CALLER_TRACE);
    assert_eq!(hex(&s.parent_span_id), CALLER_SPAN);
    assert_eq!(hex(&s.span_id), parts[2]);
    assert_eq!(s.name, "GET all");
    assert_eq!(s.kind, 2, "a server span");
    assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(s, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(
        attr(s, "drawbridge.request_id").as_deref(),
        got.header("x-request-id"),
        "the span names the request"
    );
    let events: Vec<&str> = s.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["admitted", "upstream.response"]);
    assert!(s.end_time_unix_nano > s.start_time_unix_nano);
    assert_eq!(
        receiver.service.lock().expect("lock").as_deref(),
        Some("edge-gateway")
    );
    // The access log carries the trace id.
    let lines = json_lines(&h.dir.path().join("access.jsonl"), 1, |_| true).await;
    assert_eq!(lines[0]["trace_id"], CALLER_TRACE);
}

#[tokio::test]
async fn an_untrusted_callers_trace_is_replaced() {
    let receiver = Receiver::start().await;
    let (h, up) = setup(&receiver, "").await;
    let r = get_with(
        &h.url("/x"),
        &[
            (
                "traceparent",
                &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
            ),
            ("tracestate", "vendor=forged"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let got = up.last().expect("forwarded");
    let tp = got
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert!(!tp.contains(CALLER_TRACE), "{tp}");
    assert_eq!(
        got.header("tracestate"),
        None,
        "the caller's state is not passed on"
    );
    let spans = receiver.spans(1).await;
    assert_eq!(spans.len(), 1);
    assert!(spans[0].parent_span_id.is_empty(), "a new trace");
    assert_eq!(
        format!(
            "00-{}-{}-01",
            hex(&spans[0].trace_id),
            hex(&spans[0].span_id)
        ),
        tp
    );
    // A refused request is traced too, and says where it was refused.
    let r = get(&h.url("/a/%2e%2e/%2e%2e/etc")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let spans = receiver.spans(2).await;
    assert_eq!(spans.len(), 2);
    assert_eq!(
        attr(&spans[1], "http.response.status_code").as_deref(),
        Some("400")
    );
    assert_eq!(
        attr(&spans[1], "drawbridge.refused_in").as_deref(),
        Some("sanitize")
    );
    assert_eq!(
        spans[1]
            .events
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["refused"]
    );
}

#[tokio::test]
async fn unsampled_requests_are_not_exported_but_still_propagated() {
    let receiver = Receiver::start().await;
    let (h, up) = setup(&receiver, "sample_ratio = 0.0").await;
    for _ in 0..5 {
        assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
    }
    let tp = up
        .last()
        .and_then(|r| r.header("traceparent").map(str::to_string))
        .expect("traceparent");
    assert!(tp.ends_with("-00"), "not sampled: {tp}");
    h.proxy.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans.lock().expect("lock").is_empty());
}
