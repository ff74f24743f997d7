//! The logging channel's security: a pair key both sides hold, a Noise
//! handshake that proves it both ways and keys the session, a record layer
//! (AES-256-GCM) for everything after it, heartbeat keys exchanged inside
//! it, and a listener that survives whatever connects to it.
//!
//! * [`key`]: the pair key (and bearer tokens) on disk, private files only.
//! * [`handshake`]: the opening of a connection — preamble, Noise
//!   `NNpsk0`, the primary's attach request, the backup's verdict.
//! * [`responder`]: the backup's side of the opening, fed bytes.
//! * [`messages`]: the attach request and the verdict.
//! * [`record`]: sealing and opening records.
//! * [`beat_key`]: heartbeat keys (HMAC-SHA256).
//! * [`listener`]: the backup's hardened listener.
//!
//! The crates: `snow` (Noise, with `ring` for AES-GCM and SHA-256) and
//! `ring` (randomness, HMAC) — no cryptography of our own.
//! `docs/log-format.md` has the wire format, `docs/threat-model.md` what it
//! protects against.

pub mod beat_key;
pub mod handshake;
pub mod key;
pub mod listener;
pub mod messages;
pub mod record;
pub mod responder;

pub use beat_key::{BEAT_KEY_LEN, BEAT_MAC_LEN, BeatKey, BeatKeys};
pub use handshake::{
    CHANNEL_VERSION, HandshakeError, Mode, NOISE_PARAMS, Rejection, Security, Session, initiate,
};
pub use key::{KeyError, PairKey, read_token, write_new_token};
pub use listener::{Attached, ChannelListener, ListenerEvent, ListenerOptions};
pub use messages::{AttachRequest, Verdict};
pub use record::{RecordError, RecordLayer, RecordReader};
pub use responder::{Responder, Step};
