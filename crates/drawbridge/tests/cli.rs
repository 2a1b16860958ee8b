//! The CLI as a user runs it: `check` on good and bad files.

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run drawbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_example() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(stdout.starts_with("ok: "), "{stdout}");
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} examples");
}

#[test]
fn check_reports_every_error_with_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\n[[upstreams]]\nname = \"app\"\nendpoints = [\"http://127.0.0.1:9000\"]\n\n\
         [[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"ap\"\npublic = true\n\n[[routes]]\nname = \"b\"\nprefix = \"/x\"\nupstream = \"app\"\n",
    )
    .expect("write");
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "error: {file}:12:12: `routes[0].upstream`: no upstream is named `ap`"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("help: known upstreams: `app`"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {file}:15:1: `routes[1]`: the route does not say how callers are admitted"
        )),
        "{stderr}"
    );
}

#[test]
fn check_on_a_missing_file_fails_clearly() {
    let (ok, _, stderr) = check(std::path::Path::new("/nonexistent/drawbridge.toml"));
    assert!(!ok);
    assert!(
        stderr.contains("cannot read `/nonexistent/drawbridge.toml`"),
        "{stderr}"
    );
}

fn drawbridge(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run drawbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn the_examples_policy_tests_pass() {
    let (ok, stdout, stderr) = drawbridge(&["test"], &examples().join("policy.toml"));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// A reader that goes away (`drawbridge test | head`) ends the output quietly: no panic, and
/// the exit status is the tests' own.
#[test]
fn test_output_into_a_closed_pipe_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["test", "--config"])
        .arg(examples().join("policy.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run drawbridge");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// A copy of the policy example, with `edit` applied to its test file.
fn example_copy(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, to).expect("copy");
    };
    let ex = examples();
    for f in [
        "policy.toml",
        "keys/ci-jwks.json",
        "policies/shop/orders.cedar",
        "policies/shop/reports.cedar",
        "policies/shop/services.cedar",
        "policies/shop/hooks.cedar",
        "policies/shop-next.cedar",
    ] {
        copy(&ex.join(f), &dir.path().join(f));
    }
    let tests = std::fs::read_to_string(ex.join("policies/shop-tests.toml")).expect("read");
    std::fs::write(dir.path().join("policies/shop-tests.toml"), edit(tests)).expect("write");
    dir
}

#[test]
fn a_failing_policy_test_exits_non_zero_and_says_which_and_why() {
    let dir = example_copy(|t| {
        t.replacen(
            "path = \"/tenants/globex/orders/42\"\nexpect = \"deny\"",
            "path = \"/tenants/globex/orders/42\"\nexpect = \"allow\"",
            1,
        )
    });
    let (ok, stdout, _) = drawbridge(&["test"], &dir.path().join("policy.toml"));
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("FAIL  ") && stdout.contains("...and not another tenant's"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected allow, got deny on route `tenant-orders`: no policy permits it"),
        "{stdout}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");

    // The wrong deciding policy is a failure too.
    let dir = example_copy(|t| {
        t.replacen(
            "policies = [\"tenant-read\"]",
            "policies = [\"reports-read\"]",
            1,
        )
    });
    let (ok, stdout, _) = drawbridge(&["test"], &dir.path().join("policy.toml"));
    assert!(!ok);
    assert!(
        stdout.contains("expected policies [reports-read], decided by [tenant-read]"),
        "{stdout}"
    );
}

#[test]
fn check_reports_policy_errors_with_file_and_line() {
    let dir = example_copy(|t| t);
    std::fs::write(
        dir.path().join("policies/shop/broken.cedar"),
        "// a typo in an attribute\n@id(\"typo\")\npermit (principal, action, resource == Route::\"reports\")\nwhen { principal.tennant == \"acme\" };\n",
    )
    .expect("write");
    let (ok, _, stderr) = drawbridge(&["check"], &dir.path().join("policy.toml"));
    assert!(!ok);
    let file = dir.path().join("policies/shop/broken.cedar");
    assert!(
        stderr.contains(&format!("error: {}:4:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`policy `typo``"), "{stderr}");
    assert!(stderr.contains("tennant"), "{stderr}");
    // And `test` refuses to run against policies that do not compile.
    let (ok, _, stderr) = drawbridge(&["test"], &dir.path().join("policy.toml"));
    assert!(!ok);
    assert!(stderr.contains("tennant"), "{stderr}");
}

#[test]
fn check_warns_about_routes_no_policy_decides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::copy(
        examples().join("keys/ci-jwks.json"),
        dir.path().join("keys.json"),
    )
    .expect("copy");
    let base = "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n\n[[authenticators]]\nname = \"corp\"\ntype = \"jwt\"\nissuer = \"https://idp.test/\"\naudiences = [\"x\"]\njwks_file = \"keys.json\"\n\n[[upstreams]]\nname = \"app\"\nendpoints = [\"http://127.0.0.1:9000\"]\n\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\n";
    // No policy at all: an error, not a route open to every authenticated caller.
    std::fs::write(&path, base).expect("write");
    let (ok, _, stderr) = drawbridge(&["check"], &path);
    assert!(!ok);
    assert!(
        stderr.contains("no policy can decide who may use this route"),
        "{stderr}"
    );
    // Saying so explicitly is allowed, and warned about.
    std::fs::write(&path, format!("{base}authorize = false\n")).expect("write");
    let (ok, stdout, stderr) = drawbridge(&["check"], &path);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("`routes[0].authorize`"),
        "{stderr}"
    );
}

#[test]
fn schema_prints_the_generated_schema() {
    let (ok, stdout, stderr) = drawbridge(&["schema"], &examples().join("policy.toml"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("entity User in [Group]"), "{stdout}");
    assert!(stdout.contains("tenant?: String"), "{stdout}");
    assert!(stdout.contains("amount?: Long"), "{stdout}");
    assert!(stdout.contains("\"x-region\"?: String"), "{stdout}");
    // It parses as a Cedar schema.
    let (_, warnings) = cedar_policy::Schema::from_cedarschema_str(&stdout).expect("valid schema");
    assert_eq!(warnings.count(), 0);
}

/// A listener address in use is one `error:` line saying which listener and address, with
/// the way out.
#[test]
fn serve_on_an_address_in_use_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nname = \"main\"\naddress = \"{addr}\"\n\n[[upstreams]]\nname = \"app\"\nendpoints = [\"http://127.0.0.1:9\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n"
        ),
    )
    .expect("write");
    let (ok, _, stderr) = drawbridge(&["serve"], &path);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: binding listener `main`"),
        "{stderr}"
    );
    assert!(stderr.contains("help:"), "{stderr}");
}

/// Each mistake is one diagnostic, at the line that holds it, with the nearest right name:
/// an unknown route in a policy (it was reported twice, at `[policy]`), a lower-case action
/// (it drew a second, misleading "policy is impossible"), a misspelt field (it listed every
/// authenticator type's fields). `check FILE` works without `--config`, and counts speak
/// English.
#[test]
fn diagnostics_say_each_mistake_once_where_it_is() {
    let dir = example_copy(|t| t);
    let file = dir.path().join("policies/shop/typos.cedar");
    std::fs::write(
        &file,
        "@id(\"route-typo\")\npermit (principal, action == Action::\"GET\", resource == Route::\"report\");\n\n@id(\"action-case\")\npermit (principal, action == Action::\"get\", resource == Route::\"reports\");\n",
    )
    .expect("write");
    let config = dir.path().join("policy.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let route = format!("error: {}:1:", file.display());
    assert_eq!(
        stderr.matches("no route is named `report`").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&route), "{stderr}");
    assert!(
        stderr.contains("did you mean `Route::\"reports\"`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unrecognized action `Action::\"get\"`"),
        "{stderr}"
    );
    assert!(!stderr.contains("impossible"), "{stderr}");
    std::fs::remove_file(&file).expect("remove");

    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "jwks_file = \"keys/ci-jwks.json\"",
            "jwks_file = \"keys/ci-jwks.json\"\njwks_refres = \"5m\"",
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check")
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `jwks_refres`"), "{stderr}");
    assert!(stderr.contains("did you mean `jwks_refresh`?"), "{stderr}");
    assert!(!stderr.contains("trust_domain"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check")
        .arg(examples().join("minimal.toml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(1 listener, 1 upstream, 1 route"),
        "{stdout}"
    );
}
