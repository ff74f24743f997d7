//! The durable log of the key-value store: format, recovery, writer.
//! `docs/guest-services.md` describes the format in prose. The format is a
//! module of its own (`journal_format`) because the store sizes its
//! snapshot with it, and the journal builds on the store.

pub use crate::journal_format as format;
pub mod recovery;
pub mod writer;

#[cfg(test)]
mod tests;

pub use format::{Layout, SECTOR, Superblock};
pub use recovery::{Recovery, RecoveryReport, SUPERBLOCK_READ_SECTORS, Start, Tail};
pub use writer::{Completion, DiskWrite, Journal, JournalError, JournalStats};
