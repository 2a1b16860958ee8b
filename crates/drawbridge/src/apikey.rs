//! `drawbridge apikey`: making API keys and the server secret they are hashed with.

use std::path::Path;
use std::process::ExitCode;

use drawbridge_identity::apikey;

/// Prints a new server secret.
pub fn secret() -> ExitCode {
    match apikey::new_secret() {
        Ok(s) => {
            crate::out::say!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `apikey new` was asked for.
pub struct NewArgs<'a> {
    pub name: &'a str,
    pub secret_file: &'a Path,
    pub principal: Option<&'a str>,
    pub groups: &'a [String],
    pub expires: Option<&'a str>,
    pub attributes: &'a [String],
    pub key_file: Option<&'a Path>,
}

/// Makes a new key: its keys-file entry on stdout, the key on stderr or in `--key-file`.
/// The two never share a stream, so `apikey new ... >> apikeys.toml` stores the entry only.
pub fn new(args: NewArgs<'_>) -> ExitCode {
    let made = make(&args).and_then(|(key, entry)| {
        match args.key_file {
            Some(path) => {
                write_private(path, format!("{key}\n").as_bytes())
                    .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
                eprintln!(
                    "The key is in `{}` (readable by you only): give it to its holder; it cannot be recovered.",
                    path.display()
                );
            }
            None => eprintln!(
                "The key, shown this once (give it to its holder; it cannot be recovered):\n{key}\n"
            ),
        }
        Ok(entry)
    });
    match made {
        Ok(entry) => {
            crate::out::text(&entry);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates `path` (never over an existing file), readable and writable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Warns when the server secret can be read by others than its owner: anyone who reads it
/// can make keys.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: `{}` can be read by others than its owner (mode {:o}); whoever reads it can make keys: chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// The key and its keys-file entry.
fn make(a: &NewArgs<'_>) -> Result<(String, String), String> {
    warn_if_shared(a.secret_file);
    let secret = std::fs::read_to_string(a.secret_file)
        .map_err(|e| format!("cannot read `{}`: {e}", a.secret_file.display()))?;
    let secret = secret.trim();
    if secret.len() < 32 {
        return Err(format!(
            "`{}` holds fewer than 32 characters; make one with `drawbridge apikey secret`",
            a.secret_file.display()
        ));
    }
    if let Some(x) = a.expires {
        let at = humantime::parse_rfc3339_weak(x)
            .map_err(|e| format!("--expires `{x}`: {e} (write e.g. 2027-01-31T00:00:00Z)"))?;
        if at <= std::time::SystemTime::now() {
            return Err(format!(
                "--expires `{x}` is in the past: the key would never work"
            ));
        }
    }
    let mut attributes = Vec::new();
    for kv in a.attributes {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--attribute `{kv}`: write NAME=VALUE"))?;
        attributes.push((k.trim(), v.trim()));
    }
    let key = apikey::new_key(secret.as_bytes())?;
    let q = |s: &str| toml_string(s);
    let mut entry = format!("[[keys]]\nid = {}\nname = {}\n", q(&key.id), q(a.name));
    if let Some(p) = a.principal {
        entry.push_str(&format!("principal = {}\n", q(p)));
    }
    entry.push_str(&format!("hash = {}\n", q(&key.hash)));
    if let Some(x) = a.expires {
        entry.push_str(&format!("expires = {}\n", q(x)));
    }
    if !a.groups.is_empty() {
        let g: Vec<String> = a.groups.iter().map(|g| q(g)).collect();
        entry.push_str(&format!("groups = [{}]\n", g.join(", ")));
    }
    if !attributes.is_empty() {
        let kv: Vec<String> = attributes
            .iter()
            .map(|(k, v)| format!("{} = {}", q(k), q(v)))
            .collect();
        entry.push_str(&format!("attributes = {{ {} }}\n", kv.join(", ")));
    }
    Ok((key.key, format!("\n{entry}")))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
