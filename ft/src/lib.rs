//! The fault-tolerant pair (the paper's §2; docs/failover.md): a primary
//! that streams its log to a backup and holds every output until the backup
//! has the log up to it, and a backup that replays in lockstep and takes
//! over when the primary is gone. Built on `lockstep-vmm`, which knows
//! nothing of any of this beyond the `IoPlane` trait.
//!
//! One module per mechanism of the paper (docs/architecture.md maps them):
//! * [`output_rule`]: an output leaves only once the backup has acked the
//!   log entry that recorded it.
//! * [`failure`]: heartbeats and channel traffic → the peer's verdict.
//! * [`admission`]: which primary a backup follows (checked before it
//!   builds anything).
//! * [`arbiter`]: the atomic test-and-set that prevents split brain.
//! * [`etcd`]: the client of etcd's JSON gateway the arbiter and the
//!   spares registry share.
//! * [`membership`]: where a primary alone finds its next backup (a list,
//!   or spares registered in etcd).
//! * [`go_live`]: the backup's hand-over from replay to serving.
//! * [`plane`]: the primary's and the backup's engines on the I/O thread.
//! * [`backup_io`]: the backup's sync calls: replay, then live.
//! * [`channel_source`]: the received log as the replay's input.
//! * [`replay_buffer`]: the backup's bounded buffer and its backpressure.
//! * [`join`]: restart redundancy — a new backup joins a running primary
//!   by live clone.
//! * [`operator`]: the operator's actions (`lockstep ft on|off|…`) on the
//!   management endpoint.
//! * [`supervisor`]: the main thread acting on verdicts through the arbiter.
//! * [`throttle`]: the controller that slows the primary when its backup
//!   lags ([`lag`] measures the lag).
//! * [`shared`]: what the FT threads share.

pub mod admission;
pub mod arbiter;
pub mod backup_io;
pub mod channel_source;
pub mod etcd;
pub mod failure;
pub mod go_live;
pub mod join;
pub mod lag;
pub mod membership;
pub mod operator;
pub mod output_rule;
pub mod plane;
pub mod replay_buffer;
pub mod shared;
pub mod supervisor;
pub mod throttle;
