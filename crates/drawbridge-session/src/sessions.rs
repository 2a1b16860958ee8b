//! Signing people in and knowing them afterwards: the login state kept between the
//! authorization request and the callback, the session created at the callback, and the
//! session looked up on every request that carries its cookie.
//!
//! What the store holds (every key under the configured prefix, none readable as a secret):
//!
//! | key | value | until |
//! |---|---|---|
//! | `login:<sha256 of state>` | [`LoginState`] | 10 minutes, taken once |
//! | `session:<sha256 of id>` | [`Record`] (IdP tokens sealed) | its absolute lifetime |
//! | `handover:<sha256 of code>` | a central sign-in handed to one host | 1 minute, taken once |
//! | `revoked:<authenticator>/<user>` | the time every session older was revoked | a lifetime |
//! | `key:seal` | the generated sealing key | never |

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use drawbridge_identity::{
    AuthMethod, Authenticator, Factor, OidcAuthenticator, OidcError, Principal, Refusal,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::return_to::{Origin, Served};
use crate::secret::{SealKey, SecretError, SessionId};
use crate::store::{Store, StoreError};
use drawbridge_config::constant_time_eq;

/// The session cookie: host-only, Secure, never sent to another host or path prefix.
pub const SESSION_COOKIE: &str = "__Host-drawbridge-session";
/// The cookie that binds a sign-in to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-drawbridge-login";
/// Where the provider sends people back.
pub const CALLBACK_PATH: &str = "/.drawbridge/callback";

/// How long a started sign-in may take.
const LOGIN_TTL: u64 = 600;
/// How long a hand-over code may wait to be redeemed.
const HANDOVER_TTL: u64 = 60;
/// A session's last use is written back at most this often.
const TOUCH_EVERY: u64 = 60;
/// Refresh this long before the provider's tokens expire.
const REFRESH_AHEAD: u64 = 60;
/// Most sessions an instance keeps read.
const CACHE_ENTRIES: usize = 65_536;

/// Why a sign-in failed, or a session could not be read. The person is shown a generic
/// page; the log gets this.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// No login state for this `state`: forged, replayed, or older than ten minutes.
    #[error("unknown or used sign-in state")]
    UnknownState,
    /// The callback came to another browser than the one that started the sign-in.
    #[error("sign-in state belongs to another browser")]
    OtherBrowser,
    /// The callback lacks `state` or `code`, or is otherwise malformed.
    #[error("malformed callback: {0}")]
    Malformed(&'static str),
    /// The provider sent an error instead of a code (the person cancelled, was refused).
    #[error("provider answered `{0}`")]
    Provider(String),
    /// The authorization response's `iss` is not the provider the sign-in went to (mix-up).
    #[error("authorization response from another issuer")]
    MixUp,
    /// A hand-over code redeemed on another host than the one it was made for.
    #[error("hand-over code for another host")]
    OtherHost,
    /// The login state names an authenticator this configuration no longer has.
    #[error("sign-in authenticator `{0}` is gone")]
    Gone(String),
    /// Talking to the provider failed.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// The store failed: nothing is trusted that depends on it.
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    /// A secret could not be made or opened.
    #[error("session secret: {0}")]
    Secret(#[from] SecretError),
    /// A stored value is not what Drawbridge wrote.
    #[error("stored value unreadable: {0}")]
    Corrupt(String),
}

/// What is kept between the authorization request and the callback.
#[derive(Serialize, Deserialize)]
pub struct LoginState {
    authenticator: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    return_to: String,
    /// The host the session will be for.
    host: String,
    /// SHA-256 of the login cookie of the browser that started it.
    browser: String,
}

/// A session as the store keeps it.
#[derive(Serialize, Deserialize, Clone)]
pub struct Record {
    /// The `oidc` authenticator that signed the person in.
    pub authenticator: String,
    /// The host the session's cookie belongs to.
    pub host: String,
    /// The principal's id, groups and attributes, through the claim mapping.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Attributes.
    pub attributes: Map<String, Value>,
    /// The provider's issuer.
    pub issuer: String,
    /// The ID token's `sub`.
    pub subject: String,
    /// When the person signed in at the provider (`auth_time`, else the ID token's `iat`).
    pub authenticated_at: u64,
    /// When the session was created here.
    pub created_at: u64,
    /// The same, in milliseconds: a revocation ends the sessions made before it, not one
    /// made in the same second after it.
    #[serde(default)]
    pub created_ms: u64,
    /// When it was last used (to within a minute).
    pub last_seen: u64,
    /// When it ends, used or not.
    pub expires_at: u64,
    /// When the provider's tokens should be refreshed; never when `None`.
    pub refresh_at: Option<u64>,
    /// The provider's refresh token and ID token, sealed for this session (base64).
    pub sealed: Option<String>,
    /// For a host's session made from a central sign-in: the handle of that sign-in's
    /// session, which this one never outlives.
    #[serde(default)]
    pub parent: Option<String>,
    /// The second factors proved in this session (or at the provider, when trusted), each
    /// with its latest time.
    #[serde(default)]
    pub factors: Vec<Factor>,
}

/// Most sessions read for a listing.
const MAX_LISTED: usize = 10_000;

/// A session as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Its handle (what `revoke` takes).
    pub handle: String,
    /// `AUTHENTICATOR/ID`.
    pub user: String,
    /// The host its cookie is for.
    pub host: String,
    /// When it began, Unix seconds.
    pub created_at: u64,
    /// When it was last used (to within a minute).
    pub last_seen: u64,
    /// When it ends.
    pub expires_at: u64,
    /// The second factors proved in it.
    pub factors: Vec<&'static str>,
}

/// A sign-in handed from the central sign-in host to another host.
#[derive(Serialize, Deserialize)]
struct HandOver {
    parent: String,
    host: String,
    return_to: String,
}

/// What the sealed part holds.
#[derive(Serialize, Deserialize)]
struct Kept {
    refresh_token: Option<String>,
    id_token: Option<String>,
}

/// A session read from the store (or the instance's short cache).
pub struct Session {
    /// Its record.
    pub record: Record,
    /// The principal policies decide about.
    pub principal: Arc<Principal>,
    /// Its handle: the hex SHA-256 of its id, what logs and revocations name it by.
    pub handle: String,
}

struct Cached {
    session: Arc<Session>,
    /// The cookie it was read for: a hit must name it exactly.
    cookie: Zeroizing<String>,
    read_at: Instant,
}

/// A factor recorded in a session.
pub struct Added {
    /// The session's new cookie value, when it moved to a new id.
    pub cookie: Option<Zeroizing<String>>,
    /// Who the session says the person is now.
    pub principal: Arc<Principal>,
}

/// A started sign-in: where to send the browser, and the login cookie to set when it had
/// none.
pub struct Begun {
    /// The provider's authorization URL.
    pub location: String,
    /// A new login cookie's value, when the browser had none usable.
    pub login_cookie: Option<String>,
}

/// A finished sign-in.
pub struct Finished {
    /// The new session's cookie value (a new id: never one the browser had before).
    pub session_cookie: Zeroizing<String>,
    /// Where to send the browser: what it asked for when the sign-in began.
    pub location: String,
    /// The host the session is for.
    pub host: String,
    /// Who signed in.
    pub principal: Arc<Principal>,
}

/// Every session of one configuration's `[sessions]`.
pub struct Sessions {
    store: Store,
    /// The sealing key: the configured one, or the one the store keeps (read, or made and
    /// kept, at first use).
    seal: Arc<tokio::sync::OnceCell<SealKey>>,
    config: drawbridge_config::Sessions,
    served: Served,
    /// Sessions read lately, by a keyed hash of their cookie.
    cache: quick_cache::sync::Cache<u64, Arc<Cached>>,
    hasher: foldhash::fast::RandomState,
}

impl Sessions {
    /// Sessions in `store` under `config`, people returning to the `served` hosts.
    pub fn new(
        store: Store,
        config: drawbridge_config::Sessions,
        served: Served,
    ) -> Result<Sessions, SsoError> {
        let seal = tokio::sync::OnceCell::new();
        if let Some((_, secret)) = &config.key {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret.expose())
                .map(Zeroizing::new)
                .map_err(|_| SsoError::Corrupt("key_file is not base64".into()))?;
            let _ = seal.set(SealKey::from_bytes(&bytes)?);
        }
        Ok(Sessions {
            store,
            seal: Arc::new(seal),
            config,
            served,
            cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            hasher: foldhash::fast::RandomState::default(),
        })
    }

    /// The same store (and sealing key, unless `config` names another) under new
    /// settings, after a reload: sessions carry on.
    pub fn renew(
        &self,
        config: drawbridge_config::Sessions,
        served: Served,
    ) -> Result<Sessions, SsoError> {
        if config.key == self.config.key {
            return Ok(Sessions {
                store: self.store.clone(),
                seal: self.seal.clone(),
                config,
                served,
                cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
                hasher: foldhash::fast::RandomState::default(),
            });
        }
        Sessions::new(self.store.clone(), config, served)
    }

    /// The key secrets are sealed with: the configured one, or the one the store keeps.
    pub async fn seal_key(&self) -> Result<&SealKey, SsoError> {
        self.seal
            .get_or_try_init(|| async {
                let (_, fresh) = SealKey::generate()?;
                let kept = Zeroizing::new(self.store.put_if_absent("key:seal", &fresh[..]).await?);
                Ok::<_, SsoError>(SealKey::from_bytes(&kept)?)
            })
            .await
    }

    /// The settings.
    pub fn config(&self) -> &drawbridge_config::Sessions {
        &self.config
    }

    /// The hosts a browser may return to.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the provider sends a browser back for a sign-in started on `from`: the
    /// central sign-in origin, or `from` itself.
    pub fn redirect_uri(&self, from: &Origin) -> String {
        let root = match &self.config.sign_in {
            Some(s) => Origin::new(&s.host, s.port).map_or_else(|_| from.root(), |o| o.root()),
            None => from.root(),
        };
        format!("{}{}", root.trim_end_matches('/'), CALLBACK_PATH)
    }

    /// Starts a sign-in at `oidc` for a browser on `from` that asked for `requested`.
    pub async fn begin(
        &self,
        oidc: &OidcAuthenticator,
        login_cookie: Option<&str>,
        from: &Origin,
        requested: &str,
    ) -> Result<Begun, SsoError> {
        let d = oidc.discovered().await?;
        let (browser, login_cookie) = match login_cookie.filter(|c| well_formed(c)) {
            Some(c) => (c.to_string(), None),
            None => {
                let c = random()?;
                (c.clone(), Some(c))
            }
        };
        let state = random()?;
        let nonce = random()?;
        let verifier = random()?;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
        );
        let target = self.served.return_target(requested, from);
        if target.refused {
            tracing::warn!(requested = %printable(requested), "sign-in return target refused");
        }
        let redirect_uri = self.redirect_uri(from);
        let location = oidc.authorization_url(&d, &redirect_uri, &state, &nonce, &challenge);
        let login = LoginState {
            authenticator: oidc.name().to_string(),
            nonce,
            verifier,
            redirect_uri,
            return_to: target.url,
            host: from.host().to_string(),
            browser: base16ct::lower::encode_string(&digest("login", browser.as_bytes())),
        };
        let value = serde_json::to_vec(&login).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        self.store
            .put(
                &state_key(&state),
                &value,
                drawbridge_identity::unix_now() + LOGIN_TTL,
            )
            .await?;
        Ok(Begun {
            location,
            login_cookie,
        })
    }

    /// Finishes a sign-in at the callback: the state taken (once), the browser matched,
    /// the provider's `iss` checked, the code exchanged, the ID token verified, and a new
    /// session stored.
    pub async fn finish(
        &self,
        authenticators: &[Arc<Authenticator>],
        callback: &Callback<'_>,
        login_cookie: Option<&str>,
    ) -> Result<Finished, SsoError> {
        let state = callback.state.ok_or(SsoError::Malformed("no state"))?;
        if !well_formed(state) {
            return Err(SsoError::UnknownState);
        }
        let stored = self
            .store
            .take(&state_key(state))
            .await?
            .ok_or(SsoError::UnknownState)?;
        let login: LoginState =
            serde_json::from_slice(&stored).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        let browser =
            login_cookie.map(|c| base16ct::lower::encode_string(&digest("login", c.as_bytes())));
        if !browser.is_some_and(|b| constant_time_eq(b.as_bytes(), login.browser.as_bytes())) {
            return Err(SsoError::OtherBrowser);
        }
        let oidc = oidc_named(authenticators, &login.authenticator)
            .ok_or_else(|| SsoError::Gone(login.authenticator.clone()))?;
        let d = oidc.discovered().await?;
        if !oidc.accepts_response_issuer(&d, callback.iss) {
            return Err(SsoError::MixUp);
        }
        if let Some(error) = callback.error {
            return Err(SsoError::Provider(printable(error)));
        }
        let code = callback.code.ok_or(SsoError::Malformed("no code"))?;
        let tokens = oidc
            .exchange_code(&d, code, &login.verifier, &login.redirect_uri)
            .await?;
        let id_token = tokens
            .id_token
            .as_deref()
            .ok_or(SsoError::Oidc(OidcError::IdToken(Refusal::Claim(
                "id_token".into(),
            ))))?;
        let verified = oidc
            .verify_id_token(&d, id_token, Some(&login.nonce))
            .await
            .map_err(OidcError::IdToken)?;
        let now = drawbridge_identity::unix_now();
        let id = SessionId::generate()?;
        let p = &verified.principal;
        let mut record = Record {
            authenticator: login.authenticator.clone(),
            host: login.host.clone(),
            user: p.id.clone(),
            groups: p.groups.clone(),
            attributes: p.attributes.clone(),
            issuer: oidc.issuer().to_string(),
            subject: verified.subject.clone(),
            authenticated_at: p.authenticated_at.unwrap_or(now),
            created_at: now,
            created_ms: unix_ms(),
            last_seen: now,
            expires_at: now + self.config.lifetime.as_secs(),
            refresh_at: None,
            sealed: None,
            parent: None,
            factors: p.factors.clone(),
        };
        if let Some(rt) = &tokens.refresh_token {
            let expiry = tokens
                .expires_in
                .map_or(verified.expires_at, |e| now + e)
                .min(verified.expires_at);
            record.refresh_at = Some(expiry.saturating_sub(REFRESH_AHEAD).max(now + 1));
            record.sealed = Some(
                self.seal_tokens(id.lookup(), Some(rt.as_str()), Some(id_token))
                    .await?,
            );
        } else {
            record.sealed = Some(self.seal_tokens(id.lookup(), None, Some(id_token)).await?);
        }
        self.save(id.lookup(), &record).await?;
        let principal = Arc::new(principal_of(&record));
        Ok(Finished {
            session_cookie: Zeroizing::new(id.cookie().to_string()),
            location: login.return_to,
            host: login.host,
            principal,
        })
    }

    /// The session a cookie names, for a request to `host` on a route that admits the
    /// `authenticators`: `None` when there is none (or it ended, or it belongs to another
    /// host or authenticator). An error means the store or the provider could not say:
    /// the request is refused.
    pub async fn lookup(
        &self,
        cookie: &str,
        host: &str,
        authenticators: &[Arc<Authenticator>],
    ) -> Result<Option<Arc<Session>>, SsoError> {
        let now = drawbridge_identity::unix_now();
        // A session read within `cache_ttl` costs a hash of the cookie and one comparison:
        // no decoding, no digest. Entries are made only for cookies that named a session.
        let key = self.hasher.hash_one(cookie.as_bytes());
        let fresh = self.cache.get(&key).filter(|c| {
            c.read_at.elapsed() < self.config.cache_ttl
                && constant_time_eq(c.cookie.as_bytes(), cookie.as_bytes())
        });
        let session = match fresh {
            Some(c) => c.session.clone(),
            None => {
                let Some(id) = SessionId::from_cookie(cookie) else {
                    return Ok(None);
                };
                // Boxed: the store's read is kilobytes of state that every request's future
                // would otherwise carry, taken only when the cache has no fresh entry.
                match Box::pin(self.read(&id, now, authenticators)).await? {
                    Some(s) => {
                        self.cache.insert(
                            key,
                            Arc::new(Cached {
                                session: s.clone(),
                                cookie: Zeroizing::new(cookie.to_string()),
                                read_at: Instant::now(),
                            }),
                        );
                        s
                    }
                    None => {
                        self.cache.remove(&key);
                        return Ok(None);
                    }
                }
            }
        };
        let r = &session.record;
        let admitted = authenticators
            .iter()
            .any(|a| matches!(&**a, Authenticator::Oidc(o) if **o.name() == *r.authenticator));
        if r.host != host
            || !admitted
            || now >= r.expires_at
            || now >= r.last_seen + self.config.idle_timeout.as_secs()
        {
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Reads a session from the store, touching and refreshing it when due. A host's
    /// session made from a central sign-in lives only as long as that sign-in's session
    /// (its parent), which is read (and refreshed) with it.
    async fn read(
        &self,
        id: &SessionId,
        now: u64,
        authenticators: &[Arc<Authenticator>],
    ) -> Result<Option<Arc<Session>>, SsoError> {
        let Some(record) = self.read_record(id.lookup(), now, authenticators).await? else {
            return Ok(None);
        };
        if let Some(parent) = record.parent.as_deref().and_then(unhex32)
            && self
                .read_record(&parent, now, authenticators)
                .await?
                .is_none()
        {
            self.store.delete(&session_key(id.lookup())).await?;
            return Ok(None);
        }
        Ok(Some(Arc::new(Session {
            principal: Arc::new(principal_of(&record)),
            handle: base16ct::lower::encode_string(id.lookup()),
            record,
        })))
    }

    /// The record at `lookup`, if it is live: not past its lifetimes, not revoked, and
    /// refreshed at the provider when due (a refused refresh ends it).
    async fn read_record(
        &self,
        lookup: &[u8; 32],
        now: u64,
        authenticators: &[Arc<Authenticator>],
    ) -> Result<Option<Record>, SsoError> {
        let key = session_key(lookup);
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let mut record: Record =
            serde_json::from_slice(&bytes).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        if now >= record.expires_at || now >= record.last_seen + self.config.idle_timeout.as_secs()
        {
            self.store.delete(&key).await?;
            return Ok(None);
        }
        if let Some(revoked) = self.store.get(&revoked_key(&record)).await?
            && revoked
                .first_chunk::<8>()
                .is_some_and(|at| record.created_ms <= u64::from_be_bytes(*at))
        {
            self.store.delete(&key).await?;
            return Ok(None);
        }
        let mut changed = false;
        if record.refresh_at.is_some_and(|at| now >= at) {
            match self.refresh(lookup, &mut record, now, authenticators).await {
                Ok(()) => changed = true,
                Err(SsoError::Oidc(e @ (OidcError::Provider { .. } | OidcError::IdToken(_)))) => {
                    // The provider refused: the session ends.
                    tracing::info!(error = %e, user = %record.user, "session ended: refresh refused");
                    self.store.delete(&key).await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        if changed || now >= record.last_seen + TOUCH_EVERY {
            record.last_seen = now;
            self.save(lookup, &record).await?;
        }
        Ok(Some(record))
    }

    async fn refresh(
        &self,
        lookup: &[u8; 32],
        record: &mut Record,
        now: u64,
        authenticators: &[Arc<Authenticator>],
    ) -> Result<(), SsoError> {
        let oidc = oidc_named(authenticators, &record.authenticator)
            .ok_or_else(|| SsoError::Gone(record.authenticator.clone()))?;
        let kept = self.open_tokens(lookup, record).await?;
        let Some(rt) = kept.refresh_token.as_deref() else {
            record.refresh_at = None;
            return Ok(());
        };
        let d = oidc.discovered().await?;
        let tokens = oidc.refresh(&d, rt).await?;
        let mut id_token = kept.id_token.clone();
        let mut expiry = tokens.expires_in.map(|e| now + e);
        if let Some(t) = &tokens.id_token {
            let v = oidc
                .verify_id_token(&d, t, None)
                .await
                .map_err(OidcError::IdToken)?;
            // OpenID Connect Core §12.2: the same person, or the session ends.
            if v.subject != record.subject {
                return Err(SsoError::Oidc(OidcError::IdToken(Refusal::Claim(
                    "sub".into(),
                ))));
            }
            record.groups = v.principal.groups;
            record.attributes = v.principal.attributes;
            expiry = Some(expiry.map_or(v.expires_at, |e| e.min(v.expires_at)));
            id_token = Some(t.clone());
        }
        let refresh_token = tokens
            .refresh_token
            .as_ref()
            .map(|t| t.to_string())
            .or(kept.refresh_token.clone());
        record.refresh_at = expiry.map(|e| e.saturating_sub(REFRESH_AHEAD).max(now + 1));
        record.sealed = Some(
            self.seal_tokens(lookup, refresh_token.as_deref(), id_token.as_deref())
                .await?,
        );
        Ok(())
    }

    /// A single-use code that hands the sign-in of `session` (a central one) to `host`,
    /// which redeems it within a minute for a session of its own, then sends the browser
    /// to `return_to`.
    pub async fn hand_over(
        &self,
        session: &Session,
        host: &str,
        return_to: &str,
    ) -> Result<String, SsoError> {
        let code = random()?;
        let h = HandOver {
            parent: session.handle.clone(),
            host: host.to_string(),
            return_to: return_to.to_string(),
        };
        let value = serde_json::to_vec(&h).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        self.store
            .put(
                &handover_key(&code),
                &value,
                drawbridge_identity::unix_now() + HANDOVER_TTL,
            )
            .await?;
        Ok(code)
    }

    /// Redeems a hand-over code on `host`: once, within its minute, on the host it was
    /// made for, while the sign-in it hands over lasts. A new session id for this host.
    pub async fn redeem(
        &self,
        code: &str,
        host: &str,
        authenticators: &[Arc<Authenticator>],
    ) -> Result<Finished, SsoError> {
        if !well_formed(code) {
            return Err(SsoError::UnknownState);
        }
        let bytes = self
            .store
            .take(&handover_key(code))
            .await?
            .ok_or(SsoError::UnknownState)?;
        let h: HandOver =
            serde_json::from_slice(&bytes).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        if h.host != host {
            return Err(SsoError::OtherHost);
        }
        let parent = unhex32(&h.parent).ok_or(SsoError::UnknownState)?;
        let now = drawbridge_identity::unix_now();
        let central = self
            .read_record(&parent, now, authenticators)
            .await?
            .ok_or(SsoError::UnknownState)?;
        let id = SessionId::generate()?;
        let record = Record {
            host: h.host.clone(),
            created_at: now,
            created_ms: unix_ms(),
            last_seen: now,
            refresh_at: None,
            sealed: None,
            parent: Some(h.parent.clone()),
            ..central
        };
        self.save(id.lookup(), &record).await?;
        Ok(Finished {
            session_cookie: Zeroizing::new(id.cookie().to_string()),
            location: h.return_to,
            host: h.host,
            principal: Arc::new(principal_of(&record)),
        })
    }

    /// Ends the session `cookie` names, and the central sign-in it came from; returns the
    /// sign-in's record and ID token (for the provider's logout) when there was one.
    pub async fn end(&self, cookie: &str) -> Result<Option<(Record, Option<String>)>, SsoError> {
        let Some(id) = SessionId::from_cookie(cookie) else {
            return Ok(None);
        };
        self.cache.remove(&self.hasher.hash_one(cookie.as_bytes()));
        let Some(bytes) = self.store.take(&session_key(id.lookup())).await? else {
            return Ok(None);
        };
        let mut record: Record =
            serde_json::from_slice(&bytes).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        let mut lookup = *id.lookup();
        if let Some(parent) = record.parent.as_deref().and_then(unhex32) {
            // The sign-in's other host sessions on this instance end at their next read;
            // its own session (on the sign-in host) at once.
            self.cache.clear();
            if let Some(bytes) = self.store.take(&session_key(&parent)).await? {
                record =
                    serde_json::from_slice(&bytes).map_err(|e| SsoError::Corrupt(e.to_string()))?;
                lookup = parent;
            }
        }
        let id_token = self
            .open_tokens(&lookup, &record)
            .await
            .ok()
            .and_then(|k| k.id_token);
        Ok(Some((record, id_token)))
    }

    /// The sessions in the store (of `user`, `AUTHENTICATOR/ID`, when given), at most
    /// `limit`: who, on which host, since and until when, which factors; never a token.
    /// Sessions a revocation of their person ended are left out.
    pub async fn list(&self, user: Option<&str>, limit: usize) -> Result<Vec<Listed>, SsoError> {
        let rows = self.store.scan("session:", MAX_LISTED).await?;
        let mut out = Vec::new();
        for (key, bytes) in rows {
            let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            let person = format!("{}/{}", r.authenticator, r.user);
            if user.is_some_and(|u| u != person) {
                continue;
            }
            if let Some(revoked) = self.store.get(&revoked_key(&r)).await?
                && let Ok(at) = <[u8; 8]>::try_from(revoked.as_slice())
                && u64::from_be_bytes(at) >= r.created_ms
            {
                continue;
            }
            out.push(Listed {
                handle: key.trim_start_matches("session:").to_string(),
                user: person,
                host: r.host,
                created_at: r.created_at,
                last_seen: r.last_seen,
                expires_at: r.expires_at,
                factors: r.factors.iter().map(|f| f.method.as_str()).collect(),
            });
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Revokes one session by its handle; whether it existed.
    pub async fn revoke(&self, handle: &str) -> Result<bool, SsoError> {
        let Some(lookup) = unhex32(handle) else {
            return Ok(false);
        };
        // Cached by cookie, which a handle does not name: forget every session read.
        self.cache.clear();
        Ok(self.store.delete(&session_key(&lookup)).await?)
    }

    /// Revokes every session of `user` signed in through `authenticator` until now.
    pub async fn revoke_user(&self, authenticator: &str, user: &str) -> Result<(), SsoError> {
        let now = drawbridge_identity::unix_now();
        let key = format!("revoked:{authenticator}/{user}");
        self.store
            .put(
                &key,
                &unix_ms().to_be_bytes(),
                now + self.config.lifetime.as_secs(),
            )
            .await?;
        self.cache.clear();
        Ok(())
    }

    /// Records a second factor proved in the session `cookie` names. The session then
    /// carries on under a new id (its privileges grew: a cookie taken before the factor is
    /// worth nothing after it), returned for the browser, unless it is a central sign-in's
    /// session that hosts' sessions hang from. `Ok(None)` also when there is no such
    /// session.
    pub async fn add_factor(
        &self,
        cookie: &str,
        factor: Factor,
    ) -> Result<Option<Added>, SsoError> {
        let Some(id) = SessionId::from_cookie(cookie) else {
            return Ok(None);
        };
        self.cache.remove(&self.hasher.hash_one(cookie.as_bytes()));
        let key = session_key(id.lookup());
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let mut record: Record =
            serde_json::from_slice(&bytes).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        Factor::record(&mut record.factors, factor);
        let parents = self.config.sign_in.is_some() && record.parent.is_none();
        if parents {
            self.save(id.lookup(), &record).await?;
            return Ok(Some(Added {
                cookie: None,
                principal: Arc::new(principal_of(&record)),
            }));
        }
        let new = SessionId::generate()?;
        if record.sealed.is_some() {
            // The provider's tokens are sealed for the session's id: sealed again for the new.
            let kept = self.open_tokens(id.lookup(), &record).await?;
            record.sealed = Some(
                self.seal_tokens(
                    new.lookup(),
                    kept.refresh_token.as_deref(),
                    kept.id_token.as_deref(),
                )
                .await?,
            );
        }
        self.save(new.lookup(), &record).await?;
        self.store.delete(&key).await?;
        Ok(Some(Added {
            cookie: Some(Zeroizing::new(new.cookie().to_string())),
            principal: Arc::new(principal_of(&record)),
        }))
    }

    async fn save(&self, lookup: &[u8; 32], record: &Record) -> Result<(), SsoError> {
        let value = serde_json::to_vec(record).map_err(|e| SsoError::Corrupt(e.to_string()))?;
        self.store
            .put(&session_key(lookup), &value, record.expires_at)
            .await?;
        Ok(())
    }

    async fn seal_tokens(
        &self,
        lookup: &[u8; 32],
        refresh_token: Option<&str>,
        id_token: Option<&str>,
    ) -> Result<String, SsoError> {
        let kept = Zeroizing::new(
            serde_json::to_vec(&Kept {
                refresh_token: refresh_token.map(String::from),
                id_token: id_token.map(String::from),
            })
            .map_err(|e| SsoError::Corrupt(e.to_string()))?,
        );
        let sealed = self.seal_key().await?.seal(lookup, "tokens", &kept)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    async fn open_tokens(&self, lookup: &[u8; 32], record: &Record) -> Result<Kept, SsoError> {
        let Some(sealed) = &record.sealed else {
            return Ok(Kept {
                refresh_token: None,
                id_token: None,
            });
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| SsoError::Corrupt(e.to_string()))?;
        let plain = self.seal_key().await?.open(lookup, "tokens", &bytes)?;
        serde_json::from_slice(&plain).map_err(|e| SsoError::Corrupt(e.to_string()))
    }
}

/// Why a revocation was not done.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Neither or both of a session and a user named, or a user not `AUTHENTICATOR/ID`.
    #[error("{0}")]
    Usage(&'static str),
    /// No such session.
    #[error("no such session")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Sso(#[from] SsoError),
}

/// Revokes one session (by its handle) or every session of a user (`AUTHENTICATOR/ID`,
/// signed in until now); says what was done.
pub async fn revoke(
    sessions: &Sessions,
    session: Option<&str>,
    user: Option<&str>,
) -> Result<String, RevokeError> {
    match (session, user) {
        (Some(handle), None) => {
            if sessions.revoke(handle).await? {
                Ok(format!("revoked session {handle}"))
            } else {
                Err(RevokeError::NotFound)
            }
        }
        (None, Some(user)) => {
            let (authenticator, id) = user
                .split_once('/')
                .filter(|(a, i)| !a.is_empty() && !i.is_empty())
                .ok_or(RevokeError::Usage(
                    "a user is AUTHENTICATOR/ID, as the access log names them",
                ))?;
            sessions.revoke_user(authenticator, id).await?;
            Ok(format!("revoked every session of {authenticator}/{id}"))
        }
        _ => Err(RevokeError::Usage("name a session or a user, not both")),
    }
}

/// The query of a callback.
#[derive(Debug, Default)]
pub struct Callback<'a> {
    /// `state`.
    pub state: Option<&'a str>,
    /// `code`.
    pub code: Option<&'a str>,
    /// `iss` (RFC 9207).
    pub iss: Option<&'a str>,
    /// `error`.
    pub error: Option<&'a str>,
}

/// The principal a session stands for: the same a JWT with the same claims would make.
fn principal_of(r: &Record) -> Principal {
    Principal {
        id: r.user.clone(),
        kind: drawbridge_config::PrincipalKind::User,
        authenticator: r.authenticator.as_str().into(),
        issuer: Some(r.issuer.clone()),
        groups: r.groups.clone(),
        attributes: r.attributes.clone(),
        methods: vec![AuthMethod::Oidc],
        authenticated_at: Some(r.authenticated_at),
        expires_at: Some(r.expires_at),
        factors: r.factors.clone(),
    }
}

fn oidc_named<'a>(
    authenticators: &'a [Arc<Authenticator>],
    name: &str,
) -> Option<&'a OidcAuthenticator> {
    authenticators.iter().find_map(|a| match &**a {
        Authenticator::Oidc(o) if **o.name() == *name => Some(o),
        _ => None,
    })
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn handover_key(code: &str) -> String {
    format!(
        "handover:{}",
        base16ct::lower::encode_string(&digest("handover", code.as_bytes()))
    )
}

fn state_key(state: &str) -> String {
    format!(
        "login:{}",
        base16ct::lower::encode_string(&digest("state", state.as_bytes()))
    )
}

fn session_key(lookup: &[u8; 32]) -> String {
    format!("session:{}", base16ct::lower::encode_string(lookup))
}

fn revoked_key(r: &Record) -> String {
    format!("revoked:{}/{}", r.authenticator, r.user)
}

fn digest(purpose: &str, bytes: &[u8]) -> [u8; 32] {
    drawbridge_config::sha256(&[b"drawbridge ", purpose.as_bytes(), bytes])
}

/// 256 random bits, base64url: states, nonces, PKCE verifiers, login cookies.
fn random() -> Result<String, SecretError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut raw[..]).map_err(|_| SecretError::NoRandomness)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]))
}

/// What [`random`] makes: 43 base64url characters.
fn well_formed(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A value's anti-forgery token for a form: a digest of a cookie the page's own browser
/// holds (and a forging page cannot read).
pub fn csrf_token(cookie: &str) -> String {
    base16ct::lower::encode_string(&digest("csrf", cookie.as_bytes()))[..32].to_string()
}

/// Whether `token` is the anti-forgery token of `cookie`.
pub fn csrf_valid(cookie: &str, token: &str) -> bool {
    constant_time_eq(csrf_token(cookie).as_bytes(), token.as_bytes())
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn printable(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// How long a sign-in may take (for the login cookie's `Max-Age`).
pub const LOGIN_MAX_AGE: Duration = Duration::from_secs(LOGIN_TTL);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path: &std::path::Path) -> drawbridge_config::Sessions {
        drawbridge_config::Sessions {
            store: drawbridge_config::SessionStore::Embedded {
                path: path.to_path_buf(),
            },
            key: None,
            idle_timeout: Duration::from_secs(3600),
            lifetime: Duration::from_secs(7200),
            cache_ttl: Duration::ZERO,
            sign_in: None,
            location: drawbridge_config::Location {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
            },
        }
    }

    /// A stored session of `user`, as a sign-in would have made it.
    async fn stored(s: &Sessions, user: &str, host: &str) -> SessionId {
        let now = drawbridge_identity::unix_now();
        let id = SessionId::generate().expect("id");
        let record = Record {
            authenticator: "corp".into(),
            host: host.into(),
            user: user.into(),
            groups: vec!["eng".into()],
            attributes: Map::new(),
            issuer: "https://idp.test".into(),
            subject: user.into(),
            authenticated_at: now,
            created_at: now,
            created_ms: unix_ms(),
            last_seen: now,
            expires_at: now + 3600,
            refresh_at: None,
            sealed: None,
            parent: None,
            factors: Vec::new(),
        };
        s.save(id.lookup(), &record).await.expect("save");
        id
    }

    #[tokio::test]
    async fn revoking_a_user_ends_their_earlier_sessions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = Store::Embedded(crate::store::Embedded::open(&path).expect("open"));
        let s = Sessions::new(store, settings(&path), Served::default()).expect("sessions");
        let none: &[Arc<Authenticator>] = &[];
        let alice = stored(&s, "alice", "app.test").await;
        let bob = stored(&s, "bob", "app.test").await;
        // `lookup` needs the route's authenticators; `read` is what it asks the store.
        let now = drawbridge_identity::unix_now();
        assert!(s.read(&alice, now, none).await.expect("read").is_some());
        s.revoke_user("corp", "alice").await.expect("revoke");
        assert!(s.read(&alice, now, none).await.expect("read").is_none());
        assert!(s.read(&bob, now, none).await.expect("read").is_some());
        // A session made right after the revocation (same second) stands.
        let later = stored(&s, "alice", "app.test").await;
        assert!(s.read(&later, now, none).await.expect("read").is_some());
        // One session by its handle.
        assert!(
            s.revoke(&base16ct::lower::encode_string(bob.lookup()))
                .await
                .expect("revoke")
        );
        assert!(s.read(&bob, now, none).await.expect("read").is_none());
        assert!(
            !s.revoke(&base16ct::lower::encode_string(bob.lookup())[..16])
                .await
                .expect("revoke")
        );
    }
}
