//! `drawbridge audit verify`: checks an audit trail's hash chain, and the signatures of its
//! seals against the instance's public keys (`/.drawbridge/jwks.json`), and says where it
//! first breaks.

use std::path::PathBuf;
use std::process::ExitCode;

use drawbridge_telemetry::chain;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};

pub fn verify(files: &[PathBuf], jwks: Option<&PathBuf>, live: bool) -> ExitCode {
    let keys = match jwks.map(std::fs::read).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: reading the key set: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keys: Option<JwkSet> = match keys.map(|k| serde_json::from_slice(&k)).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: the key set is not a JWK Set: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Rotated files (named after their seal's sequence number) first, in that order; the
    // live file after them: `audit.jsonl*` in any order does.
    let mut files = files.to_vec();
    files.sort_by_key(|f| rotated_seq(f).unwrap_or(u64::MAX));
    let mut trail = Vec::new();
    for f in &files {
        match std::fs::read(f) {
            Ok(b) => trail.push((f.display().to_string(), b)),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let check = keys
        .as_ref()
        .map(|set| move |jws: &str| -> Result<serde_json::Value, String> { signed(set, jws) });
    let check_ref = check.as_ref().map(|c| c as &chain::CheckSignature<'_>);
    match chain::verify(&trail, check_ref, live) {
        Ok(sum) => {
            println!(
                "ok: {} events, #{} to #{}, in {} file{}; {} seal{}",
                sum.events,
                sum.first,
                sum.last,
                trail.len(),
                if trail.len() == 1 { "" } else { "s" },
                sum.seals,
                if sum.seals == 1 { "" } else { "s" },
            );
            if keys.is_some() {
                println!("signatures: {} checked", sum.signatures_checked);
            } else {
                println!(
                    "signatures: not checked (pass --jwks with the instance's /.drawbridge/jwks.json)"
                );
            }
            if sum.dropped > 0 {
                println!(
                    "dropped: {} events were not recorded (the queue was full); the trail says when",
                    sum.dropped
                );
            }
            ExitCode::SUCCESS
        }
        Err(b) => {
            eprintln!("broken: {b}");
            ExitCode::FAILURE
        }
    }
}

/// The sequence number a rotated file's name ends in (`audit.jsonl.00000000000000000042`).
fn rotated_seq(f: &std::path::Path) -> Option<u64> {
    let ext = f.extension()?.to_str()?;
    (ext.len() == 20).then(|| ext.parse().ok()).flatten()
}

/// The claims `jws` carries, if one of `set`'s keys signed it.
fn signed(set: &JwkSet, jws: &str) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(jws).map_err(|e| e.to_string())?;
    let jwk = match &header.kid {
        Some(kid) => set.find(kid),
        None => set.keys.first(),
    }
    .ok_or("no key of the set signed it")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(jws, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}
