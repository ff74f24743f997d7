//! The `lockstep` command's exit statuses: one per class of ending, so a
//! supervisor (systemd, a script, a test) can tell them apart. The table is
//! in docs/operations.md; keep the two in step.

use lockstep_ft::supervisor::StopReason;

/// How a `lockstep` command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done: the guest exited with status 0, or the command finished.
    Ok,
    /// An error: bad options or input, a resource that cannot be had, a
    /// failure of the VMM. The message says which.
    Error,
    /// The guest exited with this status (0 is [`ExitStatus::Ok`]); statuses
    /// above 255 read as 255.
    Guest(u32),
    /// The guest faulted (a fault report names the instruction).
    GuestFault,
    /// The host stopped the VM before the guest finished (a second signal,
    /// or a guest that ignored the stop request).
    Forced,
    /// A replay diverged from its log (the report says where and what).
    Diverged,
    /// A replay's log ended (cut short) before the recording did.
    LogEnded,
    /// This side of a pair lost the arbiter (the other side serves), or the
    /// arbiter refuses its claim for good (an epoch never begun).
    LostArbiter,
    /// A backup whose logging channel broke while its primary lives on.
    ChannelBroken,
    /// A primary stopped on purpose by `lockstep ft test-failover`: its
    /// backup takes over.
    TestFailover,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Error => 1,
            ExitStatus::Guest(0) => 0,
            ExitStatus::Guest(s) => u8::try_from(s).unwrap_or(u8::MAX),
            ExitStatus::GuestFault => 3,
            ExitStatus::Forced => 4,
            ExitStatus::Diverged => 5,
            ExitStatus::LogEnded => 6,
            ExitStatus::LostArbiter => 7,
            ExitStatus::ChannelBroken => 8,
            ExitStatus::TestFailover => 9,
        }
    }
}

impl From<&StopReason> for ExitStatus {
    fn from(reason: &StopReason) -> Self {
        match reason {
            // A claim the arbiter refuses for good is lost as surely.
            StopReason::LostArbiter { .. } | StopReason::NotBegun { .. } => ExitStatus::LostArbiter,
            StopReason::ChannelBroken { .. } => ExitStatus::ChannelBroken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_status() {
        let all = [
            ExitStatus::Ok,
            ExitStatus::Error,
            ExitStatus::GuestFault,
            ExitStatus::Forced,
            ExitStatus::Diverged,
            ExitStatus::LogEnded,
            ExitStatus::LostArbiter,
            ExitStatus::ChannelBroken,
            ExitStatus::TestFailover,
        ];
        let codes: std::collections::HashSet<u8> = all.iter().map(|s| s.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert_eq!(ExitStatus::Guest(0).code(), 0);
        assert_eq!(ExitStatus::Guest(9).code(), 9);
        assert_eq!(ExitStatus::Guest(70_000).code(), 255);
    }
}
