//! The Redis serialization protocol (RESP2): request parsing and replies.

pub mod inline;
pub mod parser;
pub mod reply;

pub use parser::{Argv, ProtocolError, RespParser, Step};
