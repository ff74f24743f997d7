//! `lockstep status` (being written).

use crate::cli::StatusArgs;

pub fn status(_args: StatusArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not yet implemented")
}
