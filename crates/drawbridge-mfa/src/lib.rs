//! Second factors Drawbridge enrols and checks itself: TOTP (RFC 6238, `totp-rs`) and
//! single-use recovery codes, kept per account in the session store so that every instance
//! sharing it enforces the same rules:
//!
//! - a TOTP secret is sealed with the store's key (AES-256-GCM-SIV), bound to its account;
//! - a code is accepted within one step either side of now, and **once**: the last step
//!   accepted is raised in one store operation, so of two instances (or twenty requests)
//!   given the same code exactly one admits it, and no code of an earlier step is taken
//!   after a later one;
//! - at most `max_failures` attempts fail per account within `failure_window`; an attempt
//!   is counted before it is checked, so concurrent guesses cannot exceed the budget (it
//!   is given back unless the code was wrong), and once it is spent every attempt is
//!   refused, whatever the code;
//! - recovery codes (120 random bits each) are kept only as salted SHA-256 digests, and each
//!   is taken from the store once.
//!
//! Pages live in [`pages`]; the proxy serves them under `/.drawbridge/mfa`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pages;
mod webauthn;

pub use webauthn::RelyingParty;

use std::sync::Arc;

use base64::Engine as _;
use drawbridge_config::{MfaMethod, TotpAlgorithm};
use drawbridge_identity::Factor;
use drawbridge_session::{SealKey, Sessions, SsoError, StoreError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Recovery codes given at each enrolment.
pub const RECOVERY_CODES: usize = 10;

/// Bytes of a TOTP secret (160 bits, RFC 4226 §4's recommendation).
const SECRET_BYTES: usize = 20;

/// Why a second factor was not accepted, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// Too many failed attempts for this account lately: refused whatever the code.
    #[error("too many failed attempts; try again later")]
    Locked,
    /// The code is not one the account's factors accept now.
    #[error("the code is not valid")]
    Wrong,
    /// The code was valid, and has been used already.
    #[error("the code was used already")]
    Replayed,
    /// A security key's sign count did not move forward: it may have been cloned.
    #[error("the security key's signature counter went back: possibly a cloned key")]
    Cloned,
    /// No factor is enrolled (or no enrolment is under way) for the account.
    #[error("no second factor is enrolled")]
    NotEnrolled,
    /// The store could not answer: refused (fail closed).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The sealing key, randomness or a stored record failed.
    #[error("secret: {0}")]
    Secret(String),
}

impl From<SsoError> for MfaError {
    fn from(e: SsoError) -> Self {
        match e {
            SsoError::Store(s) => MfaError::Store(s),
            other => MfaError::Secret(other.to_string()),
        }
    }
}

impl MfaError {
    /// A short, stable name for logs and audit events.
    pub fn kind(&self) -> &'static str {
        match self {
            MfaError::Locked => "locked",
            MfaError::Wrong => "wrong_code",
            MfaError::Replayed => "replayed_code",
            MfaError::Cloned => "possible_clone",
            MfaError::NotEnrolled => "not_enrolled",
            MfaError::Store(_) => "store_unavailable",
            MfaError::Secret(_) => "internal",
        }
    }
}

/// Whose factors: a person as one authenticator knows them.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// The authenticator that signed them in.
    pub authenticator: &'a str,
    /// Their id there.
    pub user: &'a str,
}

impl Account<'_> {
    /// The account's key in the store: a digest, so no id can collide with a separator.
    fn digest(&self) -> [u8; 32] {
        drawbridge_config::sha256(&[
            b"drawbridge mfa account\0",
            self.authenticator.as_bytes(),
            b"\0",
            self.user.as_bytes(),
        ])
    }

    fn key(&self, what: &str) -> String {
        format!(
            "mfa-{what}:{}",
            base16ct::lower::encode_string(&self.digest())
        )
    }
}

/// What an account has enrolled, as the store keeps it.
#[derive(Serialize, Deserialize, Default)]
struct Enrolment {
    totp: Option<TotpRecord>,
    /// Digests of the recovery codes given (used ones are gone from the store).
    #[serde(default)]
    recovery: Vec<String>,
    /// Security keys and passkeys.
    #[serde(default)]
    webauthn: Vec<webauthn::Registered>,
}

#[derive(Serialize, Deserialize, Clone)]
struct TotpRecord {
    /// The secret, sealed for the account (base64).
    sealed: String,
    algorithm: TotpAlgorithm,
    digits: u32,
    period: u64,
    enrolled_at: u64,
}

/// What an account has, for its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Whether TOTP is enrolled.
    pub totp: bool,
    /// When, Unix seconds.
    pub totp_since: Option<u64>,
    /// How many recovery codes were given at the last enrolment.
    pub recovery_codes: usize,
    /// How many security keys and passkeys are registered (on every host).
    pub webauthn: usize,
}

/// A TOTP enrolment started: what the page shows. It counts once a first code confirms it.
pub struct Started {
    /// The `otpauth://` URI authenticator apps read (the QR code's content).
    pub uri: Zeroizing<String>,
    /// The secret in base32, for typing into an app.
    pub secret: Zeroizing<String>,
    /// The QR code as an inline SVG document.
    pub qr_svg: String,
}

/// A factor accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The factor, and when.
    pub factor: Factor,
    /// Recovery codes left, when a recovery code was used (so the page can say).
    pub recovery_left: Option<usize>,
}

/// Second factors of the accounts of one configuration.
pub struct Mfa {
    settings: drawbridge_config::Mfa,
    sessions: Arc<Sessions>,
}

impl Mfa {
    /// Factors under `settings`, kept in `sessions`' store and sealed with its key.
    pub fn new(settings: drawbridge_config::Mfa, sessions: Arc<Sessions>) -> Mfa {
        Mfa { settings, sessions }
    }

    /// The settings.
    pub fn settings(&self) -> &drawbridge_config::Mfa {
        &self.settings
    }

    /// What `account` has enrolled.
    pub async fn status(&self, account: Account<'_>) -> Result<Status, MfaError> {
        let e = self.enrolment(account).await?;
        Ok(Status {
            totp: e.totp.is_some(),
            totp_since: e.totp.as_ref().map(|t| t.enrolled_at),
            recovery_codes: e.recovery.len(),
            webauthn: e.webauthn.len(),
        })
    }

    /// Starts a TOTP enrolment for `account`, shown under `label` (the person's name or
    /// email) in their app. The secret is kept (sealed) until confirmed or `enrol_timeout`.
    pub async fn begin_totp(&self, account: Account<'_>, label: &str) -> Result<Started, MfaError> {
        let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        aws_lc_rs::rand::fill(&mut secret[..])
            .map_err(|_| MfaError::Secret("no randomness".into()))?;
        let t = self.settings.totp;
        let now = drawbridge_identity::unix_now();
        let record = TotpRecord {
            sealed: self.seal(account, &secret).await?,
            algorithm: t.algorithm,
            digits: t.digits,
            period: t.period,
            enrolled_at: now,
        };
        let value = serde_json::to_vec(&record).map_err(|e| MfaError::Secret(e.to_string()))?;
        self.sessions
            .store()
            .put(
                &account.key("pending"),
                &value,
                now + self.settings.enrol_timeout.as_secs(),
            )
            .await?;
        let totp = totp(&record, &secret, Some((&self.settings.issuer, label)))?;
        let uri = Zeroizing::new(
            totp.to_url()
                .map_err(|e| MfaError::Secret(format!("totp uri: {e}")))?,
        );
        let qr_svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(|e| MfaError::Secret(format!("qr code: {e}")))?
            .render::<qrcode::render::svg::Color<'_>>()
            .quiet_zone(true)
            .min_dimensions(200, 200)
            .build();
        Ok(Started {
            secret: Zeroizing::new(totp.secret().to_base32()),
            uri,
            qr_svg,
        })
    }

    /// Confirms the enrolment under way with a first code from the app: TOTP then counts
    /// for `account` (replacing an earlier enrolment), and new recovery codes are returned,
    /// to be shown once. The code counts as a factor done now.
    pub async fn confirm_totp(
        &self,
        account: Account<'_>,
        code: &str,
    ) -> Result<(Accepted, Vec<Zeroizing<String>>), MfaError> {
        let store = self.sessions.store();
        let Some(bytes) = store.get(&account.key("pending")).await? else {
            return Err(MfaError::NotEnrolled);
        };
        let record: TotpRecord =
            serde_json::from_slice(&bytes).map_err(|e| MfaError::Secret(e.to_string()))?;
        let accepted = self
            .attempt(account, |now| {
                let record = &record;
                async move { self.check_totp(account, record, code, now).await }
            })
            .await?;
        store.delete(&account.key("pending")).await?;
        let mut enrolment = self.enrolment(account).await?;
        for old in enrolment.recovery.drain(..) {
            store.delete(&recovery_key(account, &old)).await?;
        }
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let code = recovery_code()?;
            let digest = recovery_digest(account, &code);
            store
                .put(
                    &recovery_key(account, &digest),
                    b"1",
                    drawbridge_session::NEVER,
                )
                .await?;
            enrolment.recovery.push(digest);
            codes.push(code);
        }
        enrolment.totp = Some(TotpRecord {
            enrolled_at: accepted.factor.at,
            ..record
        });
        self.save(account, &enrolment).await?;
        Ok((accepted, codes))
    }

    /// Removes every factor of `account`: its app, recovery codes, security keys and
    /// passkeys.
    pub async fn remove(&self, account: Account<'_>) -> Result<(), MfaError> {
        let store = self.sessions.store();
        let enrolment = self.enrolment(account).await?;
        for old in &enrolment.recovery {
            store.delete(&recovery_key(account, old)).await?;
        }
        for key in &enrolment.webauthn {
            store.delete(&key.owner_key()).await?;
        }
        store.delete(&account.key("enrolment")).await?;
        store.delete(&account.key("pending")).await?;
        Ok(())
    }

    /// Checks `code`, a TOTP code or a recovery code, for `account`.
    pub async fn verify(&self, account: Account<'_>, code: &str) -> Result<Accepted, MfaError> {
        self.attempt(account, |now| async move {
            if let Code::Recovery(normal) = Code::parse(code) {
                return self.use_recovery_code(account, &normal, now).await;
            }
            let enrolment = self.enrolment(account).await?;
            let Some(record) = &enrolment.totp else {
                return Err(MfaError::NotEnrolled);
            };
            self.check_totp(account, record, code.trim(), now).await
        })
        .await
    }

    /// One attempt, counted against the account's budget before it is made; a success
    /// gives its count back.
    async fn attempt<F, Fut>(&self, account: Account<'_>, check: F) -> Result<Accepted, MfaError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Accepted, MfaError>>,
    {
        let store = self.sessions.store();
        let now = drawbridge_identity::unix_now();
        let key = account.key("failures");
        let window_end = now + self.settings.failure_window.as_secs();
        let n = store.add(&key, 1, window_end).await?;
        if n > i64::from(self.settings.max_failures) {
            // Counted while it was decided, so that concurrent guesses cannot pass the
            // budget; given back, as it checked nothing.
            store.add(&key, -1, window_end).await?;
            return Err(MfaError::Locked);
        }
        let outcome = check(now).await;
        // Only a wrong answer spends the budget: an accepted one, a valid one used already
        // (a double submission), or a check that could not be made gives its count back.
        if !matches!(outcome, Err(MfaError::Wrong | MfaError::Cloned)) {
            store.add(&key, -1, window_end).await?;
        }
        outcome
    }

    async fn check_totp(
        &self,
        account: Account<'_>,
        record: &TotpRecord,
        code: &str,
        now: u64,
    ) -> Result<Accepted, MfaError> {
        let secret = self.open(account, &record.sealed).await?;
        let totp = totp(record, &secret, None)?;
        if code.len() != record.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MfaError::Wrong);
        }
        let Some(step) = totp.check(code, now) else {
            return Err(MfaError::Wrong);
        };
        // Single use: the step is raised in one store operation, or the code was used (or
        // a later one was).
        let keep_until = now + 4 * record.period;
        if !self
            .sessions
            .store()
            .advance(&account.key("step"), step, keep_until)
            .await?
        {
            return Err(MfaError::Replayed);
        }
        Ok(Accepted {
            factor: Factor {
                method: MfaMethod::Totp,
                at: now,
            },
            recovery_left: None,
        })
    }

    async fn use_recovery_code(
        &self,
        account: Account<'_>,
        code: &str,
        now: u64,
    ) -> Result<Accepted, MfaError> {
        let digest = recovery_digest(account, code);
        let store = self.sessions.store();
        if store.take(&recovery_key(account, &digest)).await?.is_none() {
            return Err(MfaError::Wrong);
        }
        let mut enrolment = self.enrolment(account).await?;
        enrolment.recovery.retain(|d| *d != digest);
        self.save(account, &enrolment).await?;
        Ok(Accepted {
            factor: Factor {
                method: MfaMethod::RecoveryCode,
                at: now,
            },
            recovery_left: Some(enrolment.recovery.len()),
        })
    }

    async fn enrolment(&self, account: Account<'_>) -> Result<Enrolment, MfaError> {
        match self.sessions.store().get(&account.key("enrolment")).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| MfaError::Secret(e.to_string()))
            }
            None => Ok(Enrolment::default()),
        }
    }

    async fn save(&self, account: Account<'_>, e: &Enrolment) -> Result<(), MfaError> {
        let value = serde_json::to_vec(e).map_err(|e| MfaError::Secret(e.to_string()))?;
        self.sessions
            .store()
            .put(&account.key("enrolment"), &value, drawbridge_session::NEVER)
            .await?;
        Ok(())
    }

    async fn key(&self) -> Result<&SealKey, MfaError> {
        Ok(self.sessions.seal_key().await?)
    }

    async fn seal(&self, account: Account<'_>, secret: &[u8]) -> Result<String, MfaError> {
        let sealed = self
            .key()
            .await?
            .seal(&account.digest(), "totp", secret)
            .map_err(|e| MfaError::Secret(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    async fn open(
        &self,
        account: Account<'_>,
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, MfaError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| MfaError::Secret(e.to_string()))?;
        self.key()
            .await?
            .open(&account.digest(), "totp", &bytes)
            .map_err(|e| MfaError::Secret(e.to_string()))
    }
}

/// The `totp-rs` generator for a record and its opened secret; `named` adds the issuer and
/// the account's label for the URI.
fn totp(
    record: &TotpRecord,
    secret: &[u8],
    named: Option<(&str, &str)>,
) -> Result<totp_rs::Totp, MfaError> {
    let algorithm = match record.algorithm {
        TotpAlgorithm::Sha1 => totp_rs::Algorithm::SHA1,
        TotpAlgorithm::Sha256 => totp_rs::Algorithm::SHA256,
        TotpAlgorithm::Sha512 => totp_rs::Algorithm::SHA512,
    };
    let mut b = totp_rs::Builder::new()
        .with_algorithm(algorithm)
        .with_digits(u8::try_from(record.digits).unwrap_or(6))
        .with_skew(1)
        .with_step_duration(record.period)
        .with_secret(secret.to_vec());
    if let Some((issuer, label)) = named {
        b = b
            .with_issuer(Some(issuer.to_string()))
            .with_account_name(label.replace(':', " "));
    }
    b.build()
        .map_err(|e| MfaError::Secret(format!("totp: {e}")))
}

/// Letters of recovery codes: base32 without the look-alikes' ambiguity (lower-case).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new recovery code: 24 base32 letters (120 bits), in six groups of four.
fn recovery_code() -> Result<Zeroizing<String>, MfaError> {
    let mut bytes = Zeroizing::new([0u8; 24]);
    aws_lc_rs::rand::fill(&mut bytes[..]).map_err(|_| MfaError::Secret("no randomness".into()))?;
    let mut s = Zeroizing::new(String::with_capacity(29));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push('-');
        }
        s.push(char::from(RECOVERY_ALPHABET[usize::from(b & 31)]));
    }
    Ok(s)
}

/// What a person typed in the code field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// Digits only (spaces around them dropped): a one-time code from the app.
    Digits(String),
    /// A recovery code, in its stored form (lower-case, six dash-separated groups of four),
    /// however it was typed (any case, with or without dashes and spaces).
    Recovery(String),
    /// Neither: refused as a wrong code.
    Other,
}

impl Code {
    /// Reads what was typed.
    pub fn parse(typed: &str) -> Code {
        let typed = typed.trim();
        if !typed.is_empty() && typed.len() <= 10 && typed.bytes().all(|b| b.is_ascii_digit()) {
            return Code::Digits(typed.to_string());
        }
        let letters: String = typed
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if letters.len() != 24 || !letters.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)) {
            return Code::Other;
        }
        let groups: Vec<&str> = (0..6).map(|i| &letters[i * 4..i * 4 + 4]).collect();
        Code::Recovery(groups.join("-"))
    }
}

/// A recovery code's digest, salted by its account.
fn recovery_digest(account: Account<'_>, code: &str) -> String {
    base16ct::lower::encode_string(&drawbridge_config::sha256(&[
        b"drawbridge recovery code\0",
        &account.digest(),
        code.as_bytes(),
    ]))
}

fn recovery_key(account: Account<'_>, digest: &str) -> String {
    format!("{}:{digest}", account.key("recovery"))
}

#[cfg(test)]
mod tests;
