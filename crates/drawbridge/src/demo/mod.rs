//! `drawbridge demo`: Drawbridge in front of a built-in sample upstream, with a config
//! written to a private temporary directory, and the curl commands to try. The demo serves
//! and reloads exactly as `serve` does (edit its policy file and it applies), stops cleanly
//! on Ctrl-C or SIGTERM, and leaves nothing behind on any exit.

mod idp;
mod oidc;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use drawbridge_proxy::Proxy;
use serde_json::json;

/// The demo identity provider's name for itself.
const DEMO_ISSUER: &str = "https://idp.demo.invalid/";

/// What the demo hands the user to try authenticated routes with.
struct Credentials {
    token: String,
    expired: String,
    api_key: String,
}

/// The demo's directory: readable by its owner only, removed when the demo ends, however it
/// ends (a failed start included).
struct DemoDir(PathBuf);

impl DemoDir {
    fn create() -> Result<DemoDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("drawbridge-demo-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(DemoDir(path))
    }

    /// Writes `name` in the directory, readable by its owner only.
    fn write(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.0.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the demo's key material: an issuer's JWK Set (its private key stays in memory), an
/// API-key secret and keys file; returns tokens and a key to try.
fn credentials(dir: &DemoDir) -> Result<Credentials, String> {
    let idp = idp::Idp::generate("demo-1")?;
    dir.write("jwks.json", idp.jwks())?;
    let n = idp::now();
    let claims = json!({
        "iss": DEMO_ISSUER, "aud": "drawbridge-demo", "sub": "alice",
        "iat": n, "exp": n + 3600, "groups": ["eng", "oncall"], "tenant": "acme",
    });
    let token = idp.sign(&claims)?;
    let mut old = claims.clone();
    old["iat"] = json!(n - 7200);
    old["exp"] = json!(n - 3600);
    let expired = idp.sign(&old)?;
    let secret = drawbridge_identity::apikey::new_secret()?;
    dir.write("apikeys.secret", &secret)?;
    let key = drawbridge_identity::apikey::new_key(secret.as_bytes())?;
    dir.write(
        "apikeys.toml",
        &format!(
            "[[keys]]\nid = \"{}\"\nname = \"nightly-job\"\nhash = \"{}\"\ngroups = [\"batch\"]\n",
            key.id, key.hash
        ),
    )?;
    Ok(Credentials {
        token,
        expired,
        api_key: key.key,
    })
}

pub async fn run(listen: SocketAddr, tls_listen: SocketAddr) -> ExitCode {
    match demo(listen, tls_listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A self-signed certificate for `localhost`, written as `localhost.crt` and `.key`.
fn certificate(dir: &DemoDir) -> Result<(), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    dir.write("localhost.crt", &cert.pem())?;
    dir.write("localhost.key", &key.serialize_pem())?;
    Ok(())
}

/// A password for a demo user: 12 random characters.
fn password() -> Result<String, String> {
    use base64::Engine as _;
    let mut b = [0u8; 9];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness for the demo's passwords")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

async fn demo(listen: SocketAddr, tls_listen: SocketAddr) -> Result<(), String> {
    let upstream = upstream::start()
        .await
        .map_err(|e| format!("cannot start the sample upstream: {e}"))?;
    let upstream = format!("http://{upstream}");
    let dir = DemoDir::create()?;
    let creds = credentials(&dir)?;
    // People sign in at a demo OpenID provider, over HTTPS on `localhost` (a self-signed
    // certificate: session cookies are `Secure`). The port must be known first: the
    // provider only sends people back to the redirect URI it registered.
    let tls_listen = if tls_listen.port() == 0 {
        std::net::TcpListener::bind(tls_listen)
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
    } else {
        tls_listen
    };
    let site = if tls_listen.port() == 443 {
        "https://localhost".to_string()
    } else {
        format!("https://localhost:{}", tls_listen.port())
    };
    certificate(&dir)?;
    let secret = password()? + &password()?;
    dir.write("sso.secret", &secret)?;
    let users = vec![
        oidc::User {
            name: "alice",
            password: password()?,
            email: "alice@acme.example",
            groups: &["eng", "oncall"],
            tenant: "acme",
        },
        oidc::User {
            name: "bob",
            password: password()?,
            email: "bob@globex.example",
            groups: &["sales"],
            tenant: "globex",
        },
    ];
    let logins: Vec<(String, String)> = users
        .iter()
        .map(|u| (u.name.to_string(), u.password.clone()))
        .collect();
    let sso_issuer =
        oidc::start(secret, vec![format!("{site}/.drawbridge/callback")], users).await?;
    let config = format!(
        r#"# The demo's configuration, written by `drawbridge demo`.
[server]
access_log = "stdout"

[identity]
issuer = "drawbridge-demo"

[[authenticators]]
name = "demo-idp"
type = "jwt"
issuer = "{DEMO_ISSUER}"
audiences = ["drawbridge-demo"]
algorithms = ["ES256"]
jwks_file = "jwks.json"
claims = {{ groups = "groups", attributes = ["tenant"] }}
# A token whose amr says the provider did a second factor (with its auth_time) counts as one.
trusted_mfa = {{ amr = ["mfa"] }}

[[authenticators]]
name = "demo-keys"
type = "api_key"
keys_file = "apikeys.toml"
secret_file = "apikeys.secret"
header = "X-Api-Key"

[[authenticators]]
name = "demo-sso"
type = "oidc"
issuer = "{sso_issuer}"
client_id = "{client_id}"
client_secret_file = "sso.secret"
scopes = ["openid", "email", "profile", "groups"]
claims = {{ groups = "groups", attributes = ["email", "tenant"] }}
display_name = "the demo identity provider"
algorithms = ["ES256"]

[sessions]
path = "sessions.redb"

# People enrol an authenticator app at /.drawbridge/mfa; codes, failures and enrolments are
# kept in the session store.
[mfa]
issuer = "Drawbridge demo"

[[listeners]]
name = "demo"
address = "{listen}"

[[listeners]]
name = "demo-tls"
address = "{tls_listen}"
[[listeners.tls.certificates]]
cert = "localhost.crt"
key = "localhost.key"

[[upstreams]]
name = "sample"
endpoints = ["{upstream}"]

[[routes]]
name = "hello"
prefix = "/hello"
upstream = "sample"
public = true

[[routes]]
name = "api"
prefix = "/api"
strip_prefix = true
methods = ["GET", "POST"]
upstream = "sample"
public = true

[policy]
files = ["demo.cedar"]
attributes = {{ tenant = "String" }}
plain_names = ["demo-idp"]

[[routes]]
name = "orders"
prefix = "/tenants/{{tenant}}/orders"
upstream = "sample"
authenticate = ["demo-idp"]
identity_headers = true

[[routes]]
name = "jobs"
prefix = "/jobs"
upstream = "sample"
authenticate = ["demo-keys"]

# The app's admin pages need a second factor done within the last two minutes.
[[routes]]
name = "admin"
host = "localhost"
prefix = "/app/admin"
upstream = "sample"
listeners = ["demo-tls"]
authenticate = ["demo-sso", "demo-idp"]
identity_headers = true
authorize = false
mfa = {{ required = true, max_age = "2m" }}

# People sign in here with a browser; the same route takes the demo token.
[[routes]]
name = "app"
host = "localhost"
prefix = "/app"
upstream = "sample"
listeners = ["demo-tls"]
authenticate = ["demo-sso", "demo-idp"]
identity_headers = true
"#,
        upstream = upstream,
        sso_issuer = sso_issuer,
        client_id = oidc::CLIENT_ID,
    );
    dir.write("demo.cedar", DEMO_POLICIES)?;
    let path = dir.write("drawbridge.toml", &config)?;
    let mut signals = crate::Signals::register();
    let proxy = Proxy::start(&path).await.map_err(|e| match &e {
        drawbridge_proxy::StartError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            format!("{e}\n  help: choose another address with `--listen 127.0.0.1:PORT`")
        }
        _ => e.to_string(),
    })?;
    // Edits to the demo's files apply as they do for `serve`; SIGHUP reloads.
    tokio::spawn(drawbridge_proxy::reload::run(
        proxy.clone(),
        signals.hangups.take(),
    ));
    let addr = proxy.addr("demo").unwrap_or(listen);
    eprintln!(
        r#"
Drawbridge demo: listening on http://{addr}, in front of a sample upstream at {up}
(config: {cfg}). Access-log lines appear below. Try, in another terminal:

  # forwarded: the upstream echoes what it received (note X-Forwarded-For, X-Request-Id)
  curl -i http://{addr}/hello/world

  # prefix stripped: the upstream receives /v1/items?page=2
  curl -i 'http://{addr}/api/v1/items?page=2'

  # no route: 404, the upstream is never contacted
  curl -i http://{addr}/admin

  # ambiguous path: 400, refused before routing
  curl -i --path-as-is 'http://{addr}/hello/..%2fadmin'

  # spoofed forwarding and identity headers are removed before forwarding
  curl -i -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Drawbridge-User: admin' http://{addr}/hello

Authenticated and authorized routes. A demo identity provider signed these (its public keys are in
{dir}/jwks.json), and an API key was made as `drawbridge apikey new` would:

  TOKEN='{token}'
  EXPIRED='{expired}'
  KEY='{key}'

  # admitted: the upstream gets no token, but X-Drawbridge-Identity, a JWT signed by
  # Drawbridge (sub alice, groups, tenant), and X-Drawbridge-User / -Groups
  curl -i -H "Authorization: Bearer $TOKEN" http://{addr}/tenants/acme/orders/42

  # the claims the upstream received (the assertion's payload)
  curl -s -H "Authorization: Bearer $TOKEN" http://{addr}/tenants/acme/orders/42 \
    | python3 -c 'import sys,json,base64; a=json.load(sys.stdin)["headers"]["x-drawbridge-identity"].split(".")[1]; print(base64.urlsafe_b64decode(a+"==").decode())'

  # the key upstreams verify that assertion with
  curl -s http://{addr}/.drawbridge/jwks.json

  # another tenant's orders, or a write: 403 by policy ({dir}/demo.cedar); the upstream
  # is never contacted, and the audit trail (JSON lines with "log":"audit") says which
  # policy decided
  curl -i -H "Authorization: Bearer $TOKEN" http://{addr}/tenants/globex/orders/42
  curl -i -X DELETE -H "Authorization: Bearer $TOKEN" http://{addr}/tenants/acme/orders/42

  # no token, or an expired one: 401, the upstream is never contacted
  curl -i http://{addr}/tenants/acme/orders/42
  curl -i -H "Authorization: Bearer $EXPIRED" http://{addr}/tenants/acme/orders/42

  # an API key on its own route
  curl -i -H "X-Api-Key: $KEY" http://{addr}/jobs/nightly

Single sign-on. Open {site}/app/ in a browser (the demo's certificate is self-signed:
accept the warning), sign in at the demo identity provider as one of

  {logins}

and land on the sample app, which shows the identity Drawbridge handed it. Then see
{site}/.drawbridge/whoami (who you are, your session, the sign-out button). The session
is kept in {dir}/sessions.redb; API clients on the same route still get 401:

  curl -ik {site}/app/
  curl -ik -H "Authorization: Bearer $TOKEN" {site}/app/

Second factors. Open {site}/app/admin/ : it needs a second factor done within two minutes.
The first time, set up any authenticator app from the QR code (or the key under it) and
keep the recovery codes shown, or register a passkey; you land on the admin page. Come back after two minutes:
you are asked for a code again. Changing anything in the app (a POST or a DELETE) needs
one within a minute, by policy; an API client without one gets an RFC 9470 challenge:

  curl -ik -X DELETE -H "Authorization: Bearer $TOKEN" {site}/app/items/1
  # HTTP/1.1 401 Unauthorized
  # www-authenticate: Bearer realm="drawbridge", error="insufficient_user_authentication", ...

Your factors are at {site}/.drawbridge/mfa.

Stop with Ctrl-C; the demo's directory is removed then.
"#,
        up = upstream,
        cfg = path.display(),
        dir = dir.path().display(),
        token = creds.token,
        expired = creds.expired,
        key = creds.api_key,
        site = site,
        logins = logins
            .iter()
            .map(|(u, p)| format!("USER={u} PASSWORD={p}"))
            .collect::<Vec<_>>()
            .join("\n  "),
    );
    signals.stopped().await;
    proxy.shutdown().await;
    drop(dir);
    Ok(())
}

/// The demo's policies: tenants read their own orders; the batch key reads jobs.
const DEMO_POLICIES: &str = r#"// The demo's policies (Cedar). Edit this file: Drawbridge reloads it.

// A user reads the orders of their own tenant, and only those.
@id("orders-own-tenant")
permit (principal is User, action in Action::"read", resource == Route::"orders")
when {
  principal has tenant &&
  context.params has tenant &&
  context.params.tenant == principal.tenant
};

// People (signed in with a browser, or holding the demo token) read the app.
@id("app-people")
permit (principal is User, action in Action::"read", resource == Route::"app");

// ...and change it with a second factor done within the last minute. Without one, they are
// asked for it (a step-up) instead of refused.
@id("app-changes-need-a-factor")
@mfa_max_age("1m")
permit (principal is User, action in Action::"write", resource == Route::"app")
when { context.authn has mfa_age && context.authn.mfa_age <= 60 };

// Keys of the batch group read jobs.
@id("jobs-batch")
permit (principal in Group::"demo-keys/batch", action in Action::"read", resource == Route::"jobs");
"#;
