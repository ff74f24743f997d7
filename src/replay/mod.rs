//! Deterministic record and replay (DESIGN.md §1–2): the recorder on the
//! primary, the replayer on a backup or in `lockstep replay`, and the state
//! digests both compare.

pub mod backup_disk;
pub mod cursor;
pub mod digest;
pub mod recorder;
pub mod replayer;
