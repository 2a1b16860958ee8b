//! Who gets sent to sign in: a person's browser opening a page, and nothing else. A route
//! may admit both browsers (with a session) and API clients (with a token); a request
//! without credentials that is a browser's top-level navigation is sent to the login page,
//! every other one (an API call, a non-GET, a fetch or XHR, a frame, a gRPC call, a
//! WebSocket) is answered 401 as before and never redirected: a redirect answer to a script
//! or a client library is a confusing failure, and to a POST a lost body.

use http::{HeaderMap, Method, header};

/// Whether a request without a usable credential is a browser's top-level page load, to be
/// sent to sign in.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET
        || headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key("x-requested-with")
    {
        return false;
    }
    // Fetch metadata, where the browser sends it (all current ones do): only a document
    // navigation, never a fetch, an image, a frame or a worker.
    if !only_value(headers, "sec-fetch-mode").is_none_or(|m| m.eq_ignore_ascii_case("navigate")) {
        return false;
    }
    if !only_value(headers, "sec-fetch-dest").is_none_or(|d| d.eq_ignore_ascii_case("document")) {
        return false;
    }
    // gRPC is POST only (the proxy classifies it once): the method has said no already.
    accepts_html(headers)
}

/// Whether a request is a browser submitting a form (a top-level navigation that is not a
/// GET): what a page, rather than a bare status, should answer.
pub fn is_form_submission(method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::GET
        || method == Method::HEAD
        || headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key("x-requested-with")
    {
        return false;
    }
    only_value(headers, "sec-fetch-mode").is_none_or(|m| m.eq_ignore_ascii_case("navigate"))
        && only_value(headers, "sec-fetch-dest").is_none_or(|d| d.eq_ignore_ascii_case("document"))
        && accepts_html(headers)
}

/// The one value of `name`; a header sent twice counts as a value no rule accepts.
fn only_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().unwrap_or("\u{0}")),
        (Some(_), Some(_)) => Some("\u{0}"),
    }
}

/// Whether `Accept` names `text/html` with a weight above zero. `*/*` alone does not count:
/// that is what command-line clients and libraries send.
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            media.eq_ignore_ascii_case("text/html")
                && parts.all(|p| {
                    let Some((k, v)) = p.split_once('=') else {
                        return true;
                    };
                    !k.trim().eq_ignore_ascii_case("q")
                        || v.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_ACCEPT: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn page(extra: &[(&str, &str)]) -> HeaderMap {
        let mut all = vec![
            ("accept", CHROME_ACCEPT),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ];
        all.extend_from_slice(extra);
        headers(&all)
    }

    #[test]
    fn a_browser_opening_a_page_is_sent_to_sign_in() {
        assert!(is_navigation(&Method::GET, &page(&[])));
        // Browsers without fetch metadata.
        assert!(is_navigation(
            &Method::GET,
            &headers(&[("accept", CHROME_ACCEPT)])
        ));
        assert!(is_navigation(
            &Method::GET,
            &headers(&[("accept", "TEXT/HTML")])
        ));
    }

    #[test]
    fn everything_else_gets_a_401_not_a_redirect() {
        let no = [
            (Method::POST, page(&[])),
            (Method::HEAD, page(&[])),
            (Method::PUT, page(&[])),
            (Method::GET, page(&[("authorization", "Bearer x")])),
            (Method::GET, page(&[("x-requested-with", "XMLHttpRequest")])),
            (Method::GET, page(&[("upgrade", "websocket")])),
            (
                Method::POST,
                page(&[("content-type", "application/grpc+proto")]),
            ),
            // fetch(), images, frames, workers
            (
                Method::GET,
                headers(&[
                    ("accept", CHROME_ACCEPT),
                    ("sec-fetch-mode", "cors"),
                    ("sec-fetch-dest", "empty"),
                ]),
            ),
            (
                Method::GET,
                headers(&[
                    ("accept", CHROME_ACCEPT),
                    ("sec-fetch-mode", "no-cors"),
                    ("sec-fetch-dest", "image"),
                ]),
            ),
            (
                Method::GET,
                headers(&[
                    ("accept", CHROME_ACCEPT),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "iframe"),
                ]),
            ),
            (
                Method::GET,
                headers(&[
                    ("accept", CHROME_ACCEPT),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-mode", "navigate"),
                ]),
            ),
            // command-line clients and libraries
            (Method::GET, headers(&[("accept", "*/*")])),
            (Method::GET, headers(&[])),
            (Method::GET, headers(&[("accept", "application/json")])),
            (Method::GET, headers(&[("accept", "text/html;q=0")])),
            (
                Method::GET,
                headers(&[("accept", "text/html; q=0.0, application/json")]),
            ),
            (Method::GET, headers(&[("accept", "text/htmlx")])),
        ];
        for (i, (m, h)) in no.iter().enumerate() {
            assert!(!is_navigation(m, h), "case {i}: {m} {h:?}");
        }
    }
}
