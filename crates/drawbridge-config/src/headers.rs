//! Which request headers a client may never send upstream: the names that convey identity, a
//! client address, or another proxy's verdict in common ecosystems (nginx, Envoy, Traefik,
//! oauth2-proxy, Pomerium, Authelia, Kong, cloud load balancers, web frameworks).
//!
//! Names are compared folded: lower-case, with `_` and `.` read as `-`, because CGI-style
//! servers turn `X_Auth_User`, `X.Auth.User` and `X-Auth-User` into one variable.

use std::borrow::Cow;

/// Header names removed from every request, folded. Sorted, for binary search.
pub const STRIPPED: &[&str] = &[
    "client-ip",
    "forwarded",
    "front-end-https",
    "remote-addr",
    "remote-user",
    "ssl-client-cert",
    "true-client-ip",
    "x-access-token",
    "x-arr-clientcert",
    "x-arr-ssl",
    "x-auth",
    "x-authorization",
    "x-email",
    "x-forwarded",
    "x-groups",
    "x-host",
    "x-http-method",
    "x-http-method-override",
    "x-https",
    "x-id-token",
    "x-identity",
    "x-login",
    "x-method-override",
    "x-principal",
    "x-real-ip",
    "x-request-id",
    "x-roles",
    "x-scheme",
    "x-uid",
    "x-url-scheme",
    "x-user",
    "x-userid",
    "x-userinfo",
    "x-username",
];

/// Prefixes of folded header names removed from every request.
pub const STRIPPED_PREFIXES: &[&str] = &[
    "cf-access-",
    "cf-connecting-ip",
    "fastly-client-",
    "remote-",
    "ssl-client-",
    "x-amzn-oidc-",
    "x-arr-",
    "x-auth-",
    "x-authenticated-",
    "x-authz-",
    "x-cert-",
    "x-client-cert",
    "x-client-dn",
    "x-client-i-",
    "x-client-ip",
    "x-client-issuer",
    "x-client-s-",
    "x-client-san",
    "x-client-subject",
    "x-client-tls",
    "x-client-verify",
    "x-cluster-client-",
    "x-consumer-",
    "x-credential-",
    "x-drawbridge-",
    "x-envoy-",
    "x-ext-authz",
    "x-forwarded-",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-internal-",
    "x-invoke-",
    "x-istio-",
    "x-jwt-",
    "x-middleware-",
    "x-ms-client-principal",
    "x-oauth-",
    "x-original-",
    "x-originating-",
    "x-pomerium-",
    "x-proxy-",
    "x-remote-",
    "x-rewrite-",
    "x-spiffe",
    "x-ssl-",
    "x-tls-client-",
    "x-user-",
    "x-vouch-",
    "x-webauth-",
];

/// The headers Drawbridge sets itself on the way upstream, folded: no route may take them
/// from a client.
pub fn is_drawbridge_set(folded: &str) -> bool {
    matches!(
        folded,
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-client-cert"
            | "x-request-id"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) || folded.starts_with("x-drawbridge-")
}

/// `name` (lower-case, as HTTP libraries hand it) with `_` and `.` read as `-`.
pub fn fold(name: &str) -> Cow<'_, str> {
    if is_nonstandard(name) {
        Cow::Owned(name.replace(['_', '.'], "-"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `name` holds a character that some servers fold into `-`. Every header name of
/// every request is asked, so the bytes are read eight at a time: whole words, then the
/// last eight bytes again; a shorter name as its first and last four bytes (overlapping
/// where it is shorter still), and one of under four bytes a byte at a time.
pub fn is_nonstandard(name: &str) -> bool {
    let bytes = name.as_bytes();
    let folds = |word: u64| has_byte(word, b'_') || has_byte(word, b'.');
    if let Some(tail) = bytes.last_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        return words.iter().any(|w| folds(u64::from_le_bytes(*w)))
            || folds(u64::from_le_bytes(*tail));
    }
    match (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        (Some(head), Some(tail)) => {
            folds(u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*tail)) << 32)
        }
        _ => bytes.iter().any(|&b| b == b'_' || b == b'.'),
    }
}

/// Whether any byte of `word` is `b`. A byte of `x = word ^ b…b` is zero exactly where
/// `word` holds `b`; `(x - 1…1) & !x & 80…80` is non-zero exactly when `x` has a zero byte
/// (the lowest zero byte always sets its high bit; a borrow sets others only above it).
fn has_byte(word: u64, b: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let x = word ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGH != 0
}

/// Whether the built-in list removes `folded`. Names that start with a letter no listed
/// name starts with (most of them: `accept`, `host`, `user-agent`) are answered at once.
pub fn is_stripped(folded: &str) -> bool {
    let Some(&first) = folded.as_bytes().first() else {
        return false;
    };
    if !matches!(first, b'c' | b'f' | b'r' | b's' | b't' | b'x') {
        return false;
    }
    STRIPPED.binary_search(&folded).is_ok()
        || STRIPPED_PREFIXES
            .iter()
            .any(|p| p.as_bytes()[0] == first && folded.starts_with(p))
}

/// Why a client header can never be handed to policies (`[routes.context] headers`), if it
/// cannot. Policies see the headers as sanitize leaves them: a name sanitize removes would
/// only ever be absent there, and a credential is never for a policy to read.
pub fn hidden_from_policies(name: &str) -> Option<&'static str> {
    let folded = fold(name);
    if matches!(
        &*folded,
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) {
        Some("carries a credential; the caller is `principal`")
    } else if is_nonstandard(name) {
        Some("is a spelling servers fold into another name; such names never reach a policy")
    } else if is_drawbridge_set(&folded) {
        Some("is set by Drawbridge or frames the connection; the client address is `context.ip`")
    } else if is_stripped(&folded) {
        Some("is an identity, address or verdict header Drawbridge removes from every client")
    } else {
        None
    }
}

/// One entry of a configured list: an exact name, or a prefix when it ends in `*`.
pub fn matches_entry(entry: &str, folded: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => folded.starts_with(prefix),
        None => entry == folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_folded_and_lower_case() {
        assert!(STRIPPED.windows(2).all(|w| w[0] < w[1]));
        for n in STRIPPED.iter().chain(STRIPPED_PREFIXES) {
            assert_eq!(fold(n), *n);
            assert_eq!(n.to_ascii_lowercase(), *n);
            // The first-letter fast path knows every letter the lists start with.
            assert!(b"cfrstx".contains(&n.as_bytes()[0]), "{n}");
        }
    }

    #[test]
    fn nonstandard_names_are_found_at_every_length_and_position() {
        // Every byte a header name may hold, at every place in names of up to five words
        // (short names, whole words, and every overlap of the last word), against the plain
        // byte-by-byte answer.
        let tchar: Vec<u8> = (0x21u8..0x7f)
            .filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b))
            .collect();
        for len in 1..=40 {
            for at in 0..len {
                for &b in &tchar {
                    let mut name = vec![b'a'; len];
                    name[at] = b;
                    let name = String::from_utf8(name).expect("ascii");
                    let plain = name.bytes().any(|b| b == b'_' || b == b'.');
                    assert_eq!(is_nonstandard(&name), plain, "{name:?}");
                    assert_eq!(matches!(fold(&name), Cow::Owned(_)), plain, "{name:?}");
                }
            }
        }
        // Bytes one above and below the two, which a careless word test confuses.
        for name in [
            "a^b",
            "a`b",
            "a-b",
            "a/b",
            "a\u{7f}b",
            "\u{80}",
            "x-ok-ok-ok-ok",
        ] {
            assert!(!is_nonstandard(name), "{name:?}");
        }
        assert!(!is_nonstandard(""));
        // A long name, the byte in its last, overlapped word.
        let mut long = "x-".repeat(100);
        assert!(!is_nonstandard(&long));
        long.push('_');
        assert!(is_nonstandard(&long));
    }

    #[test]
    fn folds_every_spelling() {
        for n in [
            "x-auth-user",
            "x_auth_user",
            "x.auth.user",
            "x_auth-user",
            "remote_user",
            "x-forwarded-user",
            "x_forwarded_email",
            "x-ssl-client-s-dn",
            "x-client-cert",
            "x-client-verify",
            "ssl_client_verify",
            "x-envoy-internal",
            "x-middleware-subrequest",
            "x-http-method-override",
            "x-proxy-user",
            "x-auth-request-preferred-username",
            "x-user",
            "x-user-id",
            "cf-access-jwt-assertion",
            "x-goog-authenticated-user-email",
            "x-amzn-oidc-identity",
        ] {
            assert!(is_stripped(&fold(n)), "{n}");
        }
        for n in [
            "accept",
            "authorization",
            "x-app",
            "content-type",
            "x-users-count",
        ] {
            assert!(!is_stripped(&fold(n)), "{n}");
        }
    }
}
