//! Drawbridge's cookies in requests and responses. Its own cookies (`__Host-drawbridge-…`)
//! are read here and never reach an upstream; every other cookie passes untouched.

use http::{HeaderMap, HeaderValue, header};

/// The prefix of every cookie Drawbridge sets; cookie names compare exactly, but a
/// spelling in another case is Drawbridge's too and is never forwarded.
const OWN_PREFIX: &str = "__host-drawbridge-";

/// The value of cookie `name`, when the request carries it exactly once (in any of its
/// `Cookie` headers). Two values for one name are ambiguous: neither is used.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((n, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if n.trim() == name {
                if found.is_some() {
                    return None;
                }
                found = Some(value.trim().trim_matches('"'));
            }
        }
    }
    found
}

/// Removes Drawbridge's own cookies from the request's `Cookie` headers; the others are
/// kept, in order, in one header. Returns whether anything was removed.
pub fn strip_own(headers: &mut HeaderMap) -> bool {
    if !headers.contains_key(header::COOKIE) {
        return false;
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed = false;
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    for v in &values {
        for pair in v.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let name = pair
                .split(|&b| b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if name.len() >= OWN_PREFIX.len()
                && name[..OWN_PREFIX.len()].eq_ignore_ascii_case(OWN_PREFIX.as_bytes())
            {
                removed = true;
            } else {
                kept.push(pair);
            }
        }
    }
    if !removed {
        return false;
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        let joined = kept.join(&b"; "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
    true
}

/// A `Set-Cookie` for one of Drawbridge's `__Host-` cookies: Secure, HttpOnly,
/// SameSite=Lax, Path=/, no Domain; a session cookie (gone with the browser) when
/// `max_age` is `None`.
pub fn set(name: &str, value: &str, max_age: Option<u64>) -> Option<HeaderValue> {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax{age}"
    ))
    .ok()
}

/// A `Set-Cookie` that removes `name`.
pub fn clear(name: &str) -> HeaderValue {
    set(name, "", Some(0)).unwrap_or_else(|| HeaderValue::from_static("x=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn own_cookies_never_pass_and_others_do() {
        for (sent, kept) in [
            (
                vec!["a=1; __Host-drawbridge-session=x; b=2"],
                Some("a=1; b=2"),
            ),
            (vec!["__Host-drawbridge-session=x"], None),
            (vec!["__HOST-DRAWBRIDGE-SESSION=x; c=3"], Some("c=3")),
            (
                vec!["a=1", " __Host-drawbridge-login=y ;b=2"],
                Some("a=1; b=2"),
            ),
            (vec!["  __host-drawbridge-anything =z"], None),
        ] {
            let mut h = headers(&sent);
            assert!(strip_own(&mut h), "{sent:?}");
            let got: Vec<_> = h.get_all(header::COOKIE).iter().collect();
            match kept {
                Some(k) => assert_eq!(got, vec![k], "{sent:?}"),
                None => assert!(got.is_empty(), "{sent:?}"),
            }
        }
        let mut h = headers(&["a=1; drawbridge-session=x"]);
        assert!(!strip_own(&mut h));
        assert_eq!(h[header::COOKIE], "a=1; drawbridge-session=x");
    }

    #[test]
    fn a_cookie_named_twice_is_not_read() {
        let name = "__Host-drawbridge-session";
        assert_eq!(
            find(&headers(&["a=1; __Host-drawbridge-session=v"]), name),
            Some("v")
        );
        assert_eq!(
            find(&headers(&["__Host-drawbridge-session=v", "b=2"]), name),
            Some("v")
        );
        assert_eq!(
            find(
                &headers(&["__Host-drawbridge-session=v; __Host-drawbridge-session=w"]),
                name
            ),
            None
        );
        assert_eq!(
            find(
                &headers(&["__Host-drawbridge-session=v", "__Host-drawbridge-session=v"]),
                name
            ),
            None
        );
        assert_eq!(find(&headers(&["__host-drawbridge-session=v"]), name), None);
    }

    #[test]
    fn set_cookies_are_host_only_and_secure() {
        let c = set("__Host-drawbridge-session", "abc", None).expect("value");
        assert_eq!(
            c,
            "__Host-drawbridge-session=abc; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert!(!c.to_str().expect("str").contains("Domain"));
        assert!(
            clear("__Host-drawbridge-login")
                .to_str()
                .expect("str")
                .ends_with("Max-Age=0")
        );
    }
}
