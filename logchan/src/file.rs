//! Logs on disk: [`FileSink`] drains a [`LogConsumer`] into a file on its own
//! thread (`lockstep record --log FILE`); [`LogFileReader`] maps a log for
//! replay and yields its entries in order without copying them.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::consumer::{LogConsumer, ReleaseError, Segment};
use crate::decode::{DecodeError, StreamState};
use crate::entry::Record;
use crate::header::{HeaderError, STREAM_HEADER_LEN, StreamHeader};

/// Segments gathered into one `writev` (well under IOV_MAX).
const MAX_BATCH_SEGMENTS: usize = 64;
/// Bytes gathered into one `writev`.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// How long the sink waits for a segment before re-checking for the end.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot create log file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the log file")]
    Write(#[source] io::Error),
    #[error("cannot sync the log file")]
    Sync(#[source] io::Error),
    #[error("cannot start the log file thread")]
    Spawn(#[source] io::Error),
    #[error("log file thread panicked")]
    Panicked,
    #[error("log segment bookkeeping failed")]
    Release(#[from] ReleaseError),
}

/// What a finished [`FileSink`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Bytes written, stream header included.
    pub bytes: u64,
    pub segments: u64,
    /// `writev` calls made for entries.
    pub writes: u64,
    /// Seq of the last entry written (first_seq - 1 if none).
    pub last_seq: u64,
}

/// A thread that writes the stream header, then every published segment, to
/// a file, in large vectored writes, and fsyncs when the producer finishes.
#[derive(Debug)]
pub struct FileSink {
    thread: JoinHandle<Result<SinkReport, SinkError>>,
    written: Arc<AtomicU64>,
}

impl FileSink {
    /// Creates (truncates) `path` and starts the thread.
    pub fn create(
        path: &Path,
        header: &StreamHeader,
        consumer: LogConsumer,
    ) -> Result<Self, SinkError> {
        let file = File::create(path).map_err(|source| SinkError::Create {
            path: path.to_owned(),
            source,
        })?;
        Self::spawn(file, header, consumer)
    }

    /// Starts the thread on an open file (written from its current position).
    pub fn spawn(
        file: File,
        header: &StreamHeader,
        consumer: LogConsumer,
    ) -> Result<Self, SinkError> {
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let header = header.encode();
        let thread = std::thread::Builder::new()
            .name("logchan-file".into())
            .spawn(move || run_sink(file, &header, &consumer, &w))
            .map_err(SinkError::Spawn)?;
        Ok(Self { thread, written })
    }

    /// Bytes written so far (stream header included).
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits until the producer has finished and everything is on disk.
    pub fn finish(self) -> Result<SinkReport, SinkError> {
        self.thread.join().map_err(|_| SinkError::Panicked)?
    }
}

fn run_sink(
    mut file: File,
    header: &[u8; STREAM_HEADER_LEN],
    consumer: &LogConsumer,
    written: &AtomicU64,
) -> Result<SinkReport, SinkError> {
    file.write_all(header).map_err(SinkError::Write)?;
    let mut report = SinkReport {
        bytes: STREAM_HEADER_LEN as u64,
        ..SinkReport::default()
    };
    written.store(report.bytes, Ordering::Relaxed);
    let mut batch: Vec<Segment<'_>> = Vec::with_capacity(MAX_BATCH_SEGMENTS);
    loop {
        let Some(first) = consumer.next_segment(POLL) else {
            if consumer.is_finished() {
                break;
            }
            continue;
        };
        let mut bytes = first.len();
        batch.push(first);
        while batch.len() < MAX_BATCH_SEGMENTS && bytes < MAX_BATCH_BYTES {
            match consumer.try_next_segment() {
                Some(s) => {
                    bytes += s.len();
                    batch.push(s);
                }
                None => break,
            }
        }
        write_segments(&mut file, &batch)?;
        report.writes += 1;
        report.segments += batch.len() as u64;
        report.bytes += bytes as u64;
        for seg in batch.drain(..) {
            report.last_seq = seg.last_seq();
            consumer.release(seg)?;
        }
        written.store(report.bytes, Ordering::Relaxed);
    }
    file.sync_all().map_err(SinkError::Sync)?;
    Ok(report)
}

/// One `writev` per batch, repeated only for short writes.
fn write_segments(file: &mut File, batch: &[Segment<'_>]) -> Result<(), SinkError> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|s| IoSlice::new(s.bytes())).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(SinkError::Write(io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SinkError::Write(e)),
        }
    }
    Ok(())
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read log file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad log stream header")]
    Header(#[from] HeaderError),
}

/// A read-only private mapping of a whole file.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live PROT_READ mapping owned by self.
        // (Truncating the file under a live mapping would make access fault:
        // logs are replayed after recording, not while another process
        // shrinks them.)
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the mapping is read-only memory, owned by this value alone.
unsafe impl Send for Mapping {}
// SAFETY: only shared reads are possible.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map_file`; slices
        // into it borrow the reader and so cannot outlive this.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[derive(Debug)]
enum Backing {
    Mapped(Mapping),
    Owned(Vec<u8>),
}

/// A log file opened for replay.
#[derive(Debug)]
pub struct LogFileReader {
    data: Backing,
    header: StreamHeader,
}

impl LogFileReader {
    /// Maps `path` (or reads it, when it cannot be mapped: empty files,
    /// pipes) and checks the stream header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let io_err = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let data = match map_file(&file, meta.len()) {
            Some(m) => Backing::Mapped(m),
            None => Backing::Owned(std::fs::read(path).map_err(io_err)?),
        };
        Self::from_backing(data)
    }

    /// A reader over bytes already in memory (tests, logs received whole).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ReadError> {
        Self::from_backing(Backing::Owned(bytes))
    }

    fn from_backing(data: Backing) -> Result<Self, ReadError> {
        let bytes = match &data {
            Backing::Mapped(m) => m.bytes(),
            Backing::Owned(v) => v,
        };
        let header = StreamHeader::decode(bytes)?;
        Ok(Self { data, header })
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Backing::Mapped(m) => m.bytes(),
            Backing::Owned(v) => v,
        }
    }

    /// The entries in order, borrowing the file's bytes. Every whole, good
    /// entry comes first; then at most one error, after which the iterator
    /// ends: [`DecodeError::Incomplete`] for a truncated tail ("log ends at
    /// offset X after seq N"), [`DecodeError::Corrupt`] for a damaged entry
    /// (nothing after it is yielded).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            data: self.bytes(),
            pos: STREAM_HEADER_LEN,
            state: StreamState::new(self.header.first_seq, STREAM_HEADER_LEN as u64),
            done: false,
        }
    }
}

fn map_file(file: &File, len: u64) -> Option<Mapping> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
    // SAFETY: maps `len` bytes of an open file read-only and private; the
    // result is checked before use and owned by the returned Mapping.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    let ptr = NonNull::new(ptr.cast::<u8>())?;
    Some(Mapping { ptr, len })
}

/// Iterator over a log file's entries (see [`LogFileReader::entries`]).
#[derive(Debug)]
pub struct Entries<'r> {
    data: &'r [u8],
    pos: usize,
    state: StreamState,
    done: bool,
}

impl<'r> Entries<'r> {
    /// Seq of the last entry yielded (first_seq - 1 before any).
    pub fn last_seq(&self) -> u64 {
        self.state.last_seq()
    }

    /// File offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.state.offset()
    }
}

impl<'r> Iterator for Entries<'r> {
    type Item = Result<Record<'r>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.data.get(self.pos..).unwrap_or_default();
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        match self.state.decode(rest) {
            Ok((rec, used)) => {
                self.pos += used;
                Some(Ok(rec))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Entries<'_> {}
