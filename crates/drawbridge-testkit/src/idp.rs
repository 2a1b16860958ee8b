//! A real OpenID provider for sign-in tests: npm's `oidc-provider` (certified), started
//! by `crates/drawbridge/tests/js/oidc-idp.mjs` on 127.0.0.1 and stopped when dropped.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A running provider.
pub struct Idp {
    /// Its issuer identifier, `http://127.0.0.1:<port>`.
    pub issuer: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Starts a provider with `settings` (clients, users, token lifetimes; see the
    /// script).
    pub async fn start(settings: &serde_json::Value) -> Idp {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("idp.json");
        std::fs::write(&path, settings.to_string()).expect("write idp settings");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../drawbridge/tests/js/oidc-idp.mjs"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/test.sh installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("read idp output") {
                if let Some(p) = line.strip_prefix("listening ") {
                    return p.trim().parse::<u16>().expect("port");
                }
            }
            panic!("the test IdP exited before listening");
        })
        .await
        .expect("the test IdP starts within 20s");
        Idp {
            issuer: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// Stops it now.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Settings for one provider with one confidential client `client_id`/`secret` allowed
/// to redirect to `redirect_uris`, and the users `alice` (groups `eng`) and `bob` (no
/// groups, another email domain); `ttl` overrides token lifetimes in seconds.
pub fn settings(
    client_id: &str,
    secret: &str,
    redirect_uris: &[String],
    post_logout: &[String],
    ttl: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "clients": [{
            "client_id": client_id,
            "client_secret": secret,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": post_logout,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }],
        "users": {
            "alice": {"password": "alice-pw", "claims": {
                "email": "alice@corp.test", "email_verified": true,
                "groups": ["eng"], "name": "Alice"}},
            "bob": {"password": "bob-pw", "claims": {
                "email": "bob@elsewhere.test", "email_verified": true,
                "groups": [], "name": "Bob"}},
        },
        "ttl": ttl,
    })
}
