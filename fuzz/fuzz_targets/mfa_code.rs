//! What a person types in the second-factor code field: read one way, never a panic. A
//! recovery code's stored form reads back as itself (one code, one digest, whatever the
//! spelling), and only digits are ever taken for an app's code.
#![no_main]

use drawbridge_mfa::Code;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(typed) = std::str::from_utf8(data) else {
        return;
    };
    match Code::parse(typed) {
        Code::Digits(d) => {
            assert!(!d.is_empty() && d.len() <= 10 && d.bytes().all(|b| b.is_ascii_digit()));
        }
        Code::Recovery(normal) => {
            assert_eq!(normal.len(), 29);
            assert_eq!(Code::parse(&normal), Code::Recovery(normal.clone()));
            assert_eq!(
                Code::parse(&normal.to_uppercase().replace('-', " ")),
                Code::Recovery(normal.clone())
            );
        }
        Code::Other => {}
    }
});
