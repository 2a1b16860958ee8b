//! Path normalisation on arbitrary request targets: never panics, and what it accepts is
//! normalised (no empty, `.` or `..` segments) and a fixed point of itself.
#![no_main]

use drawbridge_proxy::sanitize::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(p) = normalize_path(raw) else { return };
    assert!(p.decoded.starts_with('/'));
    let inner = p.decoded.trim_end_matches('/');
    assert!(inner.is_empty() || inner[1..].split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
    let again = normalize_path(&p.encoded).expect("the canonical form is accepted");
    assert_eq!(again, p);
});
