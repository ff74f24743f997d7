//! `lockstep backup` (being written).

use crate::cli::BackupArgs;

pub fn backup(_args: BackupArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not yet implemented")
}
