//! Service identity by client certificate: a TLS listener checks certificates against its
//! CA, and an `mtls` authenticator admits SPIFFE ids or DNS names in its trust domain.

use std::sync::Arc;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::certs::{Leaf, TestCa};
use drawbridge_testkit::harness::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Setup {
    server_ca: TestCa,
    client_ca: TestCa,
    up: RecordingUpstream,
    h: Harness,
    _dir: tempfile::TempDir,
}

/// A TLS listener asking (`client_auth`) for certificates from `client_ca`, a route `/svc`
/// admitting trust domain `prod.test` by certificate, and a public route `/open`.
async fn setup(client_auth: &str) -> Setup {
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = server_ca.leaf(&["gw.test"]);
    let d = dir.path();
    drawbridge_testkit::write_file(d, "gw.crt", &leaf.cert_pem);
    drawbridge_testkit::write_file(d, "gw.key", &leaf.key_pem);
    drawbridge_testkit::write_file(d, "clients.pem", &client_ca.cert_pem);
    let d = d.display();
    let cfg = config(&format!(
        r#"[[authenticators]]
name = "mesh"
type = "mtls"
trust_domain = "prod.test"
ca_file = "{d}/clients.pem"

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "svc"
prefix = "/svc"
upstream = "app"
authenticate = ["mesh"]
authorize = false
forward_client_cert = "with_subject"

[[routes]]
name = "open"
prefix = "/open"
upstream = "app"
public = true
"#,
        up.url()
    ))
    .server("access_log", "access.log")
    .listener(
        "tls",
        table(&format!(
            "client_ca_file = \"{d}/clients.pem\"\nclient_auth = \"{client_auth}\"\n\
             [[certificates]]\ncert = \"{d}/gw.crt\"\nkey = \"{d}/gw.key\"\n"
        )),
    );
    let h = Harness::start(&cfg).await;
    Setup {
        server_ca,
        client_ca,
        up,
        h,
        _dir: dir,
    }
}

/// GET `path` over TLS, presenting `cert` when given; the status, or the connection error.
async fn get_tls(s: &Setup, path: &str, cert: Option<&Leaf>) -> Result<StatusCode, String> {
    let mut sender = open_tls(s, cert).await?;
    send_on(&mut sender, path).await
}

/// GET `path` on an open connection.
async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<StatusCode, String> {
    let req = Request::get(path)
        .header("host", "gw.test")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let _ = res.into_body().collect().await;
    Ok(status)
}

/// A TLS connection presenting `cert` when given.
async fn open_tls(
    s: &Setup,
    cert: Option<&Leaf>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    open_tls_at(s.h.addr, &s.server_ca, cert).await
}

/// A TLS connection to `addr`, whose certificate `server_ca` issued, presenting `cert` when
/// given.
async fn open_tls_at(
    addr: std::net::SocketAddr,
    server_ca: &TestCa,
    cert: Option<&Leaf>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.cert_pem.as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("chain"),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("gw.test").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

#[tokio::test]
async fn a_trust_domain_is_bound_to_its_own_ca_and_a_removed_ca_stops_open_connections() {
    let s = setup("request").await;
    let d = s._dir.path().to_path_buf();
    // The listener trusts a second CA (another mesh's); the authenticator does not.
    let other = TestCa::new("other mesh ca");
    let both = format!("{}{}", s.client_ca.cert_pem, other.cert_pem);
    drawbridge_testkit::write_file(&d, "both.pem", &both);
    let cfg = Config::parse(&std::fs::read_to_string(s.h.config_path()).expect("config")).listener(
        "tls.client_ca_file",
        d.join("both.pem").display().to_string(),
    );
    std::fs::write(s.h.config_path(), cfg.text()).expect("write");
    s.h.proxy.reload().expect("reload");
    let forged = other.client(&["spiffe://prod.test/ns/billing/sa/api"], false);
    assert_eq!(
        get_tls(&s, "/svc", Some(&forged)).await,
        Ok(StatusCode::UNAUTHORIZED),
        "another CA issued an identity in prod.test"
    );
    let good = s
        .client_ca
        .client(&["spiffe://prod.test/ns/billing/sa/api"], false);
    assert_eq!(get_tls(&s, "/svc", Some(&good)).await, Ok(StatusCode::OK));

    // A connection authenticated before a reload that removes its CA.
    let mut open = open_tls(&s, Some(&good)).await.expect("connect");
    assert_eq!(send_on(&mut open, "/svc").await, Ok(StatusCode::OK));
    drawbridge_testkit::write_file(&d, "clients.pem", &other.cert_pem);
    s.h.proxy.reload().expect("reload");
    assert_eq!(
        send_on(&mut open, "/svc").await,
        Ok(StatusCode::UNAUTHORIZED),
        "an open connection kept an identity its CA no longer vouches for"
    );
    assert_eq!(s.up.count(), 2);
}

#[tokio::test]
async fn a_spiffe_id_in_the_trust_domain_is_admitted() {
    let s = setup("request").await;
    let cert = s
        .client_ca
        .client(&["spiffe://prod.test/ns/billing/sa/api"], false);
    assert_eq!(
        get_tls(&s, "/svc/charge", Some(&cert)).await,
        Ok(StatusCode::OK)
    );
    let got = s.up.last().expect("forwarded");
    let assertion = got
        .header("x-drawbridge-identity")
        .expect("identity assertion");
    let payload: serde_json::Value = serde_json::from_slice(&base64_url_decode(
        assertion.split('.').nth(1).expect("payload"),
    ))
    .expect("json");
    assert_eq!(payload["sub"], "spiffe://prod.test/ns/billing/sa/api");
    assert_eq!(payload["kind"], "service");
    assert_eq!(payload["amr"], serde_json::json!(["mtls"]));
    // The certificate in Envoy's format, Drawbridge's own.
    let xfcc = got.header("x-forwarded-client-cert").expect("xfcc");
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("der");
    let hash = sha256_hex(&der);
    assert!(
        xfcc.starts_with(&format!("Hash={hash};Subject=\"")),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";URI=spiffe://prod.test/ns/billing/sa/api"),
        "{xfcc}"
    );
    assert_eq!(
        got.headers
            .get_all("x-forwarded-client-cert")
            .iter()
            .count(),
        1
    );

    // A DNS name under the trust domain serves when there is no SPIFFE id.
    let dns = s.client_ca.client(&["billing.prod.test"], false);
    assert_eq!(get_tls(&s, "/svc/x", Some(&dns)).await, Ok(StatusCode::OK));
    assert_eq!(s.up.count(), 2);
}

#[tokio::test]
async fn certificates_that_do_not_qualify_are_refused_before_the_upstream() {
    let s = setup("request").await;
    let outsider = TestCa::new("someone else");
    // No certificate: the public route works, the service route does not.
    assert_eq!(get_tls(&s, "/open", None).await, Ok(StatusCode::OK));
    assert_eq!(
        get_tls(&s, "/svc", None).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    for (what, cert) in [
        (
            "wrong trust domain",
            s.client_ca
                .client(&["spiffe://staging.test/ns/billing/sa/api"], false),
        ),
        (
            "a look-alike domain",
            s.client_ca.client(&["spiffe://prod.test.evil/x"], false),
        ),
        (
            "DNS name outside",
            s.client_ca.client(&["billing.prod.test.evil"], false),
        ),
        (
            "DNS look-alike without the dot",
            s.client_ca.client(&["billing.evilprod.test"], false),
        ),
        (
            "DNS look-alike of the domain itself",
            s.client_ca.client(&["evilprod.test"], false),
        ),
        (
            "SPIFFE id without a path",
            s.client_ca.client(&["spiffe://prod.test"], false),
        ),
        (
            "two SPIFFE ids",
            s.client_ca
                .client(&["spiffe://prod.test/a", "spiffe://prod.test/b"], false),
        ),
    ] {
        assert_eq!(
            get_tls(&s, "/svc", Some(&cert)).await,
            Ok(StatusCode::UNAUTHORIZED),
            "{what}"
        );
    }
    // Refused by the handshake itself: another CA, an expired certificate.
    for (what, cert) in [
        (
            "another CA",
            outsider.client(&["spiffe://prod.test/x"], false),
        ),
        (
            "expired",
            s.client_ca.client(&["spiffe://prod.test/x"], true),
        ),
    ] {
        assert!(get_tls(&s, "/svc", Some(&cert)).await.is_err(), "{what}");
    }
    assert_eq!(s.up.count(), 1, "only the public request arrived");
}

#[tokio::test]
async fn a_listener_can_require_a_certificate_for_every_connection() {
    let s = setup("require").await;
    assert!(
        get_tls(&s, "/open", None).await.is_err(),
        "no certificate, no connection"
    );
    // A refused handshake leaves a connection record.
    let log = s.h.dir.path().join("access.log");
    let record = json_lines(&log, 1, |l| l["phase"] == "accept")
        .await
        .into_iter()
        .next();
    let record = record.expect("a record of the refused handshake");
    assert_eq!(record["protocol"], "TLS");
    assert!(
        record["reason"]
            .as_str()
            .unwrap_or("")
            .contains("TLS handshake refused")
    );
    let cert = s.client_ca.client(&["spiffe://prod.test/a"], false);
    assert_eq!(get_tls(&s, "/open", Some(&cert)).await, Ok(StatusCode::OK));
    assert_eq!(get_tls(&s, "/svc", Some(&cert)).await, Ok(StatusCode::OK));
}

/// SHA-256 of `der`, lower-case hex, as any tool computes a certificate's fingerprint
/// (`openssl x509 -outform der | sha256sum`).
fn sha256_hex(der: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("stdin").write_all(der)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split_whitespace().next().expect("digest").to_string()
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// The admin listener off loopback, over its own TLS, guarded by an `mtls` authenticator:
/// a workload of the trust domain gets the metrics, anyone else only the probes.
#[tokio::test]
async fn the_admin_listener_takes_client_certificates() {
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = server_ca.leaf(&["gw.test"]);
    let d = dir.path();
    drawbridge_testkit::write_file(d, "gw.crt", &leaf.cert_pem);
    drawbridge_testkit::write_file(d, "gw.key", &leaf.key_pem);
    drawbridge_testkit::write_file(d, "clients.pem", &client_ca.cert_pem);
    let d = d.display();
    let cfg = config(&format!(
        r#"[admin]
address = "0.0.0.0:0"
authenticators = ["ops"]

[admin.tls]
client_ca_file = "{d}/clients.pem"
client_auth = "request"
[[admin.tls.certificates]]
cert = "{d}/gw.crt"
key = "{d}/gw.key"

[[authenticators]]
name = "ops"
type = "mtls"
trust_domain = "ops.test"
ca_file = "{d}/clients.pem"

{}"#,
        upstream_and_route("app", &up.url())
    ));
    let h = Harness::start(&cfg).await;
    let admin =
        std::net::SocketAddr::from(([127, 0, 0, 1], h.proxy.admin_addr().expect("admin").port()));
    let operator = client_ca.client(&["spiffe://ops.test/sre/olga"], false);
    let outsider = client_ca.client(&["spiffe://billing.test/api"], false);
    async fn get_at(
        admin: std::net::SocketAddr,
        server_ca: &TestCa,
        cert: Option<&Leaf>,
        path: &str,
    ) -> Result<StatusCode, String> {
        let mut sender = open_tls_at(admin, server_ca, cert).await?;
        send_on(&mut sender, path).await
    }
    let get = |cert, path| get_at(admin, &server_ca, cert, path);
    assert_eq!(get(Some(&operator), "/metrics").await, Ok(StatusCode::OK));
    assert_eq!(
        get(Some(&operator), "/api/config").await,
        Ok(StatusCode::OK)
    );
    assert_eq!(get(None, "/metrics").await, Ok(StatusCode::UNAUTHORIZED));
    assert_eq!(
        get(Some(&outsider), "/metrics").await,
        Ok(StatusCode::UNAUTHORIZED),
        "a certificate outside the trust domain"
    );
    assert_eq!(get(None, "/healthz").await, Ok(StatusCode::OK));
    // Plain HTTP to a TLS admin listener gets nothing.
    let plain = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n",
        std::time::Duration::from_millis(500),
    )
    .await;
    assert!(!plain.contains("drawbridge_"), "{plain}");
}
