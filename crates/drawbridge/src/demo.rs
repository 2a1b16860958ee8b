//! `drawbridge demo`: Drawbridge in front of a built-in recording upstream, with a config
//! written to a temporary directory, and the curl commands to try.

use std::net::SocketAddr;
use std::process::ExitCode;

use drawbridge_proxy::Proxy;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use serde_json::json;

/// The demo identity provider's name for itself.
const DEMO_ISSUER: &str = "https://idp.demo.invalid/";

/// What the demo hands the user to try authenticated routes with.
struct Credentials {
    token: String,
    expired: String,
    api_key: String,
}

/// Writes the demo's key material into `dir`: an issuer's JWK Set (its private key stays in
/// memory), an API-key secret and keys file; returns tokens and a key to try.
fn credentials(dir: &std::path::Path) -> Result<Credentials, String> {
    let idp = SigningKey::generate(KeyType::P256, "demo-1");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("jwks.json", &jwks(&[&idp]))?;
    let n = now();
    let claims = json!({
        "iss": DEMO_ISSUER, "aud": "drawbridge-demo", "sub": "alice",
        "iat": n, "exp": n + 3600, "groups": ["eng", "oncall"], "tenant": "acme",
    });
    let token = idp.sign(&claims);
    let mut old = claims.clone();
    old["iat"] = json!(n - 7200);
    old["exp"] = json!(n - 3600);
    let expired = idp.sign(&old);
    let secret = drawbridge_identity::apikey::new_secret()?;
    write("apikeys.secret", &secret)?;
    let key = drawbridge_identity::apikey::new_key(secret.as_bytes())?;
    write(
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

pub async fn run(listen: SocketAddr) -> ExitCode {
    let upstream = RecordingUpstream::start().await;
    let dir = std::env::temp_dir().join(format!("drawbridge-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let creds = match credentials(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
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

[[authenticators]]
name = "demo-keys"
type = "api_key"
keys_file = "apikeys.toml"
secret_file = "apikeys.secret"
header = "X-Api-Key"

[[listeners]]
name = "demo"
address = "{listen}"

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
"#,
        upstream = upstream.url()
    );
    if let Err(e) = std::fs::write(dir.join("demo.cedar"), DEMO_POLICIES) {
        eprintln!(
            "error: cannot write {}: {e}",
            dir.join("demo.cedar").display()
        );
        return ExitCode::FAILURE;
    }
    let path = dir.join("drawbridge.toml");
    if let Err(e) = std::fs::write(&path, config) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let proxy = match Proxy::start(&path).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
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

Stop with Ctrl-C.
"#,
        up = upstream.url(),
        cfg = path.display(),
        dir = dir.display(),
        token = creds.token,
        expired = creds.expired,
        key = creds.api_key,
    );
    let _ = tokio::signal::ctrl_c().await;
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
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

// Keys of the batch group read jobs.
@id("jobs-batch")
permit (principal in Group::"demo-keys/batch", action in Action::"read", resource == Route::"jobs");
"#;
