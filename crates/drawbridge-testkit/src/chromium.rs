//! Debian's Chromium, driven over WebDriver by Debian's chromedriver (nothing downloads a
//! browser): headless, on a fresh profile, every `*.test` host resolved to 127.0.0.1, and
//! screenshots kept under `target/browser-screenshots/`.

use std::path::PathBuf;

use fantoccini::{Client, ClientBuilder, Locator};

/// A running browser; chromedriver and the profile go when it is dropped.
pub struct Chromium {
    /// The WebDriver session.
    pub client: Client,
    shots: PathBuf,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts chromedriver and a Chromium session, screenshots named under `prefix`.
    pub async fn start(prefix: &str) -> Chromium {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (scripts/test.sh installs chromium-driver)");
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=430,932",
                    "--ignore-certificate-errors",
                    "--host-resolver-rules=MAP *.test 127.0.0.1",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("an object")
        };
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(true);
        let mut client = None;
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/browser-screenshots")
            .join(prefix);
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Chromium {
            client: client.expect("a WebDriver session with Chromium"),
            shots,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Keeps a screenshot of the page as `name.png`.
    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// The element `css` selects once it appears; the page's address and source when it
    /// does not.
    pub async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().for_element(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "`{css}` never appeared ({e}) at {}: {}",
                self.url().await,
                self.client.source().await.unwrap_or_default()
            ),
        }
    }

    /// A command of a WebDriver extension on this session: `method` to
    /// `/session/{id}/{path}` with `body`; the answer's value.
    pub async fn extension(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let cmd = Extension {
            method,
            path: path.to_string(),
            body,
        };
        self.client
            .issue_cmd(cmd)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    /// Adds a virtual authenticator (the WebAuthn spec's WebDriver extension): CTAP2,
    /// internal (a platform authenticator), with resident keys and user verification that
    /// succeeds. Returns its id.
    pub async fn virtual_authenticator(&self) -> String {
        let v = self
            .extension(
                http::Method::POST,
                "webauthn/authenticator",
                Some(serde_json::json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                })),
            )
            .await;
        v.as_str().expect("an authenticator id").to_string()
    }

    /// Where the browser is.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Waits (up to 10 s) until the browser is at `want`; returns where it is.
    pub async fn wait_url(&self, want: &str) -> String {
        let mut at = String::new();
        for _ in 0..100 {
            at = self.url().await;
            if at == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        at
    }
}

/// A command of a WebDriver extension (the WebAuthn virtual authenticators).
#[derive(Debug)]
struct Extension {
    method: http::Method,
    path: String,
    body: Option<serde_json::Value>,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            self.method.clone(),
            self.body.as_ref().map(|b| b.to_string()),
        )
    }
}
