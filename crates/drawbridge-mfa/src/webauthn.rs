//! Security keys and passkeys (WebAuthn, `webauthn-rs`): registered and asserted per host
//! (the relying party is the host the page is on), several per person, user verification
//! required unless the configuration says `preferred`, a sign count that goes back refused
//! (a cloned authenticator). Every ceremony's state is kept server-side in the store, and
//! taken once.

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration,
    Url, Uuid, WebauthnError,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::{Accepted, Account, Mfa, MfaError};
use drawbridge_config::MfaMethod;
use drawbridge_identity::Factor;

/// How long a started ceremony waits for the browser.
const CEREMONY_SECS: u64 = 300;

/// The origin a ceremony runs on: the page's host is the relying party.
#[derive(Debug, Clone, Copy)]
pub struct RelyingParty<'a> {
    /// The host (the RP ID).
    pub host: &'a str,
    /// `https://host[:port]`.
    pub origin: &'a str,
}

/// One registered authenticator.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Registered {
    /// The host it was registered on.
    rp_id: String,
    key: Key,
    added_at: u64,
}

/// A passkey (user verification required) or a security key (user verification
/// preferred), as `webauthn-rs` keeps it.
#[derive(Serialize, Deserialize, Clone)]
enum Key {
    Passkey(Passkey),
    SecurityKey(SecurityKey),
}

impl Registered {
    /// The store key that says which account owns its credential.
    pub(crate) fn owner_key(&self) -> String {
        owner_key(self.key.cred_id())
    }
}

fn owner_key(cred_id: &[u8]) -> String {
    format!(
        "mfa-webauthn-credential:{}",
        base16ct::lower::encode_string(cred_id)
    )
}

impl Key {
    fn cred_id(&self) -> &[u8] {
        match self {
            Key::Passkey(p) => p.cred_id().as_ref(),
            Key::SecurityKey(k) => k.cred_id().as_ref(),
        }
    }
}

/// A ceremony under way, kept in the store until the browser answers.
#[derive(Serialize, Deserialize)]
enum Ceremony {
    RegisterPasskey(PasskeyRegistration),
    RegisterSecurityKey(SecurityKeyRegistration),
    AuthenticatePasskey(PasskeyAuthentication),
    AuthenticateSecurityKey(SecurityKeyAuthentication),
}

impl Mfa {
    fn relying_party(&self, rp: RelyingParty<'_>) -> Result<Webauthn, MfaError> {
        let origin = Url::parse(rp.origin).map_err(|e| MfaError::Secret(e.to_string()))?;
        WebauthnBuilder::new(rp.host, &origin)
            .and_then(|b| b.rp_name(&self.settings.issuer).build())
            .map_err(|e| MfaError::Secret(format!("webauthn: {e}")))
    }

    /// How many security keys and passkeys `account` has on `host`.
    pub async fn webauthn_keys(&self, account: Account<'_>, host: &str) -> Result<usize, MfaError> {
        Ok(self
            .enrolment(account)
            .await?
            .webauthn
            .iter()
            .filter(|r| r.rp_id == host)
            .count())
    }

    /// Starts registering a security key or passkey for `account`, shown as `label`: the
    /// options for `navigator.credentials.create` (as JSON).
    pub async fn begin_registration(
        &self,
        account: Account<'_>,
        rp: RelyingParty<'_>,
        label: &str,
    ) -> Result<serde_json::Value, MfaError> {
        let webauthn = self.relying_party(rp)?;
        let enrolment = self.enrolment(account).await?;
        let exclude: Vec<_> = enrolment
            .webauthn
            .iter()
            .filter(|r| r.rp_id == rp.host)
            .map(|r| r.key.cred_id().to_vec())
            .collect();
        let user = user_handle(account);
        let (options, ceremony) = if self.settings.user_verification {
            let (o, s) = webauthn
                .start_passkey_registration(user, label, label, Some(exclude))
                .map_err(refused)?;
            (serde_json::to_value(o), Ceremony::RegisterPasskey(s))
        } else {
            let (o, s) = webauthn
                .start_securitykey_registration(user, label, label, Some(exclude), None, None)
                .map_err(refused)?;
            (serde_json::to_value(o), Ceremony::RegisterSecurityKey(s))
        };
        self.keep(account, "register", &ceremony).await?;
        options
            .map(without_nulls)
            .map_err(|e| MfaError::Secret(e.to_string()))
    }

    /// Finishes a registration with the browser's answer (`PublicKeyCredential.toJSON()`):
    /// the key is kept for `account` and counts as a factor proved now.
    pub async fn finish_registration(
        &self,
        account: Account<'_>,
        rp: RelyingParty<'_>,
        answer: &serde_json::Value,
    ) -> Result<Accepted, MfaError> {
        let webauthn = self.relying_party(rp)?;
        let Some(ceremony) = self.take(account, "register").await? else {
            return Err(MfaError::NotEnrolled);
        };
        let credential: RegisterPublicKeyCredential =
            serde_json::from_value(answer.clone()).map_err(|_| MfaError::Wrong)?;
        let key = match ceremony {
            Ceremony::RegisterPasskey(s) => webauthn
                .finish_passkey_registration(&credential, &s)
                .map(Key::Passkey),
            Ceremony::RegisterSecurityKey(s) => webauthn
                .finish_securitykey_registration(&credential, &s)
                .map(Key::SecurityKey),
            _ => return Err(MfaError::NotEnrolled),
        }
        .map_err(refused)?;
        // A credential belongs to one account only.
        let owner = self
            .sessions
            .store()
            .put_if_absent(
                &owner_key(key.cred_id()),
                base16ct::lower::encode_string(&account.digest()).as_bytes(),
            )
            .await?;
        if owner != base16ct::lower::encode_string(&account.digest()).as_bytes() {
            return Err(MfaError::Wrong);
        }
        let now = drawbridge_identity::unix_now();
        let mut enrolment = self.enrolment(account).await?;
        enrolment.webauthn.push(Registered {
            rp_id: rp.host.to_string(),
            key,
            added_at: now,
        });
        self.save(account, &enrolment).await?;
        Ok(Accepted {
            factor: Factor {
                method: MfaMethod::Webauthn,
                at: now,
            },
            recovery_left: None,
        })
    }

    /// Starts an assertion with `account`'s keys on this host: the options for
    /// `navigator.credentials.get` (as JSON).
    pub async fn begin_authentication(
        &self,
        account: Account<'_>,
        rp: RelyingParty<'_>,
    ) -> Result<serde_json::Value, MfaError> {
        let webauthn = self.relying_party(rp)?;
        let enrolment = self.enrolment(account).await?;
        let mine: Vec<&Registered> = enrolment
            .webauthn
            .iter()
            .filter(|r| r.rp_id == rp.host)
            .collect();
        let passkeys: Vec<Passkey> = mine
            .iter()
            .filter_map(|r| match &r.key {
                Key::Passkey(p) => Some(p.clone()),
                Key::SecurityKey(_) => None,
            })
            .collect();
        let security_keys: Vec<SecurityKey> = mine
            .iter()
            .filter_map(|r| match &r.key {
                Key::SecurityKey(k) => Some(k.clone()),
                Key::Passkey(_) => None,
            })
            .collect();
        // One ceremony asks one kind: passkeys (user verification required) when there are
        // any, security keys otherwise.
        let (options, ceremony) = if !passkeys.is_empty() {
            let (o, s) = webauthn
                .start_passkey_authentication(&passkeys)
                .map_err(refused)?;
            (serde_json::to_value(o), Ceremony::AuthenticatePasskey(s))
        } else if !security_keys.is_empty() {
            let (o, s) = webauthn
                .start_securitykey_authentication(&security_keys)
                .map_err(refused)?;
            (
                serde_json::to_value(o),
                Ceremony::AuthenticateSecurityKey(s),
            )
        } else {
            return Err(MfaError::NotEnrolled);
        };
        self.keep(account, "authenticate", &ceremony).await?;
        options
            .map(without_nulls)
            .map_err(|e| MfaError::Secret(e.to_string()))
    }

    /// Finishes an assertion with the browser's answer; counted against the account's
    /// attempts like a code. A sign count that did not move forward is refused
    /// ([`MfaError::Cloned`]).
    pub async fn finish_authentication(
        &self,
        account: Account<'_>,
        rp: RelyingParty<'_>,
        answer: &serde_json::Value,
    ) -> Result<Accepted, MfaError> {
        self.attempt(account, |now| async move {
            let webauthn = self.relying_party(rp)?;
            let Some(ceremony) = self.take(account, "authenticate").await? else {
                return Err(MfaError::Wrong);
            };
            let credential: PublicKeyCredential =
                serde_json::from_value(answer.clone()).map_err(|_| MfaError::Wrong)?;
            let result = match &ceremony {
                Ceremony::AuthenticatePasskey(s) => {
                    webauthn.finish_passkey_authentication(&credential, s)
                }
                Ceremony::AuthenticateSecurityKey(s) => {
                    webauthn.finish_securitykey_authentication(&credential, s)
                }
                _ => return Err(MfaError::Wrong),
            }
            .map_err(refused);
            let result = match result {
                Err(MfaError::Cloned) => {
                    // A key that may have been copied is withdrawn: neither copy works again.
                    self.withdraw(account, credential.get_credential_id())
                        .await?;
                    return Err(MfaError::Cloned);
                }
                other => other?,
            };
            let mut enrolment = self.enrolment(account).await?;
            for r in &mut enrolment.webauthn {
                let _ = match &mut r.key {
                    Key::Passkey(p) => p.update_credential(&result),
                    Key::SecurityKey(k) => k.update_credential(&result),
                };
            }
            self.save(account, &enrolment).await?;
            Ok(Accepted {
                factor: Factor {
                    method: MfaMethod::Webauthn,
                    at: now,
                },
                recovery_left: None,
            })
        })
        .await
    }

    /// Removes the key whose credential id is `cred_id` from `account`.
    async fn withdraw(&self, account: Account<'_>, cred_id: &[u8]) -> Result<(), MfaError> {
        let mut enrolment = self.enrolment(account).await?;
        enrolment.webauthn.retain(|r| r.key.cred_id() != cred_id);
        self.save(account, &enrolment).await?;
        self.sessions.store().delete(&owner_key(cred_id)).await?;
        tracing::warn!("a security key's signature counter went back: the key is withdrawn");
        Ok(())
    }

    async fn keep(
        &self,
        account: Account<'_>,
        what: &str,
        ceremony: &Ceremony,
    ) -> Result<(), MfaError> {
        let value = serde_json::to_vec(ceremony).map_err(|e| MfaError::Secret(e.to_string()))?;
        let until = drawbridge_identity::unix_now() + CEREMONY_SECS;
        self.sessions
            .store()
            .put(&account.key(&format!("webauthn-{what}")), &value, until)
            .await?;
        Ok(())
    }

    async fn take(&self, account: Account<'_>, what: &str) -> Result<Option<Ceremony>, MfaError> {
        let Some(bytes) = self
            .sessions
            .store()
            .take(&account.key(&format!("webauthn-{what}")))
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| MfaError::Secret(e.to_string()))
    }
}

/// The account's user handle: stable, and no name in it (16 bytes of its digest).
fn user_handle(account: Account<'_>) -> Uuid {
    let d = account.digest();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

/// A ceremony the library refused: a cloned authenticator said so, anything else is a
/// wrong answer.
fn refused(e: WebauthnError) -> MfaError {
    match e {
        WebauthnError::CredentialPossibleCompromise => MfaError::Cloned,
        other => {
            tracing::debug!(error = %other, "webauthn ceremony refused");
            MfaError::Wrong
        }
    }
}

/// The options without `null` members, which the browser's JSON readers refuse.
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(without_nulls).collect())
        }
        other => other,
    }
}
