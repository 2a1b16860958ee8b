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
}

/// Prints a new key once, on stdout, and the entry for the keys file.
pub fn new(args: NewArgs<'_>) -> ExitCode {
    match make(&args) {
        Ok(text) => {
            crate::out::text(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(a: &NewArgs<'_>) -> Result<String, String> {
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
        humantime::parse_rfc3339_weak(x)
            .map_err(|e| format!("--expires `{x}`: {e} (write e.g. 2027-01-31T00:00:00Z)"))?;
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
    Ok(format!(
        "# The key, shown this once: give it to its holder, it cannot be recovered.\n# {}\n\n# Append to the keys file:\n{entry}",
        key.key
    ))
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
