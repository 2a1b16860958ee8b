//! JWK Sets as an issuer (or whoever sits between it and us) might serve them: parsing never
//! panics, and a set either yields keys or an error.
#![no_main]

use drawbridge_identity::KeySet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((keys, _skipped)) = KeySet::parse(data) {
        assert!(!keys.is_empty());
    }
});
