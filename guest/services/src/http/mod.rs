//! A small HTTP/1.1 front end to the key-value store.

pub mod parser;
pub mod router;

pub use parser::{HttpError, HttpParser, Method, Request};
