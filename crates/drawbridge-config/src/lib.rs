//! Drawbridge's configuration: the TOML file format, its checks with file/line/field
//! diagnostics, and the checked [`Config`] that the proxy compiles into a snapshot.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod compile;
mod diag;
pub mod headers;
mod model;
pub mod params;
mod raw;

use std::path::{Path, PathBuf};

pub use compile::{RESERVED_PREFIX, dns_name, https_url};
pub use diag::{Diagnostic, Diagnostics, Location};
pub use model::*;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("error: cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file was read and is wrong.
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(path, &source)?)
}

/// Checks `source` as if it had been read from `path` (relative file names in it are
/// resolved against `path`'s directory).
pub fn parse(path: &Path, source: &str) -> Result<Config, Diagnostics> {
    let raw = deserialize(path, source)?;
    compile::compile(path, source, raw)
}

/// The candidate closest to `word` in spelling, when one is close enough to be what was
/// meant (for "did you mean" help).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word_lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// SHA-256 of everything `parts` hold, in order, each prefixed with its length (so no two
/// lists of parts run together into the same bytes). The project's one digest: config
/// versions, key-set changes, certificate fingerprints, session lookups.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether `a` and `b` are equal, compared without stopping at the first difference: the
/// project's one comparison of secrets (states, nonces, cookies, tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Reads `source` (from `path`) as `T`, reporting a syntax error or the first field that
/// does not fit with its file, line and field path.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    path: &Path,
    source: &str,
) -> Result<T, Diagnostics> {
    let fail = |span: Option<std::ops::Range<usize>>, field: String, message: String| {
        let mut r = diag::Reporter::new(path, source);
        r.error(span.map_or(0, |s| s.start), field, message);
        r.finish().err().unwrap_or_else(|| Diagnostics(Vec::new()))
    };
    let de = toml::Deserializer::parse(source).map_err(|e| {
        fail(
            e.span(),
            "(document)".into(),
            e.message().trim().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned values show up in the path as a private key; users never wrote it.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let field = if field == "." {
            "(document)".to_string()
        } else {
            field
        };
        let inner = e.inner();
        let message = inner.message().trim();
        match unknown_field(message) {
            // serde lists every field of the table, of every authenticator type at once:
            // say the nearest one instead.
            Some((name, expected)) => {
                let mut r = diag::Reporter::new(path, source);
                let at = inner.span().map_or(0, |s| s.start);
                match nearest(name, expected.iter().copied()) {
                    Some(near) => r.error_help(
                        at,
                        field,
                        format!("unknown field `{name}`"),
                        format!("did you mean `{near}`?"),
                    ),
                    None => r.error_help(
                        at,
                        field,
                        format!("unknown field `{name}`"),
                        "docs/configuration.md lists the fields of each table",
                    ),
                }
                r.finish().err().unwrap_or_else(|| Diagnostics(Vec::new()))
            }
            None => fail(inner.span(), field, message.to_string()),
        }
    })
}

/// serde's "unknown field `x`, expected one of `a`, `b`": the field and the fields known.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).collect::<Vec<&str>>();
    Some((name, expected))
}

#[cfg(test)]
mod tests;
