//! Deterministic record and replay (the paper's §2.1; the contract is in
//! docs/record-replay.md): the recorder on the primary, the replayer on a
//! backup or in `lockstep replay`, the cursor that reads a log stream from a
//! file or the logging channel, and the backup's own disk reads. The state
//! digests both compare are the machine's (`machine::digest`).

pub mod backup_disk;
pub mod cursor;
pub mod live_parts;
pub mod recorder;
pub mod replayer;
