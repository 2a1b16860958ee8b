//! A session's two secrets: the id a browser holds, and what the server keeps sealed.
//!
//! - [`SessionId`]: 256 random bits from the operating system, sent as 43 base64url
//!   characters in the session cookie. The store never keeps the id itself, only its
//!   SHA-256 ([`SessionId::lookup`]): a copy of the store opens no session.
//! - [`SealKey`]: what a session keeps that is worth stealing (the IdP's tokens) is sealed
//!   with AES-256-GCM-SIV (aws-lc-rs), a fresh random nonce per seal (SIV stays safe should
//!   two ever repeat), and bound to the session and purpose it was sealed for (associated
//!   data), so a sealed value moved to another session or field does not open.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use zeroize::Zeroizing;

/// Bytes of a session id.
const ID_BYTES: usize = 32;
/// Its length as the cookie carries it (base64url, no padding).
const ID_CHARS: usize = 43;
/// The first byte of a sealed value: the format.
const SEALED_V1: u8 = 1;

/// Why a secret could not be made or opened. Every one of them refuses the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The operating system's random source failed.
    #[error("no randomness")]
    NoRandomness,
    /// A key of the wrong length.
    #[error("a session key is 32 bytes")]
    KeyLength,
    /// Sealing failed.
    #[error("sealing failed")]
    Seal,
    /// Not a value this key sealed for this session and purpose (or it was altered).
    #[error("sealed value does not open")]
    Open,
}

/// The id of one session, as its cookie carries it.
pub struct SessionId {
    cookie: Zeroizing<String>,
    lookup: [u8; 32],
}

impl SessionId {
    /// A new id, for a new login (never reused: no fixation).
    pub fn generate() -> Result<SessionId, SecretError> {
        let mut raw = Zeroizing::new([0u8; ID_BYTES]);
        aws_lc_rs::rand::fill(&mut raw[..]).map_err(|_| SecretError::NoRandomness)?;
        Ok(SessionId {
            cookie: Zeroizing::new(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]),
            ),
            lookup: digest(&raw[..]),
        })
    }

    /// The id a cookie value names, if it is one in form (43 base64url characters). Whether
    /// such a session exists is the store's to say.
    pub fn from_cookie(value: &str) -> Option<SessionId> {
        if value.len() != ID_CHARS {
            return None;
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value)
                .ok()?,
        );
        // Exactly one spelling per id: the canonical encoding of 32 bytes.
        if raw.len() != ID_BYTES
            || base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]) != value
        {
            return None;
        }
        Some(SessionId {
            cookie: Zeroizing::new(value.to_string()),
            lookup: digest(&raw),
        })
    }

    /// The cookie's value.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// What the store keys the session by: SHA-256 of the id.
    pub fn lookup(&self) -> &[u8; 32] {
        &self.lookup
    }
}

impl std::fmt::Debug for SessionId {
    /// Never the id itself: a log line must not open a session.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SessionId(lookup {:02x}{:02x}…)",
            self.lookup[0], self.lookup[1]
        )
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    drawbridge_config::sha256(&[b"drawbridge session id", bytes])
}

/// The key session secrets are sealed with.
pub struct SealKey(LessSafeKey);

impl SealKey {
    /// A key from its 32 bytes (from the configuration's key file).
    pub fn from_bytes(bytes: &[u8]) -> Result<SealKey, SecretError> {
        let key = UnboundKey::new(&AES_256_GCM_SIV, bytes).map_err(|_| SecretError::KeyLength)?;
        Ok(SealKey(LessSafeKey::new(key)))
    }

    /// A new random key, and its bytes to keep (a restart must open what was sealed).
    pub fn generate() -> Result<(SealKey, Zeroizing<[u8; 32]>), SecretError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut bytes[..]).map_err(|_| SecretError::NoRandomness)?;
        Ok((SealKey::from_bytes(&bytes[..])?, bytes))
    }

    /// `plaintext` sealed for `session` and `purpose`.
    pub fn seal(
        &self,
        session: &[u8; 32],
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretError::NoRandomness)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(session, purpose)),
                &mut body,
            )
            .map_err(|_| SecretError::Seal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// What `sealed` holds, if this key sealed it for `session` and `purpose`, unaltered.
    pub fn open(
        &self,
        session: &[u8; 32],
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretError::Open)?;
        if version != SEALED_V1 || rest.len() < NONCE_LEN + 16 {
            return Err(SecretError::Open);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut body = Zeroizing::new(body.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(associated(session, purpose)), &mut body)
            .map_err(|_| SecretError::Open)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(redacted)")
    }
}

/// The session and purpose a sealed value belongs to: its lookup, then the purpose.
fn associated(session: &[u8; 32], purpose: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + purpose.len());
    aad.extend_from_slice(session);
    aad.extend_from_slice(purpose.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_canonical_and_kept_only_as_digests() {
        let a = SessionId::generate().expect("id");
        let b = SessionId::generate().expect("id");
        assert_ne!(a.cookie(), b.cookie());
        assert_eq!(a.cookie().len(), ID_CHARS);
        let again = SessionId::from_cookie(a.cookie()).expect("its own cookie");
        assert_eq!(again.lookup(), a.lookup());
        assert_ne!(
            &a.lookup()[..],
            a.cookie().as_bytes().get(..32).unwrap_or_default()
        );
        assert!(
            !format!("{a:?}").contains(a.cookie()),
            "Debug never shows the id"
        );
        // Other lengths, other alphabets, padding, and a second spelling of the same bytes
        // (the last character's unused bits set) are not ids.
        let c = a.cookie();
        let last = c.as_bytes()[ID_CHARS - 1];
        let alias = format!("{}{}", &c[..ID_CHARS - 1], (last ^ 1) as char);
        for bad in [
            "",
            &c[..ID_CHARS - 1],
            &format!("{c}A"),
            &format!("{}=", &c[..ID_CHARS - 1]),
            &c.replace('-', "+").replace('_', "/"),
            &alias,
        ] {
            if bad == c {
                continue;
            }
            match SessionId::from_cookie(bad) {
                None => {}
                Some(s) => assert_ne!(s.lookup(), a.lookup(), "{bad:?} opened {c:?}"),
            }
        }
    }

    #[test]
    fn sealed_values_open_only_for_their_session_and_purpose() {
        let (key, bytes) = SealKey::generate().expect("key");
        let s1 = *SessionId::generate().expect("id").lookup();
        let s2 = *SessionId::generate().expect("id").lookup();
        let sealed = key
            .seal(&s1, "idp-tokens", b"refresh-token-123")
            .expect("seal");
        assert!(
            !sealed.windows(7).any(|w| w == b"refresh"),
            "not in the clear"
        );
        assert_eq!(
            &key.open(&s1, "idp-tokens", &sealed).expect("open")[..],
            b"refresh-token-123"
        );
        // The same key read back from its bytes (after a restart) opens it.
        let reread = SealKey::from_bytes(&bytes[..]).expect("key");
        assert_eq!(
            &reread.open(&s1, "idp-tokens", &sealed).expect("open")[..],
            b"refresh-token-123"
        );
        // Another session, another purpose, another key, any altered byte: nothing.
        assert_eq!(key.open(&s2, "idp-tokens", &sealed), Err(SecretError::Open));
        assert_eq!(key.open(&s1, "other", &sealed), Err(SecretError::Open));
        let (other, _) = SealKey::generate().expect("key");
        assert_eq!(
            other.open(&s1, "idp-tokens", &sealed),
            Err(SecretError::Open)
        );
        for i in 0..sealed.len() {
            let mut bent = sealed.clone();
            bent[i] ^= 0x01;
            assert_eq!(
                key.open(&s1, "idp-tokens", &bent),
                Err(SecretError::Open),
                "byte {i}"
            );
        }
        assert_eq!(
            key.open(&s1, "idp-tokens", &sealed[..20]),
            Err(SecretError::Open)
        );
        assert_eq!(key.open(&s1, "idp-tokens", &[]), Err(SecretError::Open));
        // Two seals of the same value differ (fresh nonces).
        assert_ne!(
            sealed,
            key.seal(&s1, "idp-tokens", b"refresh-token-123")
                .expect("seal")
        );
        assert_eq!(
            SealKey::from_bytes(&[0u8; 16]).err(),
            Some(SecretError::KeyLength)
        );
        assert_eq!(format!("{key:?}"), "SealKey(redacted)");
    }
}
