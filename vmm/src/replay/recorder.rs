//! The recording side: the vCPU thread appends every non-deterministic input
//! and every output's hash to the log, at the exit index where it happens.
//! Entries are encoded once, in place, into the log buffers a consumer
//! thread (file writer or logging channel) sends as they are; appending
//! makes no syscall and no exit (docs/architecture.md, "Threads").

use blkio::{Completion, Request, RequestOp};
use logchan::{EndReason, Entry, ExitKind, LogProducer, OutputKind, ProducerError, RunningHash};

use crate::machine::Digester;

/// How often the recorder writes a state digest.
#[derive(Clone, Copy, Debug)]
pub struct DigestPolicy {
    /// A register digest every this many sync exits (0 = never).
    pub every_syncs: u64,
    /// A guest-memory hash in every this-many-th digest (0 = only at the end).
    pub mem_every_digests: u64,
}

impl Default for DigestPolicy {
    fn default() -> Self {
        // A digest costs one KVM_GET_REGS (~1 µs); a memory hash reads all
        // of guest RAM, so it is rare.
        DigestPolicy {
            every_syncs: 256,
            mem_every_digests: 0,
        }
    }
}

/// The primary's log writer.
pub struct Recorder {
    pub log: LogProducer,
    outputs: RunningHash,
    /// Whether disk read data goes into the log (the paper's default) or the
    /// replayer reads the shared disk itself.
    log_read_data: bool,
    policy: DigestPolicy,
    syncs: u64,
    digests: u64,
}

impl Recorder {
    pub fn new(log: LogProducer, log_read_data: bool, policy: DigestPolicy) -> Self {
        Recorder {
            log,
            outputs: RunningHash::new(),
            log_read_data,
            policy,
            syncs: 0,
            digests: 0,
        }
    }

    /// The log position an output taken now must wait for.
    pub fn seq(&self) -> u64 {
        self.log.seq()
    }

    /// The log buffers' counters: entries and bytes published, full-buffer
    /// stalls.
    pub fn log_stats(&self) -> logchan::LogStats {
        self.log.stats()
    }

    pub fn output_hash(&self) -> u64 {
        self.outputs.value()
    }

    fn output(&mut self, exit: u64, what: OutputKind, bytes: &[u8]) -> Result<u64, ProducerError> {
        let hash = self.outputs.push_output(bytes);
        let entry = Entry::Output {
            what,
            len: bytes.len() as u32,
            hash,
        };
        self.log.append(exit, ExitKind::SyncPort, &entry)
    }

    /// Logs a TX frame's hash; returns its output-rule tag.
    pub fn output_frame(&mut self, exit: u64, frame: &[u8]) -> Result<u64, ProducerError> {
        self.output(exit, OutputKind::NetFrame, frame)
    }

    /// Logs a disk write's hash; returns the request's output-rule tag
    /// (reads and flushes are not outputs and take the current position).
    pub fn output_request(&mut self, exit: u64, req: &Request) -> Result<u64, ProducerError> {
        match &req.op {
            RequestOp::Write { data, .. } => {
                self.output(exit, OutputKind::DiskWrite, data.as_slice())
            }
            _ => Ok(self.log.seq()),
        }
    }

    pub fn net_rx(&mut self, exit: u64, frame: &[u8]) -> Result<(), ProducerError> {
        self.log
            .append(exit, ExitKind::SyncPort, &Entry::NetRx { frame })
            .map(drop)
    }

    /// A keep-alive at the current exit (an idle primary), sent at once.
    pub fn keep_alive(&mut self, exit: u64) -> Result<(), ProducerError> {
        self.log
            .append(exit, ExitKind::SyncPort, &Entry::KeepAlive)
            .map(drop)?;
        self.log.publish()
    }

    /// The guest configuration, first in the stream (exit index 0).
    pub fn boot(&mut self, config: &[u8]) -> Result<(), ProducerError> {
        self.log
            .append(0, ExitKind::None, &Entry::Boot { config })
            .map(drop)?;
        self.log.publish()
    }

    /// A disk completion. Read data goes into the log, or, when the
    /// replayer reads the shared disk itself, only its 8-byte hash so the
    /// replayer can tell when its read returns what the primary read.
    pub fn disk_done(&mut self, exit: u64, c: &Completion) -> Result<(), ProducerError> {
        let hash;
        let data = match (&c.data, self.log_read_data) {
            (_, true) => c.data_bytes(),
            (Some(d), false) => {
                hash = logchan::content_hash(d.as_slice()).to_le_bytes();
                &hash[..]
            }
            (None, false) => &[],
        };
        let entry = Entry::BlkDone {
            id: c.id,
            status: c.status,
            data,
        };
        self.log.append(exit, ExitKind::SyncPort, &entry).map(drop)
    }

    /// The sync call's result: always the last entry of its exit.
    pub fn sync(
        &mut self,
        exit: u64,
        flags: u32,
        deadline_ns: u64,
        events: u32,
        now_ns: u64,
    ) -> Result<(), ProducerError> {
        let entry = Entry::Sync {
            deadline_ns,
            flags,
            events,
            now_ns,
        };
        self.log.append(exit, ExitKind::SyncPort, &entry).map(drop)
    }

    /// After a sync exit: a digest when one is due, then the exit's entries
    /// go to the consumer as one segment.
    pub fn after_sync_exit(
        &mut self,
        exit: u64,
        digester: &mut dyn Digester,
    ) -> Result<(), ProducerError> {
        self.syncs += 1;
        if self.policy.every_syncs > 0 && self.syncs.is_multiple_of(self.policy.every_syncs) {
            self.digests += 1;
            let with_mem = self.policy.mem_every_digests > 0
                && self.digests.is_multiple_of(self.policy.mem_every_digests);
            self.digest(exit, digester, with_mem)?;
        }
        self.log.publish()
    }

    fn digest(
        &mut self,
        exit: u64,
        digester: &mut dyn Digester,
        with_mem: bool,
    ) -> Result<(), ProducerError> {
        let entry = Entry::Digest {
            regs: digester.regs(),
            output_hash: self.outputs.value(),
            mem_hash: if with_mem { digester.mem_hash() } else { 0 },
        };
        self.log.append(exit, ExitKind::SyncPort, &entry).map(drop)
    }

    /// Ends the recording: a final digest with a memory hash, the End entry,
    /// everything published and the producer closed.
    pub fn finish(
        mut self,
        exit: u64,
        reason: EndReason,
        status: i32,
        digester: &mut dyn Digester,
    ) -> Result<u64, ProducerError> {
        self.digest(exit, digester, true)?;
        self.log
            .append(exit, ExitKind::None, &Entry::End { reason, status })?;
        self.log.publish()?;
        self.log.finish()
    }
}
