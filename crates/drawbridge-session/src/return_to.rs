//! Where a browser goes back to after signing in. An open redirect here would let anyone
//! send a person through the company's real login and on to a page of their own, so the
//! rule is narrow: a path on the host the login started from, or an `https` URL of a host
//! this gateway serves over https, each spelled one plain way. Every other spelling
//! (scheme-relative, backslashes, `https:` without slashes, user info, encoded delimiters
//! or doubled encodings, control characters and spaces, other ports, look-alike hosts,
//! other schemes) goes to the root of the host the login started from.
//!
//! The target is decided once, when the login starts, and kept with the login state on the
//! server; nothing the IdP's callback carries is trusted for it.

use url::{Host, Url};

/// A host this gateway serves over https, with the port browsers reach it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    host: String,
    port: u16,
}

/// Why a host cannot be an [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not a plain DNS name in ASCII (an IDN must be given in its `xn--` form).
    #[error("`{0}` is not a DNS name in ASCII")]
    NotAName(String),
}

impl Origin {
    /// The origin `https://host:port`; the host as a DNS name in ASCII, any case.
    pub fn new(host: &str, port: u16) -> Result<Origin, OriginError> {
        match drawbridge_config::dns_name(host) {
            Some(host) => Ok(Origin { host, port }),
            None => Err(OriginError::NotAName(host.to_string())),
        }
    }

    /// Its host, lowercase.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://host/`, with the port when it is not 443.
    pub fn root(&self) -> String {
        if self.port == 443 {
            format!("https://{}/", self.host)
        } else {
            format!("https://{}:{}/", self.host, self.port)
        }
    }

    fn is(&self, url: &Url) -> bool {
        matches!(url.host(), Some(Host::Domain(h)) if h == self.host)
            && url.port_or_known_default() == Some(self.port)
    }
}

/// The hosts a return target may name: those the configuration serves over https.
#[derive(Debug, Clone, Default)]
pub struct Served {
    origins: Vec<Origin>,
}

/// Where a browser is sent after signing in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo {
    /// The absolute `https` URL, in its one spelling.
    pub url: String,
    /// Whether the target asked for was refused, so the login returns to the root of the
    /// host it started from (worth a log line: someone may be probing).
    pub refused: bool,
}

/// The longest return target kept.
const MAX_LEN: usize = 4096;

impl Served {
    /// The origins in `origins`.
    pub fn new(origins: impl IntoIterator<Item = Origin>) -> Served {
        Served {
            origins: origins.into_iter().collect(),
        }
    }

    /// Where to send a browser that asked to return to `requested` after a login started on
    /// `from`: `requested` itself, spelled canonically, when it is a path on `from` or an
    /// `https` URL of a served origin; the root of `from` otherwise.
    pub fn return_target(&self, requested: &str, from: &Origin) -> ReturnTo {
        match self.accept(requested, from) {
            Some(url) => ReturnTo {
                url: url.into(),
                refused: false,
            },
            None => ReturnTo {
                url: from.root(),
                refused: true,
            },
        }
    }

    fn accept(&self, requested: &str, from: &Origin) -> Option<Url> {
        if requested.is_empty() || requested.len() > MAX_LEN || !plain_spelling(requested) {
            return None;
        }
        let url = if let Some(rest) = requested.strip_prefix('/') {
            // A path on the host the login started from; `//host` is another host.
            if rest.starts_with('/') {
                return None;
            }
            Url::parse(&from.root()).ok()?.join(requested).ok()?
        } else {
            let scheme = requested.get(..8)?;
            if !scheme.eq_ignore_ascii_case("https://") {
                return None;
            }
            let rest = &requested[8..];
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            // User info (`https://ok.test@evil.test/`), an empty host or `https:///`.
            if authority.is_empty() || authority.contains('@') {
                return None;
            }
            Url::parse(requested).ok()?
        };
        let one_of_ours = url.scheme() == "https"
            && url.username().is_empty()
            && url.password().is_none()
            && (from.is(&url) || self.origins.iter().any(|o| o.is(&url)));
        one_of_ours.then_some(url)
    }
}

/// Visible ASCII only, no backslash, and percent-encodings that hide nothing: before the
/// query, never of a delimiter that could move the target to another host or path (`/`,
/// `\`, `@`, `:`, `?`, `#`, `.`), of `%` itself (a doubled encoding), of a control character
/// or a space. In the query and fragment, which choose neither host nor path, any
/// well-formed encoding (`?next=%2Fhome`).
fn plain_spelling(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_query = false;
    while i < b.len() {
        match b[i] {
            b'\\' => return false,
            c if !(0x21..=0x7e).contains(&c) => return false,
            b'?' | b'#' => in_query = true,
            b'%' if in_query => {
                let well_formed = s
                    .get(i + 1..i + 3)
                    .is_some_and(|h| u8::from_str_radix(h, 16).is_ok());
                if !well_formed {
                    return false;
                }
                i += 3;
                continue;
            }
            b'%' => {
                let Some(hex) = s.get(i + 1..i + 3) else {
                    return false;
                };
                let Ok(byte) = u8::from_str_radix(hex, 16) else {
                    return false;
                };
                if byte < 0x21
                    || byte == 0x7f
                    || matches!(byte, b'/' | b'\\' | b'@' | b':' | b'?' | b'#' | b'.' | b'%')
                {
                    return false;
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> (Served, Origin) {
        let app = Origin::new("app.corp.test", 443).expect("origin");
        let grafana = Origin::new("Grafana.Corp.Test", 8443).expect("origin");
        (Served::new([app.clone(), grafana]), app)
    }

    #[test]
    fn paths_and_served_hosts_are_kept_in_one_spelling() {
        let (s, from) = served();
        for (asked, expected) in [
            ("/", "https://app.corp.test/"),
            (
                "/orders/42?tab=items&x=%C3%A9",
                "https://app.corp.test/orders/42?tab=items&x=%C3%A9",
            ),
            ("/a/./b/../c", "https://app.corp.test/a/c"),
            ("https://app.corp.test/x", "https://app.corp.test/x"),
            ("https://app.corp.test:443/x", "https://app.corp.test/x"),
            ("HTTPS://APP.CORP.TEST/x", "https://app.corp.test/x"),
            ("https://app.corp.test", "https://app.corp.test/"),
            (
                "https://grafana.corp.test:8443/d/1",
                "https://grafana.corp.test:8443/d/1",
            ),
            (
                "https://app.corp.test/x#frag",
                "https://app.corp.test/x#frag",
            ),
            // The query and fragment choose neither host nor path: encodings stay.
            (
                "/x?next=%2Fhome%3Fa%3D1&p=100%25&s=a%20b",
                "https://app.corp.test/x?next=%2Fhome%3Fa%3D1&p=100%25&s=a%20b",
            ),
        ] {
            let r = s.return_target(asked, &from);
            assert_eq!(
                r,
                ReturnTo {
                    url: expected.into(),
                    refused: false
                },
                "{asked}"
            );
        }
    }

    /// Every spelling the issue lists, and more of each family: the host's root.
    #[test]
    fn every_other_spelling_falls_back_to_the_root() {
        let (s, from) = served();
        let refused = [
            // other hosts, schemes, and no scheme at all
            "https://evil.test/",
            "http://app.corp.test/",
            "javascript:alert(1)",
            "data:text/html,hi",
            "evil.test",
            "app.corp.test/x",
            "",
            // scheme-relative, in every slash and backslash spelling
            "//evil.test/",
            "///evil.test/",
            "/\\evil.test/",
            "\\\\evil.test/",
            "\\/evil.test/",
            "https:\\\\evil.test/",
            // `https:` without its two slashes
            "https:evil.test",
            "https:/evil.test",
            "https:app.corp.test/x",
            "https:///evil.test",
            // user info
            "https://app.corp.test@evil.test/",
            "https://app.corp.test:443@evil.test/",
            "https://user:pw@app.corp.test/",
            "https://@app.corp.test/",
            // look-alike hosts
            "https://app.corp.test.evil.test/",
            "https://evilapp.corp.test/",
            "https://app.corp.test./",
            "https://app-corp.test/",
            "https://xn--pp-7ka.corp.test/",
            "https://аpp.corp.test/",
            "https://app.corp.test%2eevil.test/",
            // other ports
            "https://app.corp.test:8443/",
            "https://grafana.corp.test/",
            "https://grafana.corp.test:443/",
            "https://app.corp.test:0/",
            // encoded delimiters and doubled encodings
            "/%2f%2fevil.test/",
            "/%2F%2Fevil.test/",
            "/%5cevil.test/",
            "/%5Cevil.test",
            "%2f%2fevil.test",
            "/%252f%252fevil.test/",
            "/%25",
            "/a%2e%2e/b",
            "/x%40evil.test",
            "https://evil.test%40app.corp.test/",
            "https://evil.test%23@app.corp.test/",
            "/%",
            "/%g1",
            "/%2",
            // control characters, whitespace, and characters outside ASCII
            "/\tevil",
            "/\nhttps://evil.test",
            "\r\n/x",
            " /x",
            "/x y",
            "/%00",
            "/%0d%0aSet-Cookie:x=1",
            "/%09/evil.test",
            "/%20",
            "/\u{7f}",
            "/é",
            "/\u{ff0f}evil.test",
        ];
        for asked in refused {
            let r = s.return_target(asked, &from);
            assert_eq!(
                r,
                ReturnTo {
                    url: "https://app.corp.test/".into(),
                    refused: true
                },
                "{asked:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert!(s.return_target(&long, &from).refused);
    }

    #[test]
    fn a_login_from_another_served_host_falls_back_to_that_host() {
        let (s, _) = served();
        let grafana = Origin::new("grafana.corp.test", 8443).expect("origin");
        let r = s.return_target("//evil.test", &grafana);
        assert_eq!(r.url, "https://grafana.corp.test:8443/");
        let r = s.return_target("/d/7", &grafana);
        assert_eq!(r.url, "https://grafana.corp.test:8443/d/7");
    }

    #[test]
    fn origins_are_plain_ascii_names() {
        for bad in [
            "",
            "app.corp.test.",
            "-a.test",
            "a..test",
            "аpp.test",
            "a b",
            "a_b.test",
            "1.2.3.4:5",
        ] {
            assert!(Origin::new(bad, 443).is_err(), "{bad:?}");
        }
        assert_eq!(Origin::new("App.Test", 443).expect("ok").host(), "app.test");
    }

    proptest::proptest! {
        /// Whatever is asked for, the answer is an https URL of the login's host or a served
        /// origin, without user info, and it is its own canonical spelling.
        #[test]
        fn the_target_is_always_one_of_ours(asked in ".{0,80}", tail in "[ -~]{0,40}") {
            let (s, from) = served();
            for candidate in [asked.clone(), format!("/{tail}"), format!("https://{tail}"), format!("https://app.corp.test{tail}")] {
                let r = s.return_target(&candidate, &from);
                let url = Url::parse(&r.url).expect("an absolute URL");
                proptest::prop_assert_eq!(url.scheme(), "https");
                proptest::prop_assert!(url.username().is_empty() && url.password().is_none());
                proptest::prop_assert!(from.is(&url) || s.origins.iter().any(|o| o.is(&url)), "{} -> {}", candidate, r.url);
                proptest::prop_assert_eq!(url.as_str(), r.url.as_str());
            }
        }
    }
}
