//! The join stream's byte-level helpers: a writer, a bounds-checked reader
//! (every read says what it wanted when the bytes run out), and the framing
//! of one message (`kind u8, reserved [u8; 3], len u32, body`). The stream
//! is untrusted input on the joiner: nothing here panics on any bytes, and
//! a length is checked against its limit before anything is allocated.

use std::io::{Read, Write};

use super::SnapshotError;

/// Largest message body (a `Pages` message of 1,024 pages is 4 MiB + 16).
pub const MAX_BODY: usize = (4 << 20) + 64;
/// Bytes of a message's frame before its body.
pub const FRAME_LEN: usize = 8;

/// Message kinds (docs/join.md, "The join stream").
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const PAGES: u8 = 2;
    pub const ROUND: u8 = 3;
    pub const STATE: u8 = 4;
    pub const DONE: u8 = 5;
    pub const ABORT: u8 = 6;
    /// The joiner's answer to a `Round` (the one message going back).
    pub const APPLIED: u8 = 7;
}

/// Little-endian writer into a growing buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
}

/// Little-endian reader over untrusted bytes.
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the message in errors.
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, at: 0, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(SnapshotError::Short {
                what: self.what,
                at: self.at,
                len: self.b.len(),
            }),
        }
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, SnapshotError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A field that must be zero (reserved in this version).
    pub fn reserved(&mut self, n: usize) -> Result<(), SnapshotError> {
        let what = self.what;
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(SnapshotError::Bad {
                what,
                why: "a reserved field is not zero".into(),
            });
        }
        Ok(())
    }
    /// Every byte must have been read: a longer message is not this version's.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(SnapshotError::Bad {
                what: self.what,
                why: format!("{} bytes left over", self.b.len() - self.at),
            })
        }
    }
}

/// One message's frame: kind, 3 zero bytes, body length.
pub fn frame(kind: u8, body_len: usize) -> Result<[u8; FRAME_LEN], SnapshotError> {
    let len = u32::try_from(body_len)
        .ok()
        .filter(|l| (*l as usize) <= MAX_BODY)
        .ok_or(SnapshotError::TooLong {
            len: body_len as u64,
            max: MAX_BODY as u64,
        })?;
    let mut f = [0u8; FRAME_LEN];
    f[0] = kind;
    f[4..8].copy_from_slice(&len.to_le_bytes());
    Ok(f)
}

/// Checks a received frame; returns (kind, body length).
pub fn parse_frame(f: &[u8; FRAME_LEN]) -> Result<(u8, usize), SnapshotError> {
    if f[1..4] != [0, 0, 0] {
        return Err(SnapshotError::Bad {
            what: "message frame",
            why: "reserved bytes are not zero".into(),
        });
    }
    let len = u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as usize;
    if len > MAX_BODY {
        return Err(SnapshotError::TooLong {
            len: len as u64,
            max: MAX_BODY as u64,
        });
    }
    if !(kind::HELLO..=kind::APPLIED).contains(&f[0]) {
        return Err(SnapshotError::Bad {
            what: "message frame",
            why: format!("unknown message kind {}", f[0]),
        });
    }
    Ok((f[0], len))
}

/// Where join messages go: a plain byte stream, or the channel's record
/// layer (`lockstep-ft`'s join transport).
pub trait MessageSink {
    fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError>;

    /// Waits until the joiner says it applied every message up to the end
    /// of pre-copy round `round` (its `Applied`), so that what the pause
    /// sends does not queue behind a backlog. A sink that hears nothing
    /// back (an in-process copy) does not wait.
    fn wait_applied(&mut self, round: u32) -> Result<(), SnapshotError> {
        let _ = round;
        Ok(())
    }
}

/// Where join messages come from.
pub trait MessageSource {
    /// The next message (kind, body), its frame checked.
    fn recv(&mut self) -> Result<(u8, Vec<u8>), SnapshotError>;

    /// Answers the sender (`Applied` after a `Round`); a source that
    /// cannot answer drops it.
    fn reply(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
        let _ = (kind, body);
        Ok(())
    }
}

/// Messages framed on a plain stream (tests, and the `--insecure` channel).
pub struct Plain<T>(pub T);

impl<W: Write> MessageSink for Plain<W> {
    fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
        let f = frame(kind, body.len())?;
        self.0
            .write_all(&f)
            .and_then(|_| self.0.write_all(body))
            .map_err(SnapshotError::Io)
    }
}

impl<R: Read> MessageSource for Plain<R> {
    fn recv(&mut self) -> Result<(u8, Vec<u8>), SnapshotError> {
        let mut f = [0u8; FRAME_LEN];
        self.0.read_exact(&mut f).map_err(SnapshotError::Io)?;
        let (kind, len) = parse_frame(&f)?;
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).map_err(SnapshotError::Io)?;
        Ok((kind, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_never_reads_past_its_bytes() {
        let mut w = Writer::default();
        w.u16(7).u32(9).u64(11);
        let mut r = Reader::new(&w.buf, "test");
        assert_eq!(r.u16().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 9);
        assert!(r.finish().is_err());
        assert_eq!(r.u64().unwrap(), 11);
        assert!(matches!(r.u8(), Err(SnapshotError::Short { .. })));
        r.finish().unwrap();
        assert!(Reader::new(&[1], "t").reserved(1).is_err());
        assert!(Reader::new(&[1], "t").take(usize::MAX).is_err());
    }

    #[test]
    fn frames_are_checked() {
        let f = frame(kind::STATE, 12).unwrap();
        assert_eq!(parse_frame(&f).unwrap(), (kind::STATE, 12));
        assert!(frame(kind::PAGES, MAX_BODY + 1).is_err());
        let mut bad = f;
        bad[0] = 99;
        assert!(parse_frame(&bad).is_err());
        let mut bad = f;
        bad[2] = 1;
        assert!(parse_frame(&bad).is_err());
        let mut bad = f;
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_frame(&bad),
            Err(SnapshotError::TooLong { .. })
        ));
        let mut wire = Vec::new();
        Plain(&mut wire).send(kind::DONE, b"abc").unwrap();
        let (k, body) = Plain(&wire[..]).recv().unwrap();
        assert_eq!((k, &body[..]), (kind::DONE, &b"abc"[..]));
        assert!(Plain(&wire[..9]).recv().is_err());
    }
}
