//! `NetError`: what the virtio-net device model reports to the VMM.
//!
//! Guest mistakes are not errors here: a malformed chain is returned to the
//! guest (used, length 0) and counted. These are VMM-side conditions.

/// Errors of the virtio-net device model.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `activate` on an active device.
    #[error("virtio-net is already active")]
    AlreadyActive,
    /// The transport activated a queue the driver did not mark ready.
    #[error("virtio-net {0} queue is not ready")]
    QueueNotReady(&'static str),
    /// A queue's rings are outside guest memory or misaligned.
    #[error("virtio-net {0} queue rings are outside guest memory")]
    QueueInvalid(&'static str),
    /// A call that needs an active device.
    #[error("virtio-net is not active")]
    NotActivated,
    /// The frame cannot be delivered into the guest's buffer and is dropped.
    #[error("received frame of {len} bytes does not fit (room {room}); dropped")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Largest frame the next RX buffer (or the device) takes.
        room: usize,
    },
    /// The RX avail ring is broken (the driver moved `avail.idx` too far);
    /// the frame is dropped.
    #[error("virtio-net RX ring is broken")]
    RxRing(#[source] virtq::RingError),
    /// Every RX chain the guest had posted was malformed (each is returned
    /// with length 0): guest memory changed, and the frame is dropped.
    #[error("all {0} RX buffers the guest posted were malformed; frame dropped")]
    MalformedBuffers(u32),
}
