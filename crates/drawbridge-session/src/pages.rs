//! The pages people see under `/.drawbridge/`: choosing a provider, signed out, who am I,
//! and a failed sign-in. Server-rendered (maud escapes every value), no JavaScript, no
//! third-party asset: one stylesheet served by Drawbridge, under a strict
//! Content-Security-Policy (see [`content_security_policy`]).

use maud::{DOCTYPE, Markup, html};

/// Where the pages' stylesheet is served.
pub const STYLESHEET_PATH: &str = "/.drawbridge/style.css";

/// The stylesheet: readable on a phone, high contrast, visible focus.
pub const STYLESHEET: &str = "\
:root{color-scheme:light dark;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;line-height:1.5}
body{margin:0;padding:1rem;background:#f4f5f7;color:#111}
main{max-width:32rem;margin:2rem auto;background:#fff;border-radius:.5rem;padding:1.5rem;box-shadow:0 1px 3px #0003}
h1{font-size:1.4rem;margin-top:0}
h2{font-size:1.1rem;margin-top:1.5rem}
button{font:inherit;width:100%;padding:.75rem 1rem;margin:.25rem 0;border:2px solid #0b57d0;border-radius:.4rem;background:#0b57d0;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#0b57d0}
button:focus-visible,a:focus-visible{outline:3px solid #e37400;outline-offset:2px}
a{color:#0b57d0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
.muted{color:#555}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input[type=text]{font:inherit;font-size:1.3rem;letter-spacing:.15em;width:100%;box-sizing:border-box;padding:.6rem;border:2px solid #888;border-radius:.4rem}
.qr{display:block;margin:1rem auto;width:14rem;height:14rem;background:#fff;padding:.5rem}
.secret{font-family:ui-monospace,monospace;overflow-wrap:anywhere;font-size:1.1rem}
.codes{font-family:ui-monospace,monospace;columns:2;font-size:1.05rem}
.error{color:#b3261e;font-weight:600}
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}main{background:#1c1c1e}.muted{color:#bbb}a{color:#8ab4f8}button{background:#8ab4f8;border-color:#8ab4f8;color:#000}button.secondary{background:transparent;color:#8ab4f8}}
";

/// The Content-Security-Policy of every page: nothing but its own stylesheet and script (the
/// WebAuthn glue, fetching from Drawbridge only); forms post to
/// Drawbridge only, and the redirects that follow may go to `form_targets` (the providers'
/// origins); never framed.
pub fn content_security_policy(form_targets: &[String]) -> String {
    let mut targets = String::from("'self'");
    for t in form_targets {
        targets.push(' ');
        targets.push_str(t);
    }
    format!(
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )
}

/// A whole page: `body` under `title`, with the stylesheet.
pub fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body { main { (body) } }
        }
    }
    .into_string()
}

/// One provider to choose on the sign-in page.
pub struct Choice<'a> {
    /// The authenticator's name, posted back.
    pub name: &'a str,
    /// What people see.
    pub display_name: &'a str,
}

/// The sign-in page: one button per provider.
pub fn sign_in(choices: &[Choice<'_>], return_to: &str, csrf: &str) -> String {
    page(
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "Choose how to sign in to continue." }
            form method="post" action="/.drawbridge/sign_in" {
                input type="hidden" name="rd" value=(return_to);
                input type="hidden" name="csrf" value=(csrf);
                @for c in choices {
                    button type="submit" name="idp" value=(c.name) { "Sign in with " (c.display_name) }
                }
            }
        },
    )
}

/// After signing out.
pub fn signed_out() -> String {
    page(
        "Signed out",
        html! {
            h1 { "You are signed out" }
            p { "You can close this window, or " a href="/.drawbridge/sign_in" { "sign in again" } "." }
        },
    )
}

/// What "who am I" shows.
pub struct WhoAmI<'a> {
    /// The principal's id.
    pub user: &'a str,
    /// Its groups.
    pub groups: &'a [String],
    /// The email, when the provider gave one.
    pub email: Option<&'a str>,
    /// The authenticator (and provider) that signed the person in.
    pub authenticator: &'a str,
    /// The provider's issuer.
    pub issuer: &'a str,
    /// When the person signed in at the provider, RFC 3339.
    pub signed_in: String,
    /// When the session ends at the latest, RFC 3339.
    pub expires: String,
    /// The session's handle (for support and revocation).
    pub handle: &'a str,
    /// The sign-out form's anti-forgery token.
    pub csrf: &'a str,
}

/// Who the person is, as Drawbridge knows them.
pub fn whoami(w: &WhoAmI<'_>) -> String {
    page(
        "Who am I",
        html! {
            h1 { "Signed in" }
            dl {
                dt { "User" } dd { (w.user) }
                @if let Some(e) = w.email { dt { "Email" } dd { (e) } }
                dt { "Groups" } dd { @if w.groups.is_empty() { span.muted { "none" } } @else { (w.groups.join(", ")) } }
                dt { "Signed in with" } dd { (w.authenticator) " (" (w.issuer) ")" }
                dt { "Signed in at" } dd { (w.signed_in) }
                dt { "Session ends" } dd { (w.expires) }
                dt { "Session" } dd { code { (w.handle) } }
            }
            form method="post" action="/.drawbridge/sign_out" {
                input type="hidden" name="csrf" value=(w.csrf);
                button type="submit" class="secondary" { "Sign out" }
            }
        },
    )
}

/// A sign-in that failed: nothing about why (that is in the log, under `request_id`).
pub fn failed(request_id: &str) -> String {
    page(
        "Sign-in failed",
        html! {
            h1 { "Sign-in failed" }
            p { "We could not sign you in. Please " a href="/.drawbridge/sign_in" { "try again" } "." }
            p.muted { "If this keeps happening, give your administrator this reference: " code { (request_id) } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = sign_in(
            &[Choice {
                name: "corp\"><script>",
                display_name: "<b>Corp</b>",
            }],
            "/x?\"'><script>alert(1)</script>",
            "t",
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>Corp"), "{html}");
        assert!(html.contains("&lt;b&gt;Corp"), "{html}");
    }

    #[test]
    fn the_policy_allows_only_our_own_assets() {
        let csp = content_security_policy(&["https://idp.example.com".into()]);
        assert!(csp.starts_with("default-src 'none'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("form-action 'self' https://idp.example.com;"));
        assert!(!csp.contains("unsafe"));
        // Every page links only its own stylesheet, and carries no script.
        for html in [signed_out(), failed("r1"), sign_in(&[], "/", "t")] {
            assert!(!html.contains("<script"));
            assert!(html.contains("href=\"/.drawbridge/style.css\""));
            assert!(html.contains("name=\"viewport\""));
        }
    }
}
