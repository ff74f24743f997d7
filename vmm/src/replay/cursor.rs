//! Reading a log stream entry by entry, from a file or from the logging
//! channel: chunks of bytes in, decoded and checked entries out, each
//! applied at its exit index.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use blkio::{AlignedBuf, Completion};
use logchan::{
    DIGEST_REGS, EndReason, Entry, ExitKind, OutputKind, Record, StreamDecoder, StreamError,
    StreamHeader, StreamItem,
};

/// A source of stream bytes: a file read in chunks, or what the logging
/// channel received. Chunks may split entries anywhere.
pub trait ChunkSource: Send {
    /// The next bytes of the stream; `None` at its end. May block (a backup
    /// waiting for its primary).
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SourceError>;
}

/// Why no more entries can be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading the log")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the log stream has no header")]
    NoHeader,
    #[error("the VMM is stopping")]
    Stopping,
}

/// A log file read in 1 MiB chunks.
pub struct FileChunks {
    file: File,
}

impl FileChunks {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(FileChunks {
            file: File::open(path)?,
        })
    }
}

impl ChunkSource for FileChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        let mut buf = vec![0u8; 1 << 20];
        let n = self.file.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

/// An entry copied out of the stream, ready to apply.
#[derive(Clone, Debug)]
pub enum Logged {
    Sync {
        flags: u32,
        events: u32,
        now_ns: u64,
        deadline_ns: u64,
    },
    NetRx(Vec<u8>),
    BlkDone(Completion),
    Output {
        what: OutputKind,
        len: u32,
        hash: u64,
    },
    Digest {
        regs: [u64; DIGEST_REGS],
        output_hash: u64,
        mem_hash: u64,
    },
    KeepAlive,
    End {
        reason: EndReason,
        status: i32,
    },
    Boot(Vec<u8>),
}

/// One logged entry with its place in the stream.
#[derive(Clone, Debug)]
pub struct LoggedEntry {
    pub seq: u64,
    pub exit_index: u64,
    pub exit_kind: ExitKind,
    pub entry: Logged,
}

impl LoggedEntry {
    fn from_record(rec: &Record<'_>) -> Self {
        let entry = match rec.entry {
            Entry::Sync {
                flags,
                events,
                now_ns,
                deadline_ns,
            } => Logged::Sync {
                deadline_ns,
                flags,
                events,
                now_ns,
            },
            Entry::NetRx { frame } => Logged::NetRx(frame.to_vec()),
            Entry::BlkDone { id, status, data } => Logged::BlkDone(Completion {
                id,
                status,
                data: (!data.is_empty()).then(|| AlignedBuf::from_slice(data)),
            }),
            Entry::Output { what, len, hash } => Logged::Output { what, len, hash },
            Entry::Digest {
                regs,
                output_hash,
                mem_hash,
            } => Logged::Digest {
                regs,
                output_hash,
                mem_hash,
            },
            Entry::KeepAlive => Logged::KeepAlive,
            Entry::End { reason, status } => Logged::End { reason, status },
            Entry::Boot { config } => Logged::Boot(config.to_vec()),
        };
        LoggedEntry {
            seq: rec.header.seq,
            exit_index: rec.header.exit_index,
            exit_kind: rec.header.exit_kind,
            entry,
        }
    }
}

/// Where the stream stopped giving entries.
#[derive(Debug, thiserror::Error)]
pub enum LogEnd {
    #[error("the log ends after seq {last_seq} (exit {last_exit})")]
    Clean { last_seq: u64, last_exit: u64 },
    #[error("the log is cut short: {0}")]
    Truncated(StreamError),
    #[error("the log is corrupt: {0}")]
    Corrupt(StreamError),
    #[error(transparent)]
    Source(SourceError),
}

/// Entries of one stream, in order, with one entry of lookahead.
pub struct LogCursor {
    source: Box<dyn ChunkSource>,
    decoder: StreamDecoder,
    queue: VecDeque<LoggedEntry>,
    header: Option<StreamHeader>,
    ended: bool,
    /// A corruption found after some whole entries: reported once they are used.
    pending_error: Option<LogEnd>,
    last_seq: u64,
    last_exit: u64,
    /// Bytes taken from the source so far.
    pub bytes: u64,
    consumed: u64,
}

impl LogCursor {
    /// Reads up to and including the stream header.
    pub fn new(source: Box<dyn ChunkSource>) -> Result<Self, LogEnd> {
        let mut cursor = LogCursor {
            source,
            decoder: StreamDecoder::new(),
            queue: VecDeque::new(),
            header: None,
            ended: false,
            pending_error: None,
            last_seq: 0,
            last_exit: 0,
            bytes: 0,
            consumed: 0,
        };
        while cursor.header.is_none() {
            if !cursor.fill()? {
                return Err(LogEnd::Source(SourceError::NoHeader));
            }
        }
        Ok(cursor)
    }

    pub fn header(&self) -> &StreamHeader {
        // `new` does not return without one.
        self.header.as_ref().expect("header read in new()")
    }

    /// Decodes one more chunk into the queue. False at the clean end.
    fn fill(&mut self) -> Result<bool, LogEnd> {
        if self.ended {
            return Ok(false);
        }
        let chunk = match self.source.next_chunk().map_err(LogEnd::Source)? {
            Some(c) => c,
            None => {
                self.ended = true;
                return match self.decoder.finish() {
                    Ok(()) => Ok(false),
                    Err(e) => Err(LogEnd::Truncated(e)),
                };
            }
        };
        self.bytes += chunk.len() as u64;
        let mut feed = self.decoder.feed(&chunk);
        while let Some(item) = feed.next() {
            match item {
                Ok(StreamItem::Header(h)) => self.header = Some(h),
                Ok(StreamItem::Entry(rec)) => {
                    self.last_seq = rec.header.seq;
                    self.last_exit = rec.header.exit_index;
                    self.queue.push_back(LoggedEntry::from_record(&rec));
                }
                Err(e) => {
                    drop(feed);
                    self.ended = true;
                    // Whole entries before the damage are still applied.
                    if self.queue.is_empty() {
                        return Err(LogEnd::Corrupt(e));
                    }
                    self.pending_error = Some(LogEnd::Corrupt(e));
                    return Ok(true);
                }
            }
        }
        Ok(true)
    }

    /// The next entry without consuming it; `Err` when there is none.
    pub fn peek(&mut self) -> Result<&LoggedEntry, LogEnd> {
        while self.queue.is_empty() {
            if let Some(e) = self.pending_error.take() {
                return Err(e);
            }
            if !self.fill()? {
                return Err(LogEnd::Clean {
                    last_seq: self.last_seq,
                    last_exit: self.last_exit,
                });
            }
        }
        Ok(&self.queue[0])
    }

    /// Consumes the entry `peek` returned.
    pub fn pop(&mut self) -> Option<LoggedEntry> {
        let e = self.queue.pop_front();
        if let Some(e) = &e {
            self.consumed = e.seq;
        }
        e
    }

    /// Seq of the last entry consumed.
    pub fn consumed_seq(&self) -> u64 {
        self.consumed
    }

    /// The stream's first entry, if it is the guest's boot configuration.
    pub fn pop_boot(&mut self) -> Option<Logged> {
        match self.peek() {
            Ok(e) if matches!(e.entry, Logged::Boot(_)) => self.pop().map(|e| e.entry),
            _ => None,
        }
    }
}
