//! API keys end to end: made with `drawbridge apikey`, stored only as HMACs, checked by the
//! real server, revoked by removing them; refused keys never reach the upstream.

use std::path::Path;

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use http::StatusCode;

/// Runs the real binary's `apikey` subcommand; its stdout and stderr.
fn run(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .output()
        .expect("run drawbridge");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "drawbridge {args:?}: {stderr}");
    (String::from_utf8(out.stdout).expect("utf-8"), stderr)
}

/// Runs the real binary's `apikey` subcommand; its stdout.
fn drawbridge(args: &[&str]) -> String {
    run(args).0
}

/// A new key for `name`: (the key, its keys-file entry).
fn new_key(secret: &Path, name: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["apikey", "new", "--name", name, "--secret-file"];
    let secret = secret.to_str().expect("utf-8 path");
    args.push(secret);
    args.extend_from_slice(extra);
    let (entry, shown) = run(&args);
    let key = shown
        .lines()
        .find(|l| l.starts_with("dbk_"))
        .expect("the key is shown on stderr")
        .to_string();
    assert!(!entry.contains(&key), "the key never goes with the entry");
    assert!(entry.trim_start().starts_with("[[keys]]"), "{entry}");
    (key, entry)
}

struct Setup {
    up: RecordingUpstream,
    h: Harness,
    keys_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(header: Option<&str>, entries: impl Fn(&Path) -> String) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("apikeys.secret");
    std::fs::write(&secret, drawbridge(&["apikey", "secret"])).expect("write secret");
    let keys_file = dir.path().join("apikeys.toml");
    std::fs::write(&keys_file, entries(&secret)).expect("write keys");
    let up = RecordingUpstream::start().await;
    let header_line = header
        .map(|h| format!("header = \"{h}\""))
        .unwrap_or_default();
    let cfg = config(&format!(
        r#"[[authenticators]]
name = "scripts"
type = "api_key"
keys_file = "{}"
secret_file = "{}"
{header_line}

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "api"
prefix = "/"
upstream = "app"
authenticate = ["scripts"]
authorize = false
identity_headers = true
"#,
        keys_file.display(),
        secret.display(),
        up.url()
    ))
    .server("access_log", "access.jsonl");
    let h = Harness::start(&cfg).await;
    Setup {
        up,
        h,
        keys_file,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_key_made_by_the_cli_is_admitted_and_never_forwarded() {
    let made = std::sync::Mutex::new(None);
    let s = setup(None, |secret| {
        let (key, entry) = new_key(
            secret,
            "deploy-bot",
            &["--group", "deployers", "--attribute", "team=platform"],
        );
        *made.lock().unwrap() = Some(key);
        entry
    })
    .await;
    let key = made.lock().unwrap().clone().expect("key");
    // The keys file holds the HMAC only.
    let stored = std::fs::read_to_string(&s.keys_file).expect("keys file");
    assert!(
        !stored.contains(&key[20..]),
        "the secret part is not stored"
    );

    let auth = format!("ApiKey {key}");
    let r = get_with(&s.h.url("/jobs"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let got = s.up.last().expect("forwarded");
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("x-drawbridge-user"), Some("deploy-bot"));
    assert_eq!(got.header("x-drawbridge-groups"), Some("deployers"));
    assert!(got.header("x-drawbridge-identity").is_some());
    for v in got.headers.iter().map(|(_, v)| v.as_bytes()) {
        assert!(
            !String::from_utf8_lossy(v).contains(&key),
            "the key reached the upstream"
        );
    }
}

#[tokio::test]
async fn wrong_unknown_expired_and_malformed_keys_are_refused() {
    let keys = std::sync::Mutex::new(Vec::new());
    let s = setup(Some("X-Api-Key"), |secret| {
        let (good, e1) = new_key(secret, "good", &[]);
        // `apikey new` refuses a past expiry; the entry is edited to have one.
        let (old, e2) = new_key(secret, "old", &["--expires", "2099-01-01T00:00:00Z"]);
        let e2 = e2.replace("2099-01-01T00:00:00Z", "2020-01-01T00:00:00Z");
        keys.lock().unwrap().extend([good, old]);
        format!("{e1}\n{e2}")
    })
    .await;
    let (good, expired) = {
        let k = keys.lock().unwrap();
        (k[0].clone(), k[1].clone())
    };
    // The same id with another secret part: the HMAC does not match. The key is
    // `dbk_` + 16 hex digits + `_` + 43 base64url characters (which may hold `_` themselves),
    // so the id part is cut at its fixed length.
    let id_part = &good[..4 + 16];
    assert!(
        id_part.starts_with("dbk_") && good.as_bytes()[20] == b'_',
        "{good}"
    );
    let forged = format!("{id_part}_{}", "A".repeat(43));
    assert_eq!(forged.len(), good.len());
    assert_ne!(forged, good);
    // A key made under another server secret.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_secret = other_dir.path().join("s");
    std::fs::write(&other_secret, drawbridge(&["apikey", "secret"])).expect("write");
    let (foreign, _) = new_key(&other_secret, "good", &[]);
    let bad = [
        ("forged secret part", forged.as_str()),
        ("unknown id", foreign.as_str()),
        ("expired", expired.as_str()),
        ("not a key", "hunter2"),
        ("truncated", &good[..good.len() - 1]),
    ];
    for (what, key) in bad {
        let r = get_with(&s.h.url("/"), &[("x-api-key", key)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        let c = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            c,
            Some(
                "ApiKey realm=\"drawbridge\", error=\"invalid_token\", error_description=\"the credentials are not valid\""
            ),
            "{what}"
        );
    }
    // The key in Authorization is not where this authenticator reads it.
    let auth = format!("ApiKey {good}");
    let r = get_with(&s.h.url("/"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A bearer token is a credential this route has no authenticator for: refused, and the
    // log says what was presented rather than "no credentials".
    let r = get_with(
        &s.h.url("/bearer"),
        &[("authorization", "Bearer abc.def.ghi")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let log = s.h.dir.path().join("access.jsonl");
    let lines = json_lines(&log, 1, |l| l["path"] == "/bearer").await;
    assert_eq!(
        lines[0]["reason"],
        "authentication: a bearer token presented, but no authenticator of the route reads it",
        "{lines:?}"
    );
    // Two key headers: malformed.
    let r = get_with(&s.h.url("/"), &[("x-api-key", &good), ("x-api-key", &good)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.up.count(), 0, "no refused request reached the upstream");

    let r = get_with(&s.h.url("/"), &[("x-api-key", &good)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.up.last().expect("forwarded").header("x-api-key"), None);
}

#[tokio::test]
async fn removing_a_key_and_reloading_revokes_it() {
    let keys = std::sync::Mutex::new(Vec::new());
    let s = setup(Some("X-Api-Key"), |secret| {
        let (a, ea) = new_key(secret, "a", &[]);
        let (b, eb) = new_key(secret, "b", &[]);
        keys.lock().unwrap().extend([(a, ea), (b, eb)]);
        let k = keys.lock().unwrap();
        format!("{}\n{}", k[0].1, k[1].1)
    })
    .await;
    let (a, b, entry_b) = {
        let k = keys.lock().unwrap();
        (k[0].0.clone(), k[1].0.clone(), k[1].1.clone())
    };
    for key in [&a, &b] {
        assert_eq!(
            get_with(&s.h.url("/"), &[("x-api-key", key)]).await.status,
            StatusCode::OK
        );
    }
    std::fs::write(&s.keys_file, entry_b).expect("rewrite keys");
    s.h.proxy.reload().expect("reload");
    assert_eq!(
        get_with(&s.h.url("/"), &[("x-api-key", &a)]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&s.h.url("/"), &[("x-api-key", &b)]).await.status,
        StatusCode::OK
    );

    // A keys file that does not parse keeps the old keys serving.
    std::fs::write(&s.keys_file, "[[keys]]\nid = 12\n").expect("rewrite keys");
    let err = s.h.proxy.reload().expect_err("invalid keys file");
    let text = err.to_string();
    assert!(
        text.contains("apikeys.toml:2"),
        "names the keys file and line: {text}"
    );
    assert_eq!(
        get_with(&s.h.url("/"), &[("x-api-key", &b)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_keys_file_outside_the_config_directory_is_watched() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let secret = keys_dir.path().join("apikeys.secret");
    std::fs::write(&secret, drawbridge(&["apikey", "secret"])).expect("write secret");
    let (a, entry_a) = new_key(&secret, "a", &[]);
    let (b, entry_b) = new_key(&secret, "b", &[]);
    let keys_file = keys_dir.path().join("apikeys.toml");
    std::fs::write(&keys_file, format!("{entry_a}\n{entry_b}")).expect("write keys");
    let up = RecordingUpstream::start().await;
    let config_dir = tempfile::tempdir().expect("tempdir");
    let path = config_dir.path().join("drawbridge.toml");
    let cfg = config(&format!(
        "[[authenticators]]\nname = \"scripts\"\ntype = \"api_key\"\nheader = \"X-Api-Key\"\nkeys_file = \"{}\"\nsecret_file = \"{}\"\n\n{}",
        keys_file.display(),
        secret.display(),
        upstream_and_route("app", &up.url())
    ))
    .remove("routes.0.public")
    .set("routes.0.authenticate", strings(&["scripts"]))
    .set("routes.0.authorize", false)
    .server("watch", true);
    std::fs::write(&path, cfg.text()).expect("write config");
    let bin = Binary::serve(&path);
    assert_eq!(
        get_with(&bin.url("/"), &[("x-api-key", &a)]).await.status,
        StatusCode::OK
    );
    // Revoke `a` by editing the keys file only.
    std::fs::write(&keys_file, &entry_b).expect("rewrite keys");
    let revoked = eventually(std::time::Duration::from_secs(10), || async {
        get_with(&bin.url("/"), &[("x-api-key", &a)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(revoked, "the edit was picked up: {}", bin.log());
    assert_eq!(
        get_with(&bin.url("/"), &[("x-api-key", &b)]).await.status,
        StatusCode::OK
    );
}

/// `apikey new >> keys.toml` stores the entry only: the key goes to stderr or to a new file
/// only its owner reads; a past expiry is refused; a secret others can read is warned about.
#[test]
fn the_key_and_its_entry_never_share_a_stream() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("apikeys.secret");
    std::fs::write(&secret, drawbridge(&["apikey", "secret"])).expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let secret_arg = secret.to_str().expect("utf-8");
    let key_file = dir.path().join("deploy.key");
    let key_arg = key_file.to_str().expect("utf-8");
    let (entry, stderr) = run(&[
        "apikey",
        "new",
        "--name",
        "deploy",
        "--secret-file",
        secret_arg,
        "--key-file",
        key_arg,
    ]);
    let key = std::fs::read_to_string(&key_file).expect("key file");
    let key = key.trim();
    assert!(key.starts_with("dbk_"), "{key}");
    assert!(
        !entry.contains(key) && !stderr.contains(key),
        "the key is in its file only"
    );
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        stderr.contains("warning:") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // Never over an existing file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args([
            "apikey",
            "new",
            "--name",
            "again",
            "--secret-file",
            secret_arg,
            "--key-file",
            key_arg,
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&key_file).expect("key").trim(), key);
    // A past expiry is refused, with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args([
            "apikey",
            "new",
            "--name",
            "old",
            "--secret-file",
            secret_arg,
            "--expires",
            "2020-01-01T00:00:00Z",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the past"));
}
