//! Single sign-on for people: what a browser's login and session need beside the admission
//! core. This first part decides where a browser returns after signing in
//! ([`Served::return_target`]); the OIDC flow, the session stores and the pages build on it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod return_to;

pub use return_to::{Origin, OriginError, ReturnTo, Served};
