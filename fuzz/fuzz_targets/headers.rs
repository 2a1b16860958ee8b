//! Header sanitising on arbitrary header lists, on listeners of every setting: never panics,
//! and no forwarding, identity, verdict or hop-by-hop header survives in any spelling.
#![no_main]

use drawbridge_config::NonstandardHeaderNames;
use drawbridge_config::headers::{fold, is_nonstandard, is_stripped};
use drawbridge_proxy::sanitize::{HeaderRules, strip_request_headers};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Vec<(Vec<u8>, Vec<u8>)>)| {
    let (setting, pairs) = input;
    let setting = match setting % 3 {
        0 => NonstandardHeaderNames::Drop,
        1 => NonstandardHeaderNames::Refuse,
        _ => NonstandardHeaderNames::Forward,
    };
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
            h.append(k, v);
        }
    }
    if strip_request_headers(&mut h, &HeaderRules::default(), setting).is_err() {
        return;
    }
    for name in h.keys() {
        let n = name.as_str();
        assert!(!is_stripped(&fold(n)), "{n} survived");
        assert!(setting == NonstandardHeaderNames::Forward || !is_nonstandard(n), "{n} survived");
        assert!(!["connection", "transfer-encoding", "te", "upgrade", "keep-alive"].contains(&n), "{n}");
    }
});
