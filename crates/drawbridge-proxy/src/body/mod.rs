//! Bodies on both sides: the request body with its bounds ([`request`]), and the response
//! body that counts what it sends and records the access event when it ends ([`response`]).

pub mod request;
pub mod response;

pub use request::*;
pub use response::*;
