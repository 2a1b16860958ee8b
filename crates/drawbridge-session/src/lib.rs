//! Single sign-on for people: what a browser's login and session need beside the admission
//! core. So far:
//!
//! - which requests are a browser's page loads, to send to sign in ([`is_navigation`]);
//!   every other one gets a 401;
//! - where a browser returns after signing in ([`Served::return_target`]);
//! - a session's secrets: the random id its cookie carries, kept by the store only as a
//!   digest ([`SessionId`]), and the sealing of what it keeps from the IdP ([`SealKey`]).
//!
//! The OIDC flow, the session stores and the pages build on these.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod browser;
pub mod cookies;
pub mod pages;
mod redis_store;
mod return_to;
mod secret;
mod sessions;
mod store;

pub use browser::{is_form_submission, is_navigation};
pub use redis_store::Redis;
pub use return_to::{Origin, OriginError, ReturnTo, Served};
pub use secret::{SealKey, SecretError, SessionId};
pub use sessions::{
    Added, Begun, CALLBACK_PATH, Callback, Finished, LOGIN_COOKIE, LOGIN_MAX_AGE, Listed,
    LoginState, Record, RevokeError, SESSION_COOKIE, Session, Sessions, SsoError, csrf_token,
    csrf_valid, revoke,
};
pub use store::{Backend, Embedded, NEVER, Store, StoreError};
