//! What `drawbridge audit verify` reads: any bytes, as one or two files of a trail. Never a
//! panic; a trail it accepts is one whose every line follows the one before it, so any
//! change to an accepted trail's bytes that keeps it a trail of the same length is found.
#![no_main]

use drawbridge_telemetry::chain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let files = vec![
        ("a".to_string(), a.to_vec()),
        ("b".to_string(), b.to_vec()),
    ];
    for live in [false, true] {
        let _ = chain::verify(&files, None, live);
        let _ = chain::verify(&files[1..], None, live);
    }
    // A trail that verifies stops verifying when one of its events is edited.
    if let Ok(sum) = chain::verify(&files[1..], None, true)
        && sum.events >= 2
        && let Some(i) = b.iter().position(|&c| c == b'"')
    {
        let mut edited = b.to_vec();
        edited.insert(i + 1, b'x');
        let first_line_end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        if i < first_line_end {
            assert!(
                chain::verify(&[("b".to_string(), edited)], None, true).is_err(),
                "an edited first event went unnoticed"
            );
        }
    }
});
