//! The two ends of one set of log buffers: the producer the vCPU thread
//! appends to and the consumer that ships the log (`buffers.rs` has the
//! design).

use crate::buffers::{BufferError, LogConfig, Shared};
use crate::consumer::LogConsumer;
use crate::producer::LogProducer;

/// Creates a pool of `count` buffers of `size` bytes (rounded up to pages)
/// with default waiting policy; see [`log_buffers_with`].
pub fn log_buffers(count: usize, size: usize) -> Result<(LogProducer, LogConsumer), BufferError> {
    log_buffers_with(&LogConfig::new(count, size))
}

pub fn log_buffers_with(cfg: &LogConfig) -> Result<(LogProducer, LogConsumer), BufferError> {
    let shared = Shared::new(cfg)?;
    let (tx, rx) = rtrb::RingBuffer::new(cfg.ring_slots);
    let producer = LogProducer::new(shared.clone(), tx, cfg);
    let consumer = LogConsumer::new(shared, rx, cfg);
    Ok((producer, consumer))
}
