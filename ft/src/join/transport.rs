//! The join stream on the logging channel's connection (docs/join.md): the
//! messages of `lockstep_vmm::snapshot` sealed in the session's records
//! (AES-256-GCM, the same keys and counters the log stream then goes on
//! with), or framed in the clear on an `--insecure` channel. The reader
//! takes exactly one record at a time from the socket, so not a byte of the
//! log stream that follows the join stream is consumed here.

use std::io::{Read, Write};
use std::net::TcpStream;

use lockstep_vmm::snapshot::SnapshotError;
use lockstep_vmm::snapshot::wire::{
    FRAME_LEN, MessageSink, MessageSource, Plain, frame, parse_frame,
};
use logchan::secure::RecordLayer;
use logchan::secure::record::{MAX_RECORD, RECORD_PREFIX, TAG_LEN};

fn record_error(e: logchan::secure::RecordError) -> SnapshotError {
    SnapshotError::Protocol(format!("join stream record: {e}"))
}

/// Sends join messages on the channel.
pub struct ChannelSink<'a> {
    pub stream: &'a TcpStream,
    pub records: Option<&'a mut RecordLayer>,
}

impl MessageSink for ChannelSink<'_> {
    fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), SnapshotError> {
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

/// Receives join messages from the channel.
pub struct ChannelSource<'a> {
    pub stream: &'a TcpStream,
    pub records: Option<&'a mut RecordLayer>,
    /// Plaintext opened and not yet handed out.
    plain: Vec<u8>,
}

impl<'a> ChannelSource<'a> {
    pub fn new(stream: &'a TcpStream, records: Option<&'a mut RecordLayer>) -> Self {
        ChannelSource {
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
    fn fill(&mut self, records: &mut RecordLayer) -> Result<(), SnapshotError> {
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
}

impl MessageSource for ChannelSource<'_> {
    fn recv(&mut self) -> Result<(u8, Vec<u8>), SnapshotError> {
        // Tests: a joiner that dies in the middle of a copy.
        fail::fail_point!("join-recv");
        let Some(records) = self.records.take() else {
            return Plain(self.stream).recv();
        };
        let result = (|| {
            while self.plain.len() < FRAME_LEN {
                self.fill(records)?;
            }
            let mut f = [0u8; FRAME_LEN];
            f.copy_from_slice(&self.plain[..FRAME_LEN]);
            // The frame's length is checked (≤ 4 MiB) before any wait.
            let (kind, len) = parse_frame(&f)?;
            while self.plain.len() < FRAME_LEN + len {
                self.fill(records)?;
            }
            let body = self.plain[FRAME_LEN..FRAME_LEN + len].to_vec();
            self.plain.drain(..FRAME_LEN + len);
            Ok((kind, body))
        })();
        self.records = Some(records);
        result
    }
}
