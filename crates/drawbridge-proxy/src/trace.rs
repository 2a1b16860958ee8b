//! OpenTelemetry traces (`[tracing]`): one server span per request, its phases as events,
//! exported over OTLP/HTTP by the SDK's batch processor on its own thread (a full queue
//! drops spans, never waits). A `traceparent` (and `tracestate`) is continued only from a
//! trusted source; any other caller's is replaced by Drawbridge's own, which is what the
//! upstream receives. The span carries the request id and the principal, and the access
//! log and the audit trail carry the trace id, so the three are joined.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use drawbridge_identity::fetch::Fetcher;
use drawbridge_telemetry::AccessEvent;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

/// How often queued spans are sent; and the most kept waiting.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
const MAX_QUEUED: usize = 8192;

/// The process's tracer, for one `[tracing]` configuration.
pub struct Tracing {
    config: drawbridge_config::Tracing,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    fn new(config: &drawbridge_config::Tracing) -> Result<Tracing, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let client = Client {
            fetcher: Arc::new(Fetcher::new(
                config.endpoint.clone(),
                Duration::from_secs(10),
            )),
            runtime: tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.url.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .with_max_queue_size(MAX_QUEUED)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("drawbridge");
        Ok(Tracing {
            config: config.clone(),
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The span of a request that just arrived from `peer` with `headers`: continuing the
    /// caller's trace when `peer` is a trusted source, a new trace otherwise.
    pub fn begin(&self, peer: IpAddr, headers: &HeaderMap) -> Trace {
        let parent = if self
            .config
            .trusted_sources
            .iter()
            .any(|n| n.contains(&peer))
        {
            self.propagator.extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        Trace { span }
    }

    /// Sends what is queued (at shutdown), waiting on this thread.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// One request's span.
pub struct Trace {
    span: opentelemetry_sdk::trace::Span,
}

impl Trace {
    /// The trace id, as the logs carry it.
    pub fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Marks a moment of the request (a phase done).
    pub fn event(&mut self, name: &'static str) {
        if self.span.is_recording() {
            self.span.add_event(name, Vec::new());
        }
    }

    /// Puts this span's context on the request to the upstream, in place of whatever the
    /// client sent.
    pub fn inject(&self, tracing: &Tracing, headers: &mut HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        tracing
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
            headers.remove("tracestate");
        }
    }

    /// Ends the span with what the access-log record says of the request.
    pub fn end(mut self, event: &AccessEvent) {
        if !self.span.is_recording() {
            return;
        }
        let route = event.route.as_deref().unwrap_or("(none)");
        self.span.update_name(format!("{} {route}", event.method));
        let mut attrs = vec![
            KeyValue::new("http.request.method", event.method.to_string()),
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("url.path", event.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(event.status)),
            KeyValue::new("network.protocol.name", event.protocol),
            KeyValue::new("drawbridge.request_id", event.request_id.to_string()),
            KeyValue::new("drawbridge.listener", event.listener.to_string()),
        ];
        if let Some(p) = &event.principal {
            attrs.push(KeyValue::new("enduser.id", p.clone()));
        }
        if let Some(u) = &event.upstream {
            attrs.push(KeyValue::new("drawbridge.upstream", u.to_string()));
        }
        if let Some(phase) = event.phase {
            attrs.push(KeyValue::new(
                "drawbridge.refused_in",
                serde_json::to_value(phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ));
        }
        self.span.set_attributes(attrs);
        if event.status >= 500 {
            self.span
                .set_status(Status::error(event.reason.clone().unwrap_or_default()));
        }
        self.span.end_with_timestamp(SystemTime::now());
    }
}

/// The tracer `config` asks for: `previous` when its settings did not change. Built where a
/// snapshot comes into force (it starts the exporter's thread), never by `check`.
pub fn build(
    config: Option<&drawbridge_config::Tracing>,
    previous: Option<&Arc<Tracing>>,
) -> Result<Option<Arc<Tracing>>, String> {
    Ok(match (config, previous) {
        (None, _) => None,
        (Some(c), Some(prev)) if prev.config == *c => Some(prev.clone()),
        (Some(c), _) => Some(Arc::new(Tracing::new(c)?)),
    })
}

/// The exporter's HTTP client: Drawbridge's own (rustls on aws-lc-rs, bounded in time),
/// run on the proxy's runtime whatever thread the batch processor exports from.
struct Client {
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drawbridge OTLP client")
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let fetcher = self.fetcher.clone();
        let body = request.into_body();
        let (status, body) = self
            .runtime
            .spawn(async move { fetcher.post("application/x-protobuf", body, &[]).await })
            .await??;
        Ok(http::Response::builder().status(status).body(body)?)
    }
}
