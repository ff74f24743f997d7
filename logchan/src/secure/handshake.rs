//! How a logging connection opens. The primary connects and sends a
//! 16-byte preamble, then (with a pair key) the two messages of the Noise
//! handshake `Noise_NNpsk0_25519_AESGCM_SHA256`, then its `Attach`; the
//! backup answers with its `Verdict`. Only then does the log stream start.
//!
//! ```text
//! primary                                         backup
//!   preamble "LSTPCHAN" v2 mode ───────────────▶  wrong magic/version/mode: dropped
//!   [len] Noise →psk,e  ───────────────────────▶  not under the pair key: dropped
//!                        ◀───────────────────────  [len] Noise ←e,ee
//!   [len] record(Attach) ──────────────────────▶  fails its tag (wrong key, or a
//!                                                  replayed recording): dropped
//!                        ◀───────────────────────  [len] record(Verdict)
//!   [records: log stream] ─────────────────────▶
//!                        ◀───────────────────────  [records: acks]
//! ```
//!
//! Both sides prove they hold the pair key (the PSK is mixed into every
//! key), and the fresh ephemeral keys of both make every session's keys
//! new: a recording of an earlier session replayed to a backup gets as far
//! as its `Attach`, which no longer opens. The preamble is the Noise
//! prologue, so a preamble changed on the way fails the handshake too.
//! Every message is framed as `u16 len, bytes`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use thiserror::Error;

use super::beat_key::{BEAT_KEY_LEN, BeatKey, BeatKeys};
use super::key::{KeyError, PairKey};
use super::messages::{self, AttachRequest, Verdict};
use super::record::{MAX_RECORD, RECORD_PREFIX, RecordLayer};

/// The preamble's magic.
pub const CHANNEL_MAGIC: [u8; 8] = *b"LSTPCHAN";
/// The channel protocol's version (1 was the unauthenticated stream with
/// no preamble).
pub const CHANNEL_VERSION: u16 = 2;
/// Bytes of the preamble: magic, version u16, mode u16, reserved u32.
pub const PREAMBLE_LEN: usize = 16;
/// The Noise protocol of an authenticated channel.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"lockstep logging channel\0";
/// Most bytes of a boot configuration an `Attach` carries.
pub const MAX_BOOT: usize = 32 << 10;

/// How a channel is protected, as the preamble says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No authentication, no encryption (`--insecure`).
    Insecure,
    /// Noise NNpsk0 with the pair key; AES-256-GCM records.
    NoisePsk,
}

impl Mode {
    pub(super) fn code(self) -> u16 {
        match self {
            Mode::Insecure => 0,
            Mode::NoisePsk => 1,
        }
    }

    pub(super) fn from_code(c: u16) -> Option<Mode> {
        match c {
            0 => Some(Mode::Insecure),
            1 => Some(Mode::NoisePsk),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Insecure => "insecure",
            Mode::NoisePsk => "noise-psk",
        }
    }
}

/// What protects this side's channels.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual authentication and encryption under a pair key.
    Key(PairKey),
    /// None: anyone who reaches the port is believed (`--insecure`).
    Insecure,
}

impl Security {
    pub fn mode(&self) -> Mode {
        match self {
            Security::Key(_) => Mode::NoisePsk,
            Security::Insecure => Mode::Insecure,
        }
    }

    /// For the log: what protects the channel (a key's fingerprint, never
    /// the key).
    pub fn describe(&self) -> String {
        match self {
            Security::Key(k) => format!(
                "authenticated and encrypted ({NOISE_PARAMS}, pair key fingerprint {})",
                k.fingerprint()
            ),
            Security::Insecure => "NOT authenticated, NOT encrypted (--insecure)".into(),
        }
    }
}

/// An opened channel: the record layer and heartbeat keys of an
/// authenticated session (none of either with `--insecure`).
#[derive(Debug)]
pub struct Session {
    pub records: Option<RecordLayer>,
    pub beats: Option<BeatKeys>,
}

impl Session {
    pub fn mode(&self) -> Mode {
        if self.records.is_some() {
            Mode::NoisePsk
        } else {
            Mode::Insecure
        }
    }
}

/// Why the primary's side of an opening failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("{op} during the logging channel's handshake")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the handshake did not finish in time")]
    Timeout,
    #[error(
        "the peer closed the connection during the handshake (it does not hold this pair key, only one side runs with --insecure, or it is not a lockstep backup)"
    )]
    Closed,
    #[error("the peer does not hold the pair key: it is not this pair's backup")]
    Unauthenticated,
    #[error("the backup refused this primary: {reason}")]
    Refused { reason: String },
    #[error("protocol error in the handshake: {0}")]
    Protocol(String),
    #[error("boot configuration of {0} bytes is too large for an attach request")]
    BootTooLarge(usize),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl HandshakeError {
    /// Whether the peer is simply not (yet) a backup of this pair —
    /// nobody, an impostor, a process without the key — as opposed to a
    /// backup that answered and refused.
    pub fn is_no_backup(&self) -> bool {
        !matches!(
            self,
            HandshakeError::Refused { .. }
                | HandshakeError::BootTooLarge(_)
                | HandshakeError::Key(_)
        )
    }
}

/// Why the backup's side dropped a connection (logged and counted; the
/// peer is told nothing it could learn from).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Rejection {
    #[error("not a lockstep primary (no channel preamble)")]
    NotLockstep,
    #[error("channel protocol version {0} is not supported (this build speaks {CHANNEL_VERSION})")]
    Version(u16),
    #[error(
        "the peer asks for a {theirs} channel, this side requires {ours} (same pair key and the same --insecure on both sides)"
    )]
    ModeMismatch {
        theirs: &'static str,
        ours: &'static str,
    },
    #[error("handshake not made with this pair key")]
    WrongKey,
    #[error(
        "the attach request failed authentication (the wrong pair key, or a recording of another session replayed)"
    )]
    Unauthenticated,
    #[error("{0}")]
    Malformed(String),
    #[error("no handshake within the deadline")]
    Idle,
    #[error("the peer closed the connection before it attached")]
    Closed,
    #[error("{0}")]
    Io(String),
    #[error("too many handshakes at once; the oldest are dropped")]
    Evicted,
}

pub(super) fn preamble(mode: Mode) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(&CHANNEL_MAGIC);
    p[8..10].copy_from_slice(&CHANNEL_VERSION.to_le_bytes());
    p[10..12].copy_from_slice(&mode.code().to_le_bytes());
    p
}

pub(super) fn noise_builder<'a>(
    key: &'a PairKey,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, String> {
    let params = NOISE_PARAMS.parse().map_err(|e| format!("{e}"))?;
    snow::Builder::new(params)
        .psk(0, key.bytes())
        .and_then(|b| b.prologue(prologue))
        .map_err(|e| format!("{e}"))
}

pub(super) fn prologue(pre: &[u8; PREAMBLE_LEN]) -> Vec<u8> {
    [PROLOGUE, pre.as_slice()].concat()
}

/// `u16 len, bytes`.
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_PREFIX + body.len());
    // Every body here is a Noise message or a record: at most MAX_RECORD.
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The primary's side: opens the channel on a connected stream and
/// returns the session once the backup accepted, all before `deadline`.
pub fn initiate(
    stream: &mut TcpStream,
    security: &Security,
    attach: &AttachRequest,
    deadline: Instant,
) -> Result<Session, HandshakeError> {
    if attach.boot.len() > MAX_BOOT {
        return Err(HandshakeError::BootTooLarge(attach.boot.len()));
    }
    let pre = preamble(security.mode());
    let mut io = Blocking { stream, deadline };
    io.write(&pre)?;
    let Security::Key(key) = security else {
        io.write(&frame(&messages::encode_attach(attach, &[0; BEAT_KEY_LEN])))?;
        let (verdict, _) =
            messages::decode_verdict(&io.read_frame()?).map_err(HandshakeError::Protocol)?;
        return match verdict {
            Verdict::Accepted => Ok(Session {
                records: None,
                beats: None,
            }),
            Verdict::Refused(reason) => Err(HandshakeError::Refused { reason }),
        };
    };
    let plog = prologue(&pre);
    let mut hs = noise_builder(key, &plog)
        .and_then(|b| b.build_initiator().map_err(|e| format!("{e}")))
        .map_err(HandshakeError::Protocol)?;
    let mut buf = vec![0u8; MAX_RECORD];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    io.write(&frame(&buf[..n]))?;
    let msg2 = io.read_frame()?;
    hs.read_message(&msg2, &mut buf)
        .map_err(|_| HandshakeError::Unauthenticated)?;
    let mut layer = RecordLayer::new(
        hs.into_transport_mode()
            .map_err(|e| HandshakeError::Protocol(e.to_string()))?,
    );
    let ours = BeatKey::generate()?;
    let plain = messages::encode_attach(attach, ours.raw());
    let mut sealed = vec![0u8; RecordLayer::sealed_len(plain.len())];
    let n = layer
        .seal(&plain, &mut sealed)
        .map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    io.write(&sealed[..n])?;
    let answer = io.read_frame()?;
    let n = layer
        .open(&answer, &mut buf)
        .map_err(|_| HandshakeError::Unauthenticated)?;
    let (verdict, theirs) =
        messages::decode_verdict(&buf[..n]).map_err(HandshakeError::Protocol)?;
    match verdict {
        Verdict::Accepted => Ok(Session {
            records: Some(layer),
            beats: Some(BeatKeys {
                ours,
                peers: BeatKey::from_bytes(theirs),
            }),
        }),
        Verdict::Refused(reason) => Err(HandshakeError::Refused { reason }),
    }
}

/// Blocking reads and writes bounded by one deadline.
struct Blocking<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Blocking<'_> {
    fn left(&self) -> Result<std::time::Duration, HandshakeError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(HandshakeError::Timeout)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), HandshakeError> {
        let left = self.left()?;
        self.stream
            .set_write_timeout(Some(left))
            .and_then(|()| self.stream.write_all(bytes))
            .map_err(|source| match source.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => HandshakeError::Timeout,
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => HandshakeError::Closed,
                _ => HandshakeError::Io { op: "send", source },
            })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), HandshakeError> {
        let mut have = 0;
        while have < buf.len() {
            let left = self.left()?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| HandshakeError::Io {
                    op: "receive",
                    source,
                })?;
            match self.stream.read(&mut buf[have..]) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(n) => have += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(HandshakeError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Err(HandshakeError::Closed);
                }
                Err(source) => {
                    return Err(HandshakeError::Io {
                        op: "receive",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn read_frame(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let mut len = [0u8; RECORD_PREFIX];
        self.read_exact(&mut len)?;
        let mut body = vec![0u8; usize::from(u16::from_le_bytes(len))];
        self.read_exact(&mut body)?;
        Ok(body)
    }
}
