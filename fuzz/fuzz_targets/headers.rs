//! Header sanitising on arbitrary header lists: never panics, and no forwarding, identity or
//! hop-by-hop header survives in any spelling.
#![no_main]

use drawbridge_proxy::sanitize::strip_request_headers;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|pairs: Vec<(Vec<u8>, Vec<u8>)>| {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
            h.append(k, v);
        }
    }
    strip_request_headers(&mut h);
    for name in h.keys() {
        let n = name.as_str().replace('_', "-");
        assert!(!n.starts_with("x-forwarded-") && !n.starts_with("x-drawbridge-"), "{n}");
        assert!(!["forwarded", "x-real-ip", "connection", "transfer-encoding", "te", "upgrade", "keep-alive"].contains(&n.as_str()), "{n}");
    }
});
