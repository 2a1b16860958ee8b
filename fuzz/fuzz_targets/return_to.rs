//! Return targets after a login, from any bytes: never panics, and the answer is always an
//! https URL of the login's host or a served origin, without user info, in its one spelling.
#![no_main]

use drawbridge_session::{Origin, Served};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(asked) = std::str::from_utf8(data) else { return };
    let from = Origin::new("app.corp.test", 443).expect("origin");
    let other = Origin::new("grafana.corp.test", 8443).expect("origin");
    let served = Served::new([from.clone(), other]);
    let r = served.return_target(asked, &from);
    let url = url::Url::parse(&r.url).expect("an absolute URL");
    assert_eq!(url.scheme(), "https");
    assert!(url.username().is_empty() && url.password().is_none());
    let at = (url.host_str(), url.port_or_known_default());
    assert!(
        at == (Some("app.corp.test"), Some(443)) || at == (Some("grafana.corp.test"), Some(8443)),
        "{asked:?} -> {}",
        r.url
    );
    assert_eq!(url.as_str(), r.url);
    if r.refused {
        assert_eq!(r.url, "https://app.corp.test/");
    }
});
