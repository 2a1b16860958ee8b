//! The second-factor pages: confirm it's you (a code), enrol TOTP from a QR code, the
//! recovery codes shown once, and the account's factors. Server-rendered, no JavaScript,
//! under the pages' Content-Security-Policy.

use maud::{PreEscaped, html};

use crate::Status;

/// Where the pages post.
pub const VERIFY_PATH: &str = "/.drawbridge/mfa/verify";
/// Enrolment: GET shows a new secret, POST confirms it.
pub const ENROL_PATH: &str = "/.drawbridge/mfa/enrol";
/// The account's factors.
pub const MANAGE_PATH: &str = "/.drawbridge/mfa";
/// Removing every factor.
pub const REMOVE_PATH: &str = "/.drawbridge/mfa/remove";
/// The pages' WebAuthn script.
pub const WEBAUTHN_SCRIPT_PATH: &str = "/.drawbridge/mfa/webauthn.js";
/// WebAuthn ceremonies: `register/options`, `register`, `verify/options`, `verify`.
pub const WEBAUTHN_PATH: &str = "/.drawbridge/mfa/webauthn";

/// The script the WebAuthn buttons run: the browser's own JSON forms of the ceremony
/// (`parseCreationOptionsFromJSON`, `toJSON`), posted to Drawbridge; nothing else.
pub const WEBAUTHN_SCRIPT: &str = include_str!("webauthn.js");

/// Why the person is asked.
pub struct Ask<'a> {
    /// Where to go once confirmed.
    pub rd: &'a str,
    /// The form's anti-forgery token.
    pub csrf: &'a str,
    /// Whether the account has an authenticator app.
    pub enrolled: bool,
    /// Whether it has a security key or passkey on this host.
    pub webauthn: bool,
    /// A request was refused until confirmed: it must be sent again (never replayed).
    pub resend: bool,
    /// What went wrong with the last attempt.
    pub error: Option<&'a str>,
}

/// "Confirm it's you": a security key, a code from the app, or a recovery code.
pub fn verify(a: &Ask<'_>) -> String {
    drawbridge_session::pages::page(
        "Confirm it's you",
        html! {
            h1 { "Confirm it's you" }
            @if a.resend {
                p { "This action needs a fresh second factor. Confirm it's you, then send your request again: nothing was sent." }
            }
            @if let Some(e) = a.error { p.error role="alert" { (e) } }
            @if a.webauthn {
                (webauthn_button("verify", "Use your security key or passkey", a.rd, a.csrf))
            }
            @if a.enrolled {
                @if !a.resend && !a.webauthn {
                    p { "Enter the code your authenticator app shows for this account." }
                }
                form method="post" action=(VERIFY_PATH) {
                    input type="hidden" name="rd" value=(a.rd);
                    input type="hidden" name="csrf" value=(a.csrf);
                    label for="code" { "Code" }
                    input id="code" type="text" name="code" inputmode="numeric" autocomplete="one-time-code" autofocus required maxlength="40";
                    button type="submit" { "Confirm" }
                }
                p.muted { "Lost your device? Enter one of your recovery codes instead." }
            } @else if !a.webauthn {
                p { "This needs a second factor, and you have none yet. Set one up to continue." }
                a href=(format!("{ENROL_PATH}?rd={}", encode(a.rd))) { "Set up an authenticator app" }
                (webauthn_button("register", "Add a security key or passkey", a.rd, a.csrf))
            }
        },
    )
}

/// A button that runs a WebAuthn ceremony (`register` or `verify`), then goes to `rd`.
fn webauthn_button(mode: &str, text: &str, rd: &str, csrf: &str) -> maud::Markup {
    html! {
        button type="button" class="secondary" data-webauthn=(mode) data-rd=(rd) data-csrf=(csrf) { (text) }
        p.error id="webauthn-status" role="status" {}
        script src=(WEBAUTHN_SCRIPT_PATH) {}
    }
}

/// What the enrolment page shows.
pub struct Enrol<'a> {
    /// The QR code (an SVG document Drawbridge drew).
    pub qr_svg: &'a str,
    /// The secret, for typing in.
    pub secret: &'a str,
    /// The `otpauth://` URI, for opening the app on the same device.
    pub uri: &'a str,
    /// Where to go once enrolled.
    pub rd: &'a str,
    /// The form's anti-forgery token.
    pub csrf: &'a str,
    /// What went wrong with the last attempt.
    pub error: Option<&'a str>,
}

/// Enrol TOTP: scan, then confirm with a first code.
pub fn enrol(e: &Enrol<'_>) -> String {
    drawbridge_session::pages::page(
        "Set up your authenticator app",
        html! {
            h1 { "Set up your authenticator app" }
            p { "Scan this code with your authenticator app, or type the key below into it." }
            div.qr role="img" aria-label="QR code of your new key" { (PreEscaped(e.qr_svg)) }
            p { "Key: " span.secret { (e.secret) } }
            p { a.otpauth href=(e.uri) { "On this device? Open it in your authenticator app" } }
            @if let Some(err) = e.error { p.error role="alert" { (err) } }
            form method="post" action=(ENROL_PATH) {
                input type="hidden" name="rd" value=(e.rd);
                input type="hidden" name="csrf" value=(e.csrf);
                label for="code" { "Then enter the code it shows" }
                input id="code" type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required maxlength="10";
                button type="submit" { "Confirm" }
            }
        },
    )
}

/// The recovery codes, shown once.
pub fn recovery_codes(codes: &[&str], rd: &str) -> String {
    drawbridge_session::pages::page(
        "Your recovery codes",
        html! {
            h1 { "Save your recovery codes" }
            p { "Each code works once, in place of your app's code, if you lose your device. They are shown only now: keep them somewhere safe." }
            ol.codes { @for c in codes { li { code { (c) } } } }
            a href=(rd) { "Continue" }
        },
    )
}

/// The account's factors.
pub fn manage(s: &Status, csrf: &str) -> String {
    drawbridge_session::pages::page(
        "Second factor",
        html! {
            h1 { "Second factor" }
            @if s.totp || s.webauthn > 0 {
                p { "Removing asks for a factor proved in the last five minutes." }
                form method="post" action=(REMOVE_PATH) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" class="secondary" { "Remove every second factor" }
                }
            }
            h2 { "Authenticator app" }
            @if s.totp {
                p { "An authenticator app is set up"
                    @if let Some(t) = s.totp_since { " since " (humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))) } "." }
                p.muted { "Replacing it asks for your current code first." }
                a href=(format!("{ENROL_PATH}?rd={}", encode(MANAGE_PATH))) { "Replace it (new recovery codes too)" }
            } @else {
                p { "No authenticator app is set up." }
                a href=(format!("{ENROL_PATH}?rd={}", encode(MANAGE_PATH))) { "Set one up" }
            }
            h2 { "Security keys and passkeys" }
            p { (s.webauthn) " registered." }
            (webauthn_button("register", "Add a security key or passkey", MANAGE_PATH, csrf))
        },
    )
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
