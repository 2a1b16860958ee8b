//! Credentials as clients send them: Authorization and API-key headers of any shape, and
//! client certificates' bytes; reading them never panics.
#![no_main]

use drawbridge_identity::{ClientCert, Credentials};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<u8>)| {
    let (auth_values, cert) = input;
    let mut h = HeaderMap::new();
    for v in auth_values {
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            h.append(http::header::AUTHORIZATION, v.clone());
            h.append(HeaderName::from_static("x-api-key"), v);
        }
    }
    if let Ok(c) = Credentials::from_headers(&h) {
        if let Some(t) = c.bearer {
            assert!(!t.is_empty() && !t.contains(' '));
        }
    }
    let _ = ClientCert::from_der(&cert);
});
