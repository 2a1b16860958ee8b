//! The audit trail through the real server: hash-chained, rotated, sealed with the
//! instance's key at shutdown, and checked by `drawbridge audit verify`, which finds a
//! deleted, edited or moved event and a file cut short; and a trail that must be written
//! refuses what it cannot record.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const ISSUER: &str = "https://idp.test/";

const POLICIES: &str = r#"
@id("staff-read")
permit (principal in Group::"staff", action == Action::"GET", resource == Route::"orders");
"#;

struct Setup {
    h: Harness,
    up: RecordingUpstream,
    key: SigningKey,
}

async fn setup(audit_log: &str, audit: &str) -> Setup {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "c1");
    let cfg = config(&format!(
        r#"{audit}

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{ISSUER}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "corp.json"
claims = {{ groups = "groups" }}

[policy]
files = ["policies.cedar"]
plain_names = ["corp"]

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "orders"
prefix = "/orders"
upstream = "app"
authenticate = ["corp"]
"#,
        up.url()
    ))
    .server("audit_log", audit_log);
    let set = jwks(&[&key]);
    let h = Harness::start_with(
        &cfg,
        &[("corp.json", set.as_str()), ("policies.cedar", POLICIES)],
    )
    .await;
    Setup { h, up, key }
}

impl Setup {
    async fn call(&self, method: &str, path: &str) -> Reply {
        let n = now();
        let token = self.key.sign(&json!({
            "iss": ISSUER, "aud": "drawbridge", "sub": "alice", "iat": n, "exp": n + 600,
            "groups": ["staff"],
        }));
        let req = Request::builder()
            .method(method)
            .uri(self.h.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&h1_client(), req).await
    }
}

/// `drawbridge audit verify` on `files`: its exit status and what it said.
fn verify(files: &[PathBuf], jwks: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(drawbridge_binary());
    cmd.args(["audit", "verify"]);
    if let Some(j) = jwks {
        cmd.arg("--jwks").arg(j);
    }
    let out = cmd.args(files).output().expect("verify runs");
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

fn trail(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.jsonl"))
        })
        .collect();
    // Rotated files in order, then the live one.
    files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "jsonl"), p.clone()));
    files
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(String::from)
        .collect();
    change(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[tokio::test]
async fn the_trail_is_chained_rotated_sealed_and_verified() {
    let s = setup("audit.jsonl", "[audit]\nrotate_bytes = 65536").await;
    let keys = get(&s.h.url("/.drawbridge/jwks.json")).await;
    assert_eq!(keys.status, StatusCode::OK);
    let jwks_file = s.h.dir.path().join("instance-jwks.json");
    std::fs::write(&jwks_file, &keys.body).expect("write jwks");
    // Enough decisions to fill more than two files of 64 KiB.
    for i in 0..400 {
        let method = if i % 5 == 0 { "DELETE" } else { "GET" };
        s.call(method, &format!("/orders/{i}")).await;
    }
    s.h.proxy.shutdown().await;
    let files = trail(s.h.dir.path());
    assert!(files.len() >= 3, "rotated: {files:?}");
    let (ok, said) = verify(&files, Some(&jwks_file));
    assert!(ok, "{said}");
    assert!(said.contains("ok: 400 events"), "{said}");
    assert!(
        said.contains(&format!("signatures: {} checked", files.len())),
        "{said}"
    );
    // The events are the decisions, in order, each naming its successor's predecessor.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&files[0])
            .expect("read")
            .lines()
            .next()
            .expect("line"),
    )
    .expect("json");
    assert_eq!(
        (first["seq"].as_u64(), first["path"].as_str()),
        (Some(1), Some("/orders/0"))
    );
    assert_eq!(first["decision"], "deny");

    // Without the key set, the chain is still checked (and it says so).
    let (ok, said) = verify(&files, None);
    assert!(ok && said.contains("not checked"), "{said}");

    // Each tampering, on a copy, is found where it happened.
    let tampered = |change: &dyn Fn(&Path)| {
        let dir = tempfile::tempdir().expect("tempdir");
        let copies: Vec<PathBuf> = files
            .iter()
            .map(|f| {
                let c = dir.path().join(f.file_name().expect("name"));
                std::fs::copy(f, &c).expect("copy");
                c
            })
            .collect();
        change(&copies[1]);
        let (ok, said) = verify(&copies, Some(&jwks_file));
        assert!(!ok, "tampering not found: {said}");
        said
    };
    let said = tampered(&|f| rewrite(f, |l| drop(l.remove(10))));
    assert!(said.contains("1 event was removed"), "{said}");
    let said = tampered(&|f| rewrite(f, |l| l[10] = l[10].replace("/orders/", "/orderz/")));
    assert!(said.contains("was edited"), "{said}");
    let said = tampered(&|f| rewrite(f, |l| l.swap(10, 11)));
    assert!(said.contains("reordered"), "{said}");
    let said = tampered(&|f| {
        let bytes = std::fs::read(f).expect("read");
        std::fs::write(f, &bytes[..bytes.len() / 2]).expect("truncate");
    });
    assert!(
        said.contains("removed") || said.contains("cut short"),
        "{said}"
    );
    // The live file cut at a line boundary: its seal is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let copies: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let c = dir.path().join(f.file_name().expect("name"));
            std::fs::copy(f, &c).expect("copy");
            c
        })
        .collect();
    rewrite(copies.last().expect("live"), |l| drop(l.pop()));
    let (ok, said) = verify(&copies, Some(&jwks_file));
    assert!(!ok && said.contains("without a seal"), "{said}");
    // A seal signed by another key.
    let other = drawbridge_testkit::jwt::SigningKey::generate(KeyType::P256, "other");
    let other_jwks = dir.path().join("other.json");
    std::fs::write(&other_jwks, jwks(&[&other])).expect("write");
    let (ok, said) = verify(&files, Some(&other_jwks));
    assert!(!ok && said.contains("does not verify"), "{said}");
}

#[tokio::test]
async fn a_restart_continues_the_chain() {
    let s = setup("audit.jsonl", "").await;
    for i in 0..3 {
        assert_eq!(
            s.call("GET", &format!("/orders/{i}")).await.status,
            StatusCode::OK
        );
    }
    s.h.proxy.shutdown().await;
    let again = drawbridge_proxy::Proxy::start(&s.h.config_path())
        .await
        .expect("restart");
    let url = format!("http://{}/orders/9", again.addrs()[0].1);
    let n = now();
    let token = s.key.sign(&json!({
        "iss": ISSUER, "aud": "drawbridge", "sub": "alice", "iat": n, "exp": n + 600,
        "groups": ["staff"],
    }));
    let r = get_with(&url, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(r.status, StatusCode::OK);
    again.shutdown().await;
    let (ok, said) = verify(&trail(s.h.dir.path()), None);
    assert!(ok, "{said}");
    assert!(said.contains("ok: 4 events, #1 to #6"), "{said}");
}

/// `[audit] required`: a decision that cannot be written is not acted on: 503, and the
/// upstream never sees the request. Without `required`, the request goes through.
#[tokio::test]
async fn a_required_trail_that_cannot_be_written_refuses_requests() {
    // /dev/full takes every open and refuses every write (ENOSPC).
    let s = setup("/dev/full", "[audit]\nrequired = true").await;
    for _ in 0..3 {
        let r = s.call("GET", "/orders/1").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    }
    assert_eq!(s.up.count(), 0, "nothing reached the upstream unrecorded");
    // Readiness says so: an orchestrator stops sending traffic here.
    let missing = s.h.proxy.not_ready().unwrap_or_default();
    assert!(
        missing.iter().any(|m| m.contains("audit trail")),
        "{missing:?}"
    );
    // A refusal needs no record to be safe: still 403, not 503.
    assert_eq!(
        s.call("DELETE", "/orders/1").await.status,
        StatusCode::FORBIDDEN
    );

    let relaxed = setup("/dev/full", "").await;
    assert_eq!(
        relaxed.call("GET", "/orders/1").await.status,
        StatusCode::OK
    );
    assert_eq!(relaxed.up.count(), 1);
}

/// With `required`, an admitted request waits for its decision to be written: the event is
/// in the file by the time the upstream answers.
#[tokio::test]
async fn a_required_trail_holds_each_decision_before_the_request_goes_on() {
    let s = setup("audit.jsonl", "[audit]\nrequired = true").await;
    let path = s.h.dir.path().join("audit.jsonl");
    for i in 0..5 {
        assert_eq!(
            s.call("GET", &format!("/orders/{i}")).await.status,
            StatusCode::OK
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), i + 1, "written before the answer");
    }
}

/// `[audit] syslog`: each line of the trail, as written to the file, also goes to a syslog
/// receiver (RFC 5424, authpriv.info).
#[tokio::test]
async fn the_trail_is_copied_to_syslog() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let s = setup(
        "audit.jsonl",
        &format!(
            "[audit]\nsyslog = \"udp://{}\"",
            receiver.local_addr().expect("addr")
        ),
    )
    .await;
    assert_eq!(s.call("GET", "/orders/1").await.status, StatusCode::OK);
    let mut buf = vec![0u8; 65536];
    let n = tokio::task::spawn_blocking(move || receiver.recv(&mut buf).map(|n| (n, buf)))
        .await
        .expect("join")
        .expect("a datagram");
    let msg = String::from_utf8_lossy(&n.1[..n.0]).into_owned();
    assert!(msg.starts_with("<86>1 "), "{msg}");
    assert!(msg.contains(" drawbridge "), "{msg}");
    let json = &msg[msg.find('{').expect("json")..];
    let lines = json_lines(&s.h.dir.path().join("audit.jsonl"), 1, |_| true).await;
    let copy: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(copy, lines[0], "the copy is the line the chain holds");
    assert_eq!(copy["seq"], 1);
}
