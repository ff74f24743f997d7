//! The join stream on the logging channel's connection (docs/join.md): the
//! messages of `lockstep_vmm::snapshot` sealed in the session's records
//! (AES-256-GCM, the same keys and counters the log stream then goes on
//! with), or framed in the clear on an `--insecure` channel. Both ends use
//! one type: the primary sends and hears the joiner's `Applied` answers,
//! the joiner receives and answers. The reader takes exactly one record at
//! a time from the socket, so not a byte of the log stream (or of the acks
//! going back) that follows the join stream is consumed here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lockstep_vmm::snapshot::SnapshotError;
use lockstep_vmm::snapshot::wire::{
    FRAME_LEN, MessageSink, MessageSource, Plain, Reader, frame, kind, parse_frame,
};
use logchan::secure::RecordLayer;
use logchan::secure::record::{MAX_RECORD, RECORD_PREFIX, TAG_LEN};

/// How long the primary waits for the joiner to apply a round: a joiner
/// that cannot keep up fails the copy rather than stretch it (the guest
/// runs meanwhile, so this is no pause).
const APPLIED_TIMEOUT: Duration = Duration::from_secs(20);

fn record_error(e: logchan::secure::RecordError) -> SnapshotError {
    SnapshotError::Protocol(format!("join stream record: {e}"))
}

/// One end of the join stream on the channel's connection.
pub struct JoinChannel<'a> {
    stream: &'a TcpStream,
    records: Option<&'a mut RecordLayer>,
    /// Plaintext opened and not yet handed out.
    plain: Vec<u8>,
}

impl<'a> JoinChannel<'a> {
    pub fn new(stream: &'a TcpStream, records: Option<&'a mut RecordLayer>) -> Self {
        JoinChannel {
            stream,
            records,
            plain: Vec::new(),
        }
    }

    /// Whether plaintext is left over (after `Done` there must be none).
    pub fn has_leftover(&self) -> bool {
        !self.plain.is_empty()
    }

    /// Reads and opens exactly one record.
    fn fill(&mut self) -> Result<(), SnapshotError> {
        let Some(records) = self.records.as_deref_mut() else {
            return Err(SnapshotError::Protocol("no record layer".into()));
        };
        let mut stream = self.stream;
        let mut prefix = [0u8; RECORD_PREFIX];
        stream.read_exact(&mut prefix).map_err(SnapshotError::Io)?;
        let len = usize::from(u16::from_le_bytes(prefix));
        if !(TAG_LEN + 1..=MAX_RECORD).contains(&len) {
            return Err(SnapshotError::Protocol(format!(
                "a join stream record of {len} bytes"
            )));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).map_err(SnapshotError::Io)?;
        let mut out = vec![0u8; len];
        let n = records.open(&body, &mut out).map_err(record_error)?;
        self.plain.extend_from_slice(&out[..n]);
        Ok(())
    }

    fn next_message(&mut self) -> Result<(u8, Vec<u8>), SnapshotError> {
        if self.records.is_none() {
            return Plain(self.stream).recv();
        }
        while self.plain.len() < FRAME_LEN {
            self.fill()?;
        }
        let mut f = [0u8; FRAME_LEN];
        f.copy_from_slice(&self.plain[..FRAME_LEN]);
        // The frame's length is checked (≤ 4 MiB) before any wait.
        let (kind, len) = parse_frame(&f)?;
        while self.plain.len() < FRAME_LEN + len {
            self.fill()?;
        }
        let body = self.plain[FRAME_LEN..FRAME_LEN + len].to_vec();
        self.plain.drain(..FRAME_LEN + len);
        Ok((kind, body))
    }

    fn send_message(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
        let Some(records) = self.records.as_deref_mut() else {
            return Plain(self.stream).send(kind, body);
        };
        let mut plain = Vec::with_capacity(FRAME_LEN + body.len());
        plain.extend_from_slice(&frame(kind, body.len())?);
        plain.extend_from_slice(body);
        let mut sealed = vec![0u8; RecordLayer::sealed_len(plain.len())];
        let n = records.seal(&plain, &mut sealed).map_err(record_error)?;
        let mut stream = self.stream;
        stream.write_all(&sealed[..n]).map_err(SnapshotError::Io)
    }
}

impl MessageSink for JoinChannel<'_> {
    fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
        self.send_message(kind, body)
    }

    fn wait_applied(&mut self, round: u32) -> Result<(), SnapshotError> {
        let _ = self.stream.set_read_timeout(Some(APPLIED_TIMEOUT));
        let answer = self.next_message();
        let _ = self.stream.set_read_timeout(None);
        let (k, body) = answer.map_err(|e| match e {
            SnapshotError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                SnapshotError::Protocol(format!(
                    "the joiner did not apply round {round} within {APPLIED_TIMEOUT:?}"
                ))
            }
            e => e,
        })?;
        if k != kind::APPLIED {
            return Err(SnapshotError::Protocol(format!(
                "the joiner answered round {round} with message kind {k}"
            )));
        }
        let mut r = Reader::new(&body, "Applied");
        let (applied, _) = (r.u32()?, r.reserved(4)?);
        r.finish()?;
        if applied != round {
            return Err(SnapshotError::Protocol(format!(
                "the joiner applied round {applied}, not {round}"
            )));
        }
        Ok(())
    }
}

impl MessageSource for JoinChannel<'_> {
    fn recv(&mut self) -> Result<(u8, Vec<u8>), SnapshotError> {
        // Tests: a joiner that dies in the middle of a copy.
        fail::fail_point!("join-recv");
        self.next_message()
    }

    fn reply(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
        self.send_message(kind, body)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use lockstep_vmm::snapshot::wire::Writer;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        (a, b)
    }

    fn applied(round: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(round).u32(0);
        w.buf
    }

    #[test]
    fn the_primary_takes_only_the_answer_to_the_round_it_sent() {
        let (primary, joiner) = pair();
        let mut p = JoinChannel::new(&primary, None);
        let mut j = JoinChannel::new(&joiner, None);
        j.reply(kind::APPLIED, &applied(1)).expect("reply");
        p.wait_applied(1).expect("round 1 applied");
        // Another round's answer, another message, a short body: refused.
        j.reply(kind::APPLIED, &applied(3)).expect("reply");
        assert!(p.wait_applied(2).is_err());
        j.reply(kind::ROUND, &applied(2)).expect("reply");
        assert!(p.wait_applied(2).is_err());
        j.reply(kind::APPLIED, &[0u8; 4]).expect("reply");
        assert!(p.wait_applied(2).is_err());
    }
}
