//! README's first command: `drawbridge demo` works on its own and shows what it promises.

use std::io::BufRead;
use std::time::Duration;

use drawbridge_testkit::harness::*;
use futures_util::FutureExt;

#[tokio::test]
async fn demo_serves_forwards_and_refuses() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let (creds_tx, creds_rx) = std::sync::mpsc::channel();
    let (dir_tx, dir_rx) = std::sync::mpsc::channel();
    let (sso_tx, sso_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            for name in ["TOKEN", "EXPIRED", "KEY"] {
                if let Some(v) = line.trim().strip_prefix(&format!("{name}='")) {
                    let _ = creds_tx.send((name, v.trim_end_matches('\'').to_string()));
                }
            }
            if let Some(cfg) = line
                .trim()
                .strip_prefix("(config: ")
                .and_then(|r| r.split(')').next())
            {
                let _ = dir_tx.send(std::path::PathBuf::from(cfg));
            }
            if let Some(rest) = line.trim().strip_prefix("USER=alice PASSWORD=") {
                let _ = sso_tx.send(("password", rest.to_string()));
            }
            if let Some(rest) = line.strip_prefix("Single sign-on. Open ") {
                let site = rest.split(' ').next().unwrap_or_default().to_string();
                let _ = sso_tx.send(("site", site));
            }
            if let Some(rest) = line.strip_prefix("Drawbridge demo: listening on http://") {
                let addr = rest
                    .split([',', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("demo announced its address");
    let ok = get(&format!("http://{addr}/hello/world")).await;
    assert_eq!(ok.status, 200);
    let echo: serde_json::Value = serde_json::from_str(&ok.body).expect("echo json");
    assert_eq!(echo["target"], "/hello/world");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    let stripped: serde_json::Value = serde_json::from_str(
        &get(&format!("http://{addr}/api/v1/items?page=2"))
            .await
            .body,
    )
    .expect("json");
    assert_eq!(stripped["target"], "/v1/items?page=2");
    assert_eq!(get(&format!("http://{addr}/admin")).await.status, 404);
    let reply = raw(
        addr.parse().expect("addr"),
        b"GET /hello/..%2fadmin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 400);

    // The printed credentials work as the printed commands say.
    let creds: std::collections::HashMap<&str, String> = (0..3)
        .map(|_| {
            creds_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("credentials printed")
        })
        .collect();
    let with = |h: &'static str, v: String| {
        let url = format!("http://{addr}");
        async move {
            let req = http::Request::get(format!(
                "{url}{}",
                if h == "x-api-key" {
                    "/jobs/nightly"
                } else {
                    "/tenants/acme/orders/42"
                }
            ))
            .header(h, v)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
            send(&h1_client(), req).await
        }
    };
    let ok = with("authorization", format!("Bearer {}", creds["TOKEN"])).await;
    assert_eq!(ok.status, 200);
    let echo: serde_json::Value = serde_json::from_str(&ok.body).expect("echo json");
    assert_eq!(echo["headers"]["x-drawbridge-user"], "alice");
    assert!(echo["headers"]["x-drawbridge-identity"].is_string());
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(
        get(&format!("http://{addr}/tenants/acme/orders/42"))
            .await
            .status,
        401
    );
    // Another tenant's orders: authenticated, then refused by policy.
    let req = http::Request::get(format!("http://{addr}/tenants/globex/orders/42"))
        .header("authorization", format!("Bearer {}", creds["TOKEN"]))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(send(&h1_client(), req).await.status, 403);
    let expired = with("authorization", format!("Bearer {}", creds["EXPIRED"])).await;
    assert_eq!(expired.status, 401);
    assert_eq!(with("x-api-key", creds["KEY"].clone()).await.status, 200);

    // Its files are its owner's only; its secret too.
    use std::os::unix::fs::PermissionsExt;
    let config = dir_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("config path printed");
    let dir = config.parent().expect("dir").to_path_buf();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("apikeys.secret")), 0o600);

    // A person signs in at the demo's provider and lands on the app, on the embedded store.
    let sso: std::collections::HashMap<&str, String> = (0..2)
        .map(|_| {
            sso_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("sign-in printed")
        })
        .collect();
    let site = url::Url::parse(&sso["site"]).expect("site url");
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], site.port().expect("port")));
    let cert = std::fs::read_to_string(dir.join("localhost.crt")).expect("demo certificate");
    let mut b = drawbridge_testkit::browser::Browser::new(tls, &cert);
    let form = b.navigate(site.as_str()).await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(
        form.body.contains("Demo identity provider"),
        "{}",
        form.body
    );
    let landed = b
        .submit(
            &form.url,
            &form.form_action().expect("form"),
            &[
                ("login", "alice"),
                ("password", &sso["password"]),
                ("client_id", &form.input("client_id").expect("client_id")),
                (
                    "redirect_uri",
                    &form.input("redirect_uri").expect("redirect_uri"),
                ),
                ("response_type", "code"),
                ("scope", &form.input("scope").expect("scope")),
                ("state", &form.input("state").expect("state")),
                ("nonce", &form.input("nonce").expect("nonce")),
                (
                    "code_challenge",
                    &form.input("code_challenge").expect("challenge"),
                ),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert_eq!(landed.url, site.as_str());
    let echo: serde_json::Value = serde_json::from_str(&landed.body).expect("echo json");
    assert_eq!(echo["headers"]["x-drawbridge-user"], "alice");
    assert!(echo["headers"].get("cookie").is_none());
    let me = b
        .navigate(site.join("/.drawbridge/whoami").expect("url").as_ref())
        .await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains("alice@acme.example"), "{}", me.body);
    assert!(dir.join("sessions.redb").exists());

    // The admin pages need a second factor: enrol an app from the page, with an independent
    // TOTP implementation (npm otpauth) reading the URI the page links.
    let admin = site.join("/app/admin/").expect("url");
    let asked = b.navigate(admin.as_str()).await;
    assert!(
        asked.url.contains("/.drawbridge/mfa/verify"),
        "{}",
        asked.url
    );
    let enrol = b
        .navigate(
            site.join("/.drawbridge/mfa/enrol?rd=%2Fapp%2Fadmin%2F")
                .expect("url")
                .as_ref(),
        )
        .await;
    assert_eq!(enrol.status, 200, "{}", enrol.body);
    let uri = enrol
        .body
        .split("class=\"otpauth\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the app link")
        .replace("&amp;", "&");
    assert!(
        uri.starts_with("otpauth://totp/Drawbridge%20demo:"),
        "{uri}"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/totp.mjs");
    let out = std::process::Command::new("node")
        .args([script, &uri, "-30"])
        .output()
        .expect("node");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let done = b
        .submit(
            &enrol.url,
            "/.drawbridge/mfa/enrol",
            &[
                ("code", &code),
                ("rd", "/app/admin/"),
                ("csrf", &enrol.input("csrf").expect("csrf")),
            ],
        )
        .await;
    assert!(
        done.body.contains("Save your recovery codes"),
        "{}",
        done.body
    );
    let page = b.navigate(admin.as_str()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let echo: serde_json::Value = serde_json::from_str(&page.body).expect("echo json");
    let identity = echo["headers"]["x-drawbridge-identity"]
        .as_str()
        .expect("identity");
    assert_eq!(
        drawbridge_testkit::jwt::claims_of(identity)["amr"],
        serde_json::json!(["oidc", "otp", "mfa"])
    );
    // The printed challenge: an API client without a second factor, on a write.
    let mut api = drawbridge_testkit::browser::Browser::new(tls, &cert);
    let challenged = api
        .request(
            http::Method::DELETE,
            site.join("/app/items/1").expect("url").as_ref(),
            None,
            &[("authorization", format!("Bearer {}", creds["TOKEN"]))],
        )
        .await;
    assert_eq!(challenged.status, 401);
    let c = challenged.headers["www-authenticate"]
        .to_str()
        .expect("ascii");
    assert!(
        c.contains("insufficient_user_authentication") && c.contains("max_age=60"),
        "{c}"
    );

    // "Edit this file: Drawbridge reloads it": a policy edit applies, as under `serve`.
    let policy = dir.join("demo.cedar");
    let text = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(
        &policy,
        format!(
            "{text}\n@id(\"globex-too\")\npermit (principal, action, resource == Route::\"orders\");\n"
        ),
    )
    .expect("edit policy");
    let token = creds["TOKEN"].clone();
    let globex = |addr: String, token: String| async move {
        let req = http::Request::get(format!("http://{addr}/tenants/globex/orders/42"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        send(&h1_client(), req).await.status
    };
    assert!(
        eventually(Duration::from_secs(10), || globex(
            addr.clone(),
            token.clone()
        )
        .map(|s| s == 200))
        .await,
        "the policy edit was not applied"
    );
    // SIGHUP reloads; it does not stop the demo.
    let pid = child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&format!("http://{addr}/hello/x")).await.status, 200);
    // SIGTERM: a clean exit that leaves nothing behind.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "the demo left {}", dir.display());
}

/// A demo that cannot start (its address is taken) says so, with the way out, and leaves no
/// directory (with a secret in it) behind.
#[test]
fn a_demo_that_cannot_start_cleans_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["demo", "--listen", &addr, "--tls-listen", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("--listen"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
