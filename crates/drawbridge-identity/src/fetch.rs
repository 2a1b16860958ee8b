//! Drawbridge's own small HTTPS client for what it asks identity providers (JWK Sets,
//! discovery documents, tokens), bounded in time and size.
//!
//! One request per connection: these calls are rare (a key refresh every few minutes, a
//! sign-in now and then), so pooling would buy nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_config::JwksUrl;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Largest JWK Set accepted; real ones are a few kilobytes.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Fetches one address (or posts to it).
pub struct Fetcher {
    url: JwksUrl,
    timeout: Duration,
    /// The TLS settings for an `https` address, made once when the configuration is
    /// compiled (the system's roots are read from disk then, never per fetch, and never on
    /// a runtime thread serving requests).
    tls: Option<Result<Arc<rustls::ClientConfig>, Arc<FetchError>>>,
}

impl Fetcher {
    /// A client for `url`, each exchange bounded by `timeout`.
    pub fn new(url: JwksUrl, timeout: Duration) -> Self {
        let tls = url.tls.then(|| tls_config(&url).map_err(Arc::new));
        Self { url, timeout, tls }
    }

    /// The address, for logs.
    pub(crate) fn url(&self) -> &str {
        &self.url.url
    }

    /// The document at the address, or why not (any status but 200 is a failure).
    pub(crate) async fn get(&self) -> Result<Bytes, FetchError> {
        let (status, body) = self
            .send(Call {
                body: None,
                authorization: None,
                accept: "application/jwk-set+json, application/json",
                headers: &[],
            })
            .await?;
        if status != StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        Ok(body)
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) with `authorization`, and returns
    /// the status and the body, whatever the status: an OAuth error is a JSON body too.
    pub(crate) async fn post_form(
        &self,
        form: String,
        authorization: Option<&str>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.send(Call {
            body: Some(("application/x-www-form-urlencoded", Bytes::from(form))),
            authorization,
            accept: "application/json",
            headers: &[],
        })
        .await
    }

    /// POSTs `body` (`application/json`) with `headers`; the status the server answered.
    pub async fn post_json(
        &self,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<StatusCode, FetchError> {
        self.post("application/json", body, headers)
            .await
            .map(|(status, _)| status)
    }

    /// POSTs `body` of type `kind` with `headers`; the status and body answered.
    pub async fn post(
        &self,
        kind: &'static str,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.send(Call {
            body: Some((kind, body)),
            authorization: None,
            accept: "*/*",
            headers,
        })
        .await
    }

    async fn send(&self, call: Call<'_>) -> Result<(StatusCode, Bytes), FetchError> {
        tokio::time::timeout(self.timeout, self.send_unbounded(call))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn send_unbounded(&self, call: Call<'_>) -> Result<(StatusCode, Bytes), FetchError> {
        let u = &self.url;
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if u.tls {
            let config = match &self.tls {
                Some(Ok(c)) => c.clone(),
                Some(Err(e)) => return Err(FetchError::Settings(e.clone())),
                None => return Err(FetchError::NoTls),
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = ServerName::try_from(u.host.clone())
                .map_err(|_| FetchError::ServerName(u.host.clone()))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(FetchError::Tls)?;
            self.exchange(TokioIo::new(stream), call).await
        } else {
            self.exchange(TokioIo::new(tcp), call).await
        }
    }

    async fn exchange<T>(&self, io: T, call: Call<'_>) -> Result<(StatusCode, Bytes), FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(FetchError::Http)?;
        let driver = tokio::spawn(conn);
        let host = if self.url.host.contains(':') {
            format!("[{}]:{}", self.url.host, self.url.port)
        } else {
            format!("{}:{}", self.url.host, self.url.port)
        };
        let mut req = Request::builder()
            .uri(self.url.path.as_str())
            .header(header::HOST, host)
            .header(header::ACCEPT, call.accept)
            .header(header::USER_AGENT, "drawbridge")
            .header(header::CACHE_CONTROL, "no-store");
        if let Some(a) = call.authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        for (name, value) in call.headers {
            req = req.header(*name, value.as_str());
        }
        let body = match call.body {
            Some((kind, body)) => {
                req = req
                    .method(http::Method::POST)
                    .header(header::CONTENT_TYPE, kind);
                Full::new(body)
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(FetchError::Request)?;
        let result = async {
            let res = sender.send_request(req).await.map_err(FetchError::Http)?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(FetchError::Body)?;
            Ok((status, body.to_bytes()))
        }
        .await;
        driver.abort();
        result
    }
}

/// One request: a GET, or a POST of a body of some type.
struct Call<'a> {
    body: Option<(&'static str, Bytes)>,
    authorization: Option<&'a str>,
    accept: &'static str,
    headers: &'a [(&'static str, String)],
}

/// Why a JWK Set could not be fetched, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The whole fetch took longer than the issuer's `jwks_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS settings could not be made (a CA rejected, no roots).
    #[error("tls settings: {0}")]
    Settings(#[source] Arc<FetchError>),
    /// An `https` address without TLS settings (cannot happen: they are made with it).
    #[error("tls: no settings")]
    NoTls,
    /// A CA certificate rustls refuses.
    #[error("tls: CA certificate rejected: {0}")]
    Ca(#[source] rustls::Error),
    /// No trusted root at all.
    #[error("tls: no trusted root certificates (set `jwks_ca_file`)")]
    NoRoots,
    /// The TLS protocol versions could not be set.
    #[error("tls: {0}")]
    Versions(#[source] rustls::Error),
    /// The host is not a TLS server name.
    #[error("tls: `{0}` is not a server name")]
    ServerName(String),
    /// The TLS handshake failed.
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[source] http::Error),
    /// The issuer answered with another status than 200.
    #[error("status {0}")]
    Status(u16),
    /// The body could not be read (or was larger than allowed).
    #[error("body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The TLS client settings for `url`: its configured CA, or the system's roots.
fn tls_config(url: &JwksUrl) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match &url.ca {
        Some(certs) => {
            for c in certs {
                roots.add(c.clone()).map_err(FetchError::Ca)?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(FetchError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(FetchError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
