//! The backup's side of a logging channel's opening ([`Responder`]): a
//! state machine fed with whatever bytes the peer sent, that never blocks
//! and never reads a socket itself (the listener does, for many openings
//! at once). The protocol is in [`super::handshake`].

use super::beat_key::{BEAT_KEY_LEN, BeatKey, BeatKeys};
use super::handshake::{
    CHANNEL_MAGIC, CHANNEL_VERSION, Mode, PREAMBLE_LEN, Rejection, Security, Session, frame,
    noise_builder, prologue,
};
use super::messages::{self, AttachRequest, Verdict};
use super::record::{MAX_RECORD, RECORD_PREFIX, RecordLayer};
use crate::wire::u16_at;

/// Where a backup's side of one opening stands.
enum Stage {
    Preamble,
    /// Waiting for the first Noise message (the preamble is the prologue).
    NoiseFirst([u8; PREAMBLE_LEN]),
    /// Waiting for the attach request (a record, or a clear frame).
    Attach,
    /// The attach request was handed out; waiting for the verdict.
    Judging,
}

/// What [`Responder::advance`] wants next.
#[derive(Debug)]
pub enum Step {
    /// More bytes from the peer.
    NeedMore,
    /// Send these bytes, then advance again.
    Send(Vec<u8>),
    /// The peer proved it holds the key (or the channel is insecure) and
    /// asks to attach: judge it, then call [`Responder::answer`].
    Attach(AttachRequest),
}

/// The backup's side of one opening, driven by whoever reads the socket
/// (it never blocks and never reads itself: feed it bytes with
/// [`Responder::input`]).
pub struct Responder {
    security: Security,
    stage: Stage,
    input: Vec<u8>,
    layer: Option<RecordLayer>,
    peer_beat_key: Option<[u8; BEAT_KEY_LEN]>,
}

impl Responder {
    pub fn new(security: Security) -> Responder {
        Responder {
            security,
            stage: Stage::Preamble,
            input: Vec::new(),
            layer: None,
            peer_beat_key: None,
        }
    }

    /// Bytes received from the peer. Refuses more than one frame's worth
    /// of unprocessed input.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), Rejection> {
        if self.input.len() + bytes.len() > RECORD_PREFIX + MAX_RECORD + PREAMBLE_LEN {
            return Err(Rejection::Malformed(
                "more input than a handshake has".into(),
            ));
        }
        self.input.extend_from_slice(bytes);
        Ok(())
    }

    /// Takes one complete frame from the input, if there is one.
    fn take_frame(&mut self) -> Option<Vec<u8>> {
        if self.input.len() < RECORD_PREFIX {
            return None;
        }
        let len = usize::from(u16_at(&self.input, 0));
        if self.input.len() < RECORD_PREFIX + len {
            return None;
        }
        let body = self.input[RECORD_PREFIX..RECORD_PREFIX + len].to_vec();
        self.input.drain(..RECORD_PREFIX + len);
        Some(body)
    }

    /// Processes what the input holds.
    pub fn advance(&mut self) -> Result<Step, Rejection> {
        match self.stage {
            Stage::Preamble => {
                if self.input.len() < PREAMBLE_LEN {
                    // Refuse junk as soon as it cannot be a preamble.
                    let n = self.input.len().min(CHANNEL_MAGIC.len());
                    if self.input[..n] != CHANNEL_MAGIC[..n] {
                        return Err(Rejection::NotLockstep);
                    }
                    return Ok(Step::NeedMore);
                }
                let mut pre = [0u8; PREAMBLE_LEN];
                pre.copy_from_slice(&self.input[..PREAMBLE_LEN]);
                self.input.drain(..PREAMBLE_LEN);
                if pre[..8] != CHANNEL_MAGIC {
                    return Err(Rejection::NotLockstep);
                }
                let version = u16_at(&pre, 8);
                if version != CHANNEL_VERSION {
                    return Err(Rejection::Version(version));
                }
                let theirs = Mode::from_code(u16_at(&pre, 10))
                    .ok_or_else(|| Rejection::Malformed("unknown channel mode".into()))?;
                if pre[12..] != [0; 4] {
                    return Err(Rejection::Malformed("preamble reserved bytes set".into()));
                }
                let ours = self.security.mode();
                if theirs != ours {
                    return Err(Rejection::ModeMismatch {
                        theirs: theirs.name(),
                        ours: ours.name(),
                    });
                }
                self.stage = match ours {
                    Mode::NoisePsk => Stage::NoiseFirst(pre),
                    Mode::Insecure => Stage::Attach,
                };
                self.advance()
            }
            Stage::NoiseFirst(pre) => {
                let Some(msg1) = self.take_frame() else {
                    return Ok(Step::NeedMore);
                };
                let Security::Key(key) = &self.security else {
                    return Err(Rejection::Malformed("no key for a keyed channel".into()));
                };
                let plog = prologue(&pre);
                let mut hs = noise_builder(key, &plog)
                    .and_then(|b| b.build_responder().map_err(|e| format!("{e}")))
                    .map_err(Rejection::Malformed)?;
                let mut buf = vec![0u8; MAX_RECORD];
                hs.read_message(&msg1, &mut buf)
                    .map_err(|_| Rejection::WrongKey)?;
                let n = hs
                    .write_message(&[], &mut buf)
                    .map_err(|e| Rejection::Malformed(e.to_string()))?;
                let layer = hs
                    .into_transport_mode()
                    .map_err(|e| Rejection::Malformed(e.to_string()))?;
                self.layer = Some(RecordLayer::new(layer));
                self.stage = Stage::Attach;
                Ok(Step::Send(frame(&buf[..n])))
            }
            Stage::Attach => {
                let Some(body) = self.take_frame() else {
                    return Ok(Step::NeedMore);
                };
                let plain = match self.layer.as_mut() {
                    Some(layer) => {
                        let mut out = vec![0u8; body.len()];
                        let n = layer
                            .open(&body, &mut out)
                            .map_err(|_| Rejection::Unauthenticated)?;
                        out.truncate(n);
                        out
                    }
                    None => body,
                };
                let (attach, key) = messages::decode_attach(&plain)?;
                if !self.input.is_empty() {
                    return Err(Rejection::Malformed(
                        "data after the attach request before the verdict".into(),
                    ));
                }
                self.peer_beat_key = Some(key);
                self.stage = Stage::Judging;
                Ok(Step::Attach(attach))
            }
            Stage::Judging => Ok(Step::NeedMore),
        }
    }

    /// The verdict on the attach request: the bytes to send, and the
    /// session if it was accepted.
    pub fn answer(mut self, verdict: &Verdict) -> Result<(Vec<u8>, Option<Session>), Rejection> {
        if !matches!(self.stage, Stage::Judging) {
            return Err(Rejection::Malformed(
                "a verdict before an attach request".into(),
            ));
        }
        let ours = BeatKey::generate().map_err(|e| Rejection::Io(e.to_string()))?;
        let plain = messages::encode_verdict(verdict, ours.raw());
        let bytes = match self.layer.as_mut() {
            Some(layer) => {
                let mut sealed = vec![0u8; RecordLayer::sealed_len(plain.len())];
                let n = layer
                    .seal(&plain, &mut sealed)
                    .map_err(|e| Rejection::Io(e.to_string()))?;
                sealed.truncate(n);
                sealed
            }
            None => frame(&plain),
        };
        if *verdict != Verdict::Accepted {
            return Ok((bytes, None));
        }
        let beats = match (self.layer.is_some(), self.peer_beat_key) {
            (true, Some(peer)) => Some(BeatKeys {
                ours,
                peers: BeatKey::from_bytes(peer),
            }),
            _ => None,
        };
        let session = Session {
            records: self.layer.take(),
            beats,
        };
        Ok((bytes, Some(session)))
    }
}
