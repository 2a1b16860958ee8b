//! Request parameters (query and URL-encoded form fields): credentials and method overrides
//! in every spelling frameworks read.

/// Query parameters that carry a credential (RFC 6750 §2.3 `access_token`, API keys, OIDC
/// tokens), as canonical names with `-` read as `_`.
const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "id_token",
    "refresh_token",
    "x_api_key",
];

/// Query parameters that override the method frameworks run (Rails, Laravel, Symfony,
/// Express method-override), as canonical names with `-` read as `_`.
const METHOD_OVERRIDE_PARAMS: &[&str] = &[
    "_http_method",
    "_method",
    "x_http_method",
    "x_http_method_override",
    "x_method_override",
];

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter name that cannot be read one way only.
    #[error(transparent)]
    Name(#[from] drawbridge_config::params::ParamNameError),
    /// A credential in the query string or a form body of an authenticated route.
    #[error("credential as a request parameter (`{0}`); send it in a header")]
    Credential(String),
    /// A method override in the query string or a form body.
    #[error("method override as a request parameter (`{0}`)")]
    MethodOverride(String),
}

/// Which parameters a route screens its query for.
#[derive(Debug, Clone, Copy)]
pub struct QueryScreen<'a> {
    /// Credentials (authenticated routes), and what becomes of them.
    pub credentials: Option<drawbridge_config::QueryRule>,
    /// Extra credential parameter names (API-key header names), canonical with `_` for `-`.
    pub extra_credentials: &'a [String],
    /// Method overrides (routes that authenticate or restrict methods), and what becomes of
    /// them.
    pub method_override: Option<drawbridge_config::QueryRule>,
}

/// Screens a query string for credentials and method overrides, in every spelling frameworks
/// read as those names (`Access_Token`, `access_token[]`, `%61ccess_token`), with `&` or `;`
/// between pairs; a name with a control character is refused. Returns the query to forward
/// when parameters were stripped.
pub fn screen_query(query: &str, screen: &QueryScreen<'_>) -> Result<Option<String>, QueryError> {
    use drawbridge_config::QueryRule;
    let mut kept: Option<Vec<&str>> = None;
    for (i, pair) in query.split(['&', ';']).enumerate() {
        if pair.is_empty() {
            continue;
        }
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = param_key(raw)?;
        let credential = screen.credentials.filter(|_| {
            CREDENTIAL_PARAMS.contains(&name.as_ref())
                || screen.extra_credentials.iter().any(|c| *c == name)
        });
        let overriding = screen
            .method_override
            .filter(|_| METHOD_OVERRIDE_PARAMS.contains(&name.as_ref()));
        let rule = match (credential, overriding) {
            (Some(QueryRule::Refuse), _) => return Err(QueryError::Credential(name.into_owned())),
            (_, Some(QueryRule::Refuse)) => {
                return Err(QueryError::MethodOverride(name.into_owned()));
            }
            (Some(r), _) | (None, Some(r)) => Some(r),
            (None, None) => None,
        };
        match (rule, kept.as_mut()) {
            (Some(_), None) => {
                // The first one stripped: what came before is kept.
                kept = Some(
                    query
                        .split(['&', ';'])
                        .take(i)
                        .filter(|p| !p.is_empty())
                        .collect(),
                );
            }
            (Some(_), Some(_)) => {}
            (None, Some(k)) => k.push(pair),
            (None, None) => {}
        }
    }
    Ok(kept.map(|k| k.join("&")))
}

/// A parameter name's canonical form with `-` read as `_`; plain ASCII names are only
/// lower-cased, without allocating when already lower-case.
fn param_key(
    raw: &str,
) -> Result<std::borrow::Cow<'_, str>, drawbridge_config::params::ParamNameError> {
    use std::borrow::Cow;
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let canonical = drawbridge_config::params::canonical_param(raw)?;
    Ok(Cow::Owned(canonical.replace('-', "_")))
}
