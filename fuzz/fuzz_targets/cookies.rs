//! Cookie headers from any bytes: reading never panics, and after stripping, no cookie of
//! Drawbridge's (in any case) is left for an upstream while every other pair is kept, in
//! order.
#![no_main]

use drawbridge_session::cookies;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for part in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(header::COOKIE, v);
        }
    }
    let _ = cookies::find(&headers, "__Host-drawbridge-session");
    let before: Vec<Vec<u8>> = pairs(&headers);
    cookies::strip_own(&mut headers);
    let after = pairs(&headers);
    let own = |p: &[u8]| {
        let name = p.split(|&b| b == b'=').next().unwrap_or_default().trim_ascii();
        name.len() >= 18 && name[..18].eq_ignore_ascii_case(b"__host-drawbridge-")
    };
    assert!(after.iter().all(|p| !own(p)), "{after:?}");
    let kept: Vec<Vec<u8>> = before.into_iter().filter(|p| !own(p)).collect();
    assert_eq!(after, kept);
});

/// The non-empty `name=value` pairs of every Cookie header, trimmed, in order.
fn pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(|p| p.trim_ascii().to_vec())
        .filter(|p| !p.is_empty())
        .collect()
}
