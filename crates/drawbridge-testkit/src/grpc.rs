//! A gRPC upstream (tonic, h2c) with one method per call shape, recording the metadata of
//! every call it receives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Generated from `proto/echo.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("echo");
}

use proto::Msg;
use proto::echo_server::{Echo, EchoServer};

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// The service. `Unary` with text `deny` answers PERMISSION_DENIED with a trailer.
#[derive(Clone, Default)]
pub struct EchoService {
    calls: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
}

impl EchoService {
    fn record<T>(&self, req: &Request<T>) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(req.metadata().clone());
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.record(&req);
        let m = req.into_inner();
        if m.text == "deny" {
            return Err(Status::permission_denied("denied by the upstream"));
        }
        let mut res = Response::new(Msg {
            text: m.text.to_uppercase(),
            n: m.n + 1,
        });
        res.metadata_mut().insert(
            "x-upstream",
            "echo".parse().map_err(|_| Status::internal("metadata"))?,
        );
        Ok(res)
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(&self, req: Request<Msg>) -> Result<Response<MsgStream>, Status> {
        self.record(&req);
        let m = req.into_inner();
        let items: Vec<Result<Msg, Status>> = (0..m.n)
            .map(|i| {
                Ok(Msg {
                    text: format!("{}-{i}", m.text),
                    n: i,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn client_stream(&self, req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        self.record(&req);
        let mut stream = req.into_inner();
        let mut text = String::new();
        let mut n = 0;
        while let Some(m) = stream.next().await {
            let m = m?;
            text.push_str(&m.text);
            n += 1;
        }
        Ok(Response::new(Msg { text, n }))
    }

    type BidiStream = MsgStream;

    async fn bidi(&self, req: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
        self.record(&req);
        let stream = req.into_inner();
        let out = stream.map(|m| {
            m.map(|m| Msg {
                text: format!("echo:{}", m.text),
                n: m.n,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// A running gRPC upstream.
pub struct GrpcUpstream {
    addr: SocketAddr,
    service: EchoService,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc upstream");
        let addr = listener.local_addr().expect("address");
        let service = EchoService::default();
        let svc = EchoServer::new(service.clone());
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            service,
            task,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Metadata of every call received.
    pub fn calls(&self) -> Vec<tonic::metadata::MetadataMap> {
        self.service
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
