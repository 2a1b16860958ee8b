//! Query screening on arbitrary query strings: never panics; with refusal on, an accepted
//! query holds no credential or method override in any spelling; with stripping on, what is
//! forwarded screens clean.
#![no_main]

use drawbridge_config::QueryRule;
use drawbridge_config::params::canonical_param;
use drawbridge_proxy::sanitize::{QueryScreen, screen_query};
use libfuzzer_sys::fuzz_target;

const WATCHED: &[&str] = &["access_token", "api_key", "apikey", "id_token", "refresh_token", "x_api_key", "_method", "x_http_method_override"];

fuzz_target!(|query: &str| {
    let refuse = QueryScreen {
        credentials: Some(QueryRule::Refuse),
        extra_credentials: &[],
        method_override: Some(QueryRule::Refuse),
    };
    if let Ok(kept) = screen_query(query, &refuse) {
        assert!(kept.is_none());
        for pair in query.split(['&', ';']) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if let Ok(c) = canonical_param(name) {
                assert!(!WATCHED.contains(&c.replace('-', "_").as_str()), "{name} passed");
            }
        }
    }
    let strip = QueryScreen {
        credentials: Some(QueryRule::Strip),
        extra_credentials: &[],
        method_override: Some(QueryRule::Strip),
    };
    if let Ok(Some(kept)) = screen_query(query, &strip) {
        assert_eq!(screen_query(&kept, &refuse), Ok(None), "{kept}");
    }
});
