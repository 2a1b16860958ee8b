//! A JWKS server for tests: serves one document that tests can swap, counts the fetches,
//! and can go down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves a JWK Set at every path.
pub struct JwksServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct State {
    doc: Mutex<String>,
    fetches: AtomicUsize,
}

impl JwksServer {
    /// Plain HTTP on 127.0.0.1 (Drawbridge allows plain HTTP to loopback only).
    pub async fn start(doc: &str) -> JwksServer {
        Self::serve(doc, None).await
    }

    /// HTTPS on 127.0.0.1 presenting `leaf`.
    pub async fn start_tls(doc: &str, leaf: &crate::certs::Leaf) -> JwksServer {
        Self::serve(doc, Some(crate::upstream::tls_acceptor(leaf))).await
    }

    async fn serve(doc: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            doc: Mutex::new(doc.to_string()),
            fetches: AtomicUsize::new(0),
        });
        let is_tls = tls.is_some();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let st = st.clone();
                        async move {
                            st.fetches.fetch_add(1, Ordering::SeqCst);
                            let doc = st.doc.lock().expect("doc").clone();
                            let mut res = Response::new(Full::new(Bytes::from(doc)));
                            *res.status_mut() = StatusCode::OK;
                            res.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/jwk-set+json"),
                            );
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            tls: is_tls,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    /// The document's address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/jwks.json", self.addr)
    }

    /// Serves `doc` from now on.
    pub fn set(&self, doc: &str) {
        *self.state.doc.lock().expect("doc") = doc.to_string();
    }

    /// How many times the document was fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Stops listening: fetches from now on are refused.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().expect("task").take() {
            t.abort();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}
