//! A cookie-keeping HTTP client that behaves like a browser's navigation, for sign-in
//! tests: `https://` URLs of any host go to Drawbridge's address (with that host as SNI,
//! verified against the test CA), `http://` URLs go where they say (the test IdPs on
//! 127.0.0.1). Redirects are followed and recorded; cookies are kept per host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

/// One response.
#[derive(Debug, Clone)]
pub struct Page {
    /// The URL it answered.
    pub url: String,
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
}

impl Page {
    /// The value of `<input name="NAME" value="...">` in the body.
    pub fn input(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!("name=\"{name}\""))?;
        let start = self.body[..at].rfind('<')?;
        let end = at + self.body[at..].find('>')?;
        let tag = &self.body[start..end];
        let v = tag.split("value=\"").nth(1)?;
        Some(unescape(&v[..v.find('"')?]))
    }

    /// The `action` of the first form in the body.
    pub fn form_action(&self) -> Option<String> {
        let v = self.body.split("action=\"").nth(1)?;
        Some(unescape(&v[..v.find('"')?]))
    }

    /// The `Location` header.
    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION)?.to_str().ok()
    }
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#38;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// A browser.
pub struct Browser {
    drawbridge: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    /// Cookies by host: name -> value.
    pub cookies: BTreeMap<String, BTreeMap<String, String>>,
    /// Every URL requested, in order.
    pub visited: Vec<String>,
}

impl Browser {
    /// A browser whose `https://` requests reach `drawbridge`, trusting `ca_pem`.
    pub fn new(drawbridge: SocketAddr, ca_pem: &str) -> Browser {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("ca");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Browser {
            drawbridge,
            tls: Arc::new(tls),
            cookies: BTreeMap::new(),
            visited: Vec::new(),
        }
    }

    /// The cookie `name` this browser holds for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<&str> {
        self.cookies.get(host)?.get(name).map(String::as_str)
    }

    /// Sets a cookie for `host` as if a page had set it.
    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.cookies
            .entry(host.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    /// A top-level navigation to `url`: GET with a browser's headers, redirects followed
    /// (at most 20). Returns the final page.
    pub async fn navigate(&mut self, url: &str) -> Page {
        let mut page = self.request(Method::GET, url, None, &navigation()).await;
        for _ in 0..20 {
            if !page.status.is_redirection() {
                return page;
            }
            let Some(next) = page.location().map(|l| resolve(&page.url, l)) else {
                return page;
            };
            page = self.request(Method::GET, &next, None, &navigation()).await;
        }
        panic!("too many redirects: {:?}", self.visited);
    }

    /// Submits a form: POST `fields` to `url` (resolved against `from`), then follows the
    /// redirects like a navigation.
    pub async fn submit(&mut self, from: &str, url: &str, fields: &[(&str, &str)]) -> Page {
        let url = resolve(from, url);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut headers = navigation();
        headers.push(("content-type", "application/x-www-form-urlencoded".into()));
        headers.push(("origin", origin_of(&url)));
        let page = self
            .request(Method::POST, &url, Some(Bytes::from(body)), &headers)
            .await;
        if page.status.is_redirection()
            && let Some(next) = page.location().map(|l| resolve(&page.url, l))
        {
            return self.navigate(&next).await;
        }
        page
    }

    /// One request, cookies sent and kept, no redirect followed.
    pub async fn request(
        &mut self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        headers: &[(&str, String)],
    ) -> Page {
        self.visited.push(url.to_string());
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let host = parsed.host_str().expect("host").to_string();
        let port = parsed.port_or_known_default().expect("port");
        let mut req = Request::builder()
            .method(method)
            .uri(&parsed[url::Position::BeforePath..])
            .header(header::HOST, format!("{host}:{port}"));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(jar) = self.cookies.get(&host).filter(|j| !j.is_empty()) {
            let line = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(header::COOKIE, line);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .expect("request");
        let res = if parsed.scheme() == "https" {
            let tcp = TcpStream::connect(self.drawbridge).await.expect("connect");
            let name = ServerName::try_from(host.clone()).expect("server name");
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .expect("tls handshake");
            exchange(TokioIo::new(tls), req).await
        } else {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .expect("connect");
            exchange(TokioIo::new(tcp), req).await
        };
        let (parts, body) = res;
        for c in parts.headers.get_all(header::SET_COOKIE) {
            let c = c.to_str().expect("cookie");
            let first = c.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let jar = self.cookies.entry(host.clone()).or_default();
            let gone = c
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"))
                || c.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
            if gone {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        Page {
            url: url.to_string(),
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> (http::response::Parts, String)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let res = sender.send_request(req).await.expect("response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

/// The headers a browser sends with a top-level navigation.
fn navigation() -> Vec<(&'static str, String)> {
    vec![
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
        ),
        ("sec-fetch-mode", "navigate".into()),
        ("sec-fetch-dest", "document".into()),
        ("user-agent", "drawbridge-tests".into()),
    ]
}

/// `location` resolved against `base`.
pub fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(String::from)
        .unwrap_or_else(|e| panic!("{base} + {location}: {e}"))
}

fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}
