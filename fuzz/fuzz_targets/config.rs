//! The config parser and checks on arbitrary text: diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(d) = drawbridge_config::parse(std::path::Path::new("fuzz.toml"), text) {
        assert!(!d.0.is_empty());
        for diag in &d.0 {
            assert!(diag.location.line >= 1);
        }
    }
});
