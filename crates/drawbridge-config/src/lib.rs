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

pub use compile::RESERVED_PREFIX;
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

/// SHA-256 of everything `parts` hold, in order, each prefixed with its length (so no two
/// lists of parts run together into the same bytes).
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
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
        fail(inner.span(), field, inner.message().trim().to_string())
    })
}

#[cfg(test)]
mod tests;
