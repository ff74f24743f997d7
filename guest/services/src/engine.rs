//! The engine: the store, its journal and the group-commit rule that ties
//! replies to durability.
//!
//! Every write is applied to the store and appended as a record to the
//! *open batch*. The kernel closes the open batch whenever no disk write is
//! in flight ([`Engine::next_write`]) and reports completion
//! ([`Engine::write_done`]). Every reply — also a read's — is tagged with
//! [`Engine::reply_tag`], the newest batch that contained a write when the
//! reply was generated, and may leave only once
//! [`Engine::durable`] ≥ tag. So no client ever sees data that a crash
//! could take back.
//!
//! Replay equivalence: a record that depends on a key's old value (APPEND,
//! EXPIRE, DEL) is only written while the key is live; otherwise the engine
//! writes an absolute SET. Expired keys therefore never need a record.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::journal::format::{CommitBuilder, Op};
use crate::journal::{Completion, DiskWrite, Journal, JournalError, Layout, RecoveryReport};
use crate::limits::{MAX_SCAN_CURSORS, SWEEP_BUDGET};
use crate::stats::Stats;
use crate::store::Store;

/// How writes are made durable.
#[derive(Debug)]
enum Mode {
    /// No disk: writes live in memory only and replies leave at once.
    Volatile,
    /// The disk is read-only: writes are refused.
    ReadOnly,
    /// The journal.
    Journal(Journal),
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ReadOnly,
    Full,
    Failed,
    /// The data would exceed the guest's memory budget.
    Memory,
}

impl Refusal {
    /// The RESP error line (without CRLF) for this refusal.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "READONLY You can't write against a read only disk.",
            Refusal::Full => {
                "OOM command not allowed when the disk log is full (live data would exceed its limit)."
            }
            Refusal::Failed => {
                "MISCONF The disk log failed. Commands that may modify the data set are disabled."
            }
            Refusal::Memory => "OOM command not allowed when used memory > 'maxmemory'.",
        }
    }
}

/// The durability mode, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityMode {
    Volatile,
    ReadOnly,
    Journal,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    pub store: Store,
    mode: Mode,
    open: CommitBuilder,
    /// Id of the open batch.
    open_batch: u64,
    /// Newest batch that holds a write: the tag of a reply made now.
    last_write_batch: u64,
    /// Every batch up to this one is durable.
    durable: u64,
    /// Bytes of the disk write handed out and not yet completed.
    inflight: Option<usize>,
    /// A write the journal asked for next (compaction's second step).
    queued: Option<DiskWrite>,
    now_ns: u64,
    boot_ns: u64,
    pub stats: Stats,
    /// What recovery found at boot, if there was a log.
    pub recovery: Option<RecoveryReport>,
    scan_cursors: BTreeMap<u64, Vec<u8>>,
    next_cursor: u64,
    next_client_id: u64,
    /// Most live data (snapshot bytes) memory allows; 0 = no limit.
    memory_limit: u64,
}

impl Engine {
    fn with_mode(store: Store, mode: Mode, now_ns: u64) -> Self {
        Engine {
            store,
            mode,
            open: CommitBuilder::new(),
            open_batch: 1,
            last_write_batch: 0,
            durable: 0,
            inflight: None,
            queued: None,
            now_ns,
            boot_ns: now_ns,
            stats: Stats::default(),
            recovery: None,
            scan_cursors: BTreeMap::new(),
            next_cursor: 1,
            next_client_id: 1,
            memory_limit: 0,
        }
    }

    /// Caps the live data (as counted for snapshots) so the store cannot
    /// exhaust the guest's memory; writes past it get `-OOM`. 0 = no cap.
    pub fn set_memory_limit(&mut self, bytes: u64) {
        self.memory_limit = bytes;
    }

    /// The memory cap (0 = none).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// An engine without a disk (nothing survives a restart).
    pub fn volatile(now_ns: u64) -> Self {
        Self::with_mode(Store::new(), Mode::Volatile, now_ns)
    }

    /// An engine over a read-only disk: `store` as recovered, writes refused.
    pub fn read_only(store: Store, now_ns: u64) -> Self {
        Self::with_mode(store, Mode::ReadOnly, now_ns)
    }

    /// An engine writing to `journal` (fresh from format or recovery).
    pub fn durable_with(store: Store, journal: Journal, now_ns: u64) -> Self {
        Self::with_mode(store, Mode::Journal(journal), now_ns)
    }

    /// An engine over a blank disk: formats it with `layout`. The format
    /// write is the first [`next_write`](Self::next_write); serve requests
    /// only once it has completed (`!has_pending_writes()`).
    pub fn format(layout: Layout, now_ns: u64) -> Self {
        let (j, w) = Journal::format(layout);
        let mut e = Self::with_mode(Store::new(), Mode::Journal(j), now_ns);
        e.queued = Some(w);
        e
    }

    /// How writes are made durable.
    pub fn durability(&self) -> DurabilityMode {
        match self.mode {
            Mode::Volatile => DurabilityMode::Volatile,
            Mode::ReadOnly => DurabilityMode::ReadOnly,
            Mode::Journal(_) => DurabilityMode::Journal,
        }
    }

    /// The journal, if writes go to one.
    pub fn journal(&self) -> Option<&Journal> {
        match &self.mode {
            Mode::Journal(j) => Some(j),
            _ => None,
        }
    }

    // -- time -------------------------------------------------------------

    /// Advances the clock (virtual ns since the Unix epoch; never goes back)
    /// and runs a bounded expiry sweep.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ms();
        self.store.sweep(now, SWEEP_BUDGET);
    }

    /// Current time in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ns / 1_000_000
    }

    /// Current time in Unix nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Milliseconds since the engine started.
    pub fn uptime_ms(&self) -> u64 {
        (self.now_ns - self.boot_ns) / 1_000_000
    }

    // -- durability -------------------------------------------------------

    /// The tag for a reply generated now.
    pub fn reply_tag(&self) -> u64 {
        self.last_write_batch
    }

    /// Every batch up to this one is durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Id of the open batch (the batch a write made now belongs to).
    pub fn open_batch(&self) -> u64 {
        self.open_batch
    }

    /// Whether writes wait to be committed or are being committed.
    pub fn has_pending_writes(&self) -> bool {
        self.inflight.is_some() || self.queued.is_some() || self.open.count() > 0
    }

    /// Whether a disk write is in flight.
    pub fn write_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether the journal has failed (a disk write returned an error).
    pub fn failed(&self) -> bool {
        matches!(&self.mode, Mode::Journal(j) if j.failed())
    }

    /// The next disk write, if none is in flight and there is something to
    /// write: closes the open batch (group commit).
    pub fn next_write(&mut self) -> Option<DiskWrite> {
        if self.inflight.is_some() {
            return None;
        }
        if let Some(w) = self.queued.take() {
            self.inflight = Some(w.data.len());
            return Some(w);
        }
        if self.open.count() == 0 {
            return None;
        }
        let batch = self.open_batch;
        self.open_batch += 1;
        let records = core::mem::take(&mut self.open);
        let now = self.now_ms();
        let Mode::Journal(j) = &mut self.mode else {
            return None;
        };
        match j.commit(batch, records, &self.store, now) {
            Ok(w) => {
                self.inflight = Some(w.data.len());
                Some(w)
            }
            // The batch can be made durable neither now nor later: the
            // journal is marked failed and the kernel stops (fail-stop).
            Err(JournalError::Full | JournalError::Failed) => {
                let _ = j.write_done(false, 0);
                None
            }
        }
    }

    /// The write handed out by [`next_write`](Self::next_write) completed.
    pub fn write_done(&mut self, ok: bool) {
        let Some(bytes) = self.inflight.take() else {
            return;
        };
        let Mode::Journal(j) = &mut self.mode else {
            return;
        };
        match j.write_done(ok, bytes) {
            Ok(Completion::Durable(b)) => self.durable = self.durable.max(b),
            Ok(Completion::Next(w)) => self.queued = Some(w),
            Ok(Completion::Nothing) | Err(_) => {}
        }
    }

    // -- writes -----------------------------------------------------------

    /// Whether a write that grows the live data by `grow` bytes may run.
    pub fn admit(&mut self, grow: u64) -> Result<(), Refusal> {
        let after = self.store.snapshot_bytes() + grow;
        let r = match &self.mode {
            _ if self.memory_limit != 0 && grow > 0 && after > self.memory_limit => {
                Err(Refusal::Memory)
            }
            Mode::Volatile => Ok(()),
            Mode::ReadOnly => Err(Refusal::ReadOnly),
            Mode::Journal(j) if j.failed() => Err(Refusal::Failed),
            Mode::Journal(j) => {
                if after <= j.live_limit() {
                    Ok(())
                } else {
                    Err(Refusal::Full)
                }
            }
        };
        if r.is_err() {
            self.stats.refused_writes += 1;
        }
        r
    }

    /// Whether writes that do not grow the data (DEL, EXPIRE) may run.
    pub fn admit_shrink(&mut self) -> Result<(), Refusal> {
        self.admit(0).or_else(|e| match e {
            Refusal::Full | Refusal::Memory => Ok(()),
            e => Err(e),
        })
    }

    fn log(&mut self, op: &Op<'_>) {
        if let Mode::Journal(j) = &self.mode {
            self.open.push(j.record_generation(), op);
            self.last_write_batch = self.open_batch;
        }
    }

    /// Sets `key` (absolute).
    pub fn set(&mut self, key: &[u8], value: Vec<u8>, expire_at_ms: u64) {
        self.log(&Op::Set {
            key,
            value: &value,
            expire_at_ms,
        });
        self.store.set(key, value, expire_at_ms);
    }

    /// Deletes `key` if it is live; returns whether it was.
    pub fn del(&mut self, key: &[u8]) -> bool {
        let now = self.now_ms();
        if !self.store.contains(key, now) {
            return false;
        }
        self.log(&Op::Del { key });
        self.store.remove(key)
    }

    /// Appends to `key` (creating it); returns the new length.
    pub fn append(&mut self, key: &[u8], data: &[u8]) -> usize {
        let now = self.now_ms();
        if self.store.contains(key, now) {
            self.log(&Op::Append { key, data });
            self.store.append(key, data)
        } else {
            self.set(key, data.to_vec(), 0);
            data.len()
        }
    }

    /// Sets the expiry of a live key (0 = persist); returns whether it was live.
    pub fn expire(&mut self, key: &[u8], expire_at_ms: u64) -> bool {
        let now = self.now_ms();
        if !self.store.contains(key, now) {
            return false;
        }
        self.log(&Op::Expire { key, expire_at_ms });
        self.store.set_expiry(key, expire_at_ms)
    }

    /// Removes every key.
    pub fn flush(&mut self) {
        self.log(&Op::Flush);
        self.store.clear();
    }

    // -- reads ------------------------------------------------------------

    /// The live value of `key`, counting a hit or a miss.
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        let now = self.now_ms();
        match self.store.get(key, now) {
            Some(e) => {
                self.stats.keyspace_hits += 1;
                Some(&e.value)
            }
            None => {
                self.stats.keyspace_misses += 1;
                None
            }
        }
    }

    // -- bookkeeping --------------------------------------------------------

    /// A fresh client id.
    pub fn new_client_id(&mut self) -> u64 {
        let id = self.next_client_id;
        self.next_client_id += 1;
        id
    }

    /// Remembers where a SCAN stopped; returns the cursor for it.
    pub fn save_cursor(&mut self, last_key: Vec<u8>) -> u64 {
        if self.scan_cursors.len() >= MAX_SCAN_CURSORS {
            self.scan_cursors.pop_first();
        }
        let id = self.next_cursor;
        self.next_cursor += 1;
        self.scan_cursors.insert(id, last_key);
        id
    }

    /// Where SCAN cursor `id` stopped, if it is remembered.
    pub fn cursor(&self, id: u64) -> Option<&[u8]> {
        self.scan_cursors.get(&id).map(|k| &k[..])
    }
}
