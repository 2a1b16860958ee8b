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
