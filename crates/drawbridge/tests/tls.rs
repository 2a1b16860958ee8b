//! TLS termination: SNI picks the certificate, ALPN offers h2 and http/1.1, old protocol
//! versions are refused, and the upstream learns the request came over HTTPS.

use std::sync::Arc;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Tls {
    ca: TestCa,
    h: Harness,
    up: RecordingUpstream,
    _certs: tempfile::TempDir,
}

async fn setup(min_version: &str) -> Tls {
    setup_with(min_version, "").await
}

/// The two-certificate listener, with `extra` settings in its `[listeners.tls]`.
async fn setup_with(min_version: &str, extra: &str) -> Tls {
    let ca = TestCa::new("test ca");
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["a.test", "b.test"] {
        let leaf = ca.leaf(&[name]);
        drawbridge_testkit::write_file(dir.path(), &format!("{name}.crt"), &leaf.cert_pem);
        drawbridge_testkit::write_file(dir.path(), &format!("{name}.key"), &leaf.key_pem);
    }
    let d = dir.path().display();
    let cfg = config(&upstream_and_route("app", &up.url())).listener(
        "tls",
        table(&format!(
            "min_version = \"{min_version}\"\n{extra}\n\
             [[certificates]]\ncert = \"{d}/a.test.crt\"\nkey = \"{d}/a.test.key\"\nserver_names = [\"a.test\"]\n\
             [[certificates]]\ncert = \"{d}/b.test.crt\"\nkey = \"{d}/b.test.key\"\nserver_names = [\"b.test\"]\n"
        )),
    );
    let h = Harness::start(&cfg).await;
    Tls {
        ca,
        h,
        up,
        _certs: dir,
    }
}

fn client_config(
    ca: &TestCa,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect(
    t: &Tls,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(t.h.addr).await?;
    TlsConnector::from(client_config(&t.ca, alpn, versions))
        .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
        .await
}

/// GET `uri` over HTTP/2 on the TLS connection `s`.
async fn h2_get(
    s: tokio_rustls::client::TlsStream<TcpStream>,
    uri: &str,
) -> http::Response<hyper::body::Incoming> {
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send.send_request(req).await.expect("response")
}

#[tokio::test]
async fn sni_selects_the_certificate_and_alpn_the_protocol() {
    let t = setup("1.2").await;
    for sni in ["a.test", "b.test"] {
        // The client verifies the certificate against `sni`: a wrong pick fails the handshake.
        let s = connect(&t, sni, &[b"h2", b"http/1.1"], &[&rustls::version::TLS13])
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let res = h2_get(s, &format!("https://{sni}/x")).await;
        assert_eq!(res.status(), 200);
        let _ = res.into_body().collect().await;
        let got = t.up.last().expect("forwarded");
        assert_eq!(got.header("x-forwarded-proto"), Some("https"));
        assert_eq!(got.header("x-forwarded-host"), Some(sni));
    }
    // HTTP/1.1 over TLS 1.2.
    let s = connect(&t, "a.test", &[b"http/1.1"], &[&rustls::version::TLS12])
        .await
        .expect("tls 1.2");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = http::Request::get("/y")
        .header("host", "a.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send.send_request(req).await.expect("response").status(),
        200
    );
}

#[tokio::test]
async fn tls_13_only_listeners_refuse_tls_12() {
    let t = setup("1.3").await;
    assert!(
        connect(&t, "a.test", &[b"http/1.1"], &[&rustls::version::TLS12])
            .await
            .is_err()
    );
    assert!(
        connect(&t, "a.test", &[b"http/1.1"], &[&rustls::version::TLS13])
            .await
            .is_ok()
    );
    assert_eq!(t.up.count(), 0);
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_is_a_config_error() {
    let ca = TestCa::new("test ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    drawbridge_testkit::write_file(dir.path(), "a.crt", &a.cert_pem);
    drawbridge_testkit::write_file(dir.path(), "b.key", &b.key_pem);
    let cfg = config(&upstream_and_route("app", "http://127.0.0.1:9")).listener(
        "tls",
        table("[[certificates]]\ncert = \"a.crt\"\nkey = \"b.key\"\n"),
    );
    let text = cfg.text();
    let path = drawbridge_testkit::write_file(dir.path(), "drawbridge.toml", &text);
    let err = drawbridge_proxy::compile(&path, None)
        .err()
        .expect("mismatch refused")
        .to_string();
    let at = format!(
        "drawbridge.toml:{}:1",
        line_of(&text, "[[listeners.tls.certificates]]")
    );
    assert!(err.contains(&at), "{err}\nexpected {at}");
    assert!(err.contains("listeners[0].tls.certificates[0]"), "{err}");
    assert!(err.contains("does not belong"), "{err}");
}

#[tokio::test]
async fn a_host_of_another_certificate_than_the_sni_is_misdirected() {
    let t = setup("1.2").await;
    for (sni, host, status) in [
        ("a.test", "a.test", 200),
        ("a.test", "A.TEST:443", 200),
        ("a.test", "b.test", 421),
        ("b.test", "a.test", 421),
    ] {
        t.up.clear();
        // HTTP/1.1 with a Host header, and HTTP/2 with an :authority.
        let s = connect(&t, sni, &[b"http/1.1"], &[&rustls::version::TLS13])
            .await
            .expect("tls");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("h1");
        tokio::spawn(conn);
        let req = http::Request::get("/x")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let res = send.send_request(req).await.expect("response");
        assert_eq!(res.status(), status, "h1 sni {sni}, host {host}");

        let s = connect(&t, sni, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .expect("tls");
        let res = h2_get(s, &format!("https://{host}/x")).await;
        assert_eq!(res.status(), status, "h2 sni {sni}, host {host}");
        assert_eq!(t.up.count(), if status == 200 { 2 } else { 0 });
    }
}

/// `hsts` on a TLS listener: every response carries `Strict-Transport-Security`, Drawbridge's
/// own refusals included.
#[tokio::test]
async fn a_tls_listener_sends_hsts_with_every_response() {
    let t = setup_with("1.2", "hsts = \"max-age=31536000; includeSubDomains\"").await;
    for path in ["/x", "/.drawbridge/nothing"] {
        let s = connect(&t, "a.test", &[b"h2"], &[&rustls::version::TLS13])
            .await
            .expect("tls");
        let res = h2_get(s, &format!("https://a.test{path}")).await;
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000; includeSubDomains"),
            "{path}: {}",
            res.status()
        );
    }
}

/// A client that agrees on no protocol in the handshake speaks HTTP/1.1: HTTP/2 over TLS is
/// agreed by ALPN or not spoken (RFC 9113 §3.3), so an HTTP/2 preface without it is not
/// served, and nothing reaches the upstream.
#[tokio::test]
async fn without_alpn_a_tls_client_speaks_http11_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = setup("1.2").await;
    let s = connect(&t, "a.test", &[], &[&rustls::version::TLS13])
        .await
        .expect("tls");
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("h1");
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let req = http::Request::get(path)
            .header("host", "a.test")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let res = send.send_request(req).await.expect("response");
        assert_eq!(res.status(), 200, "{path}");
        let _ = res.into_body().collect().await;
        let got = t.up.last().expect("forwarded");
        assert_eq!(got.target, path);
        assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    }
    assert_eq!(t.up.count(), 2);

    let mut s = connect(&t, "a.test", &[], &[&rustls::version::TLS13])
        .await
        .expect("tls");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("answered and closed");
    // Closed unanswered (hyper's HTTP/1.1 server knows the preface for what it is), or
    // refused as HTTP/1.1: never a SETTINGS frame.
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    assert_eq!(t.up.count(), 2, "nothing more reached the upstream");
}
