//! `lockstep primary` (being written).

use crate::cli::PrimaryArgs;

pub fn primary(_args: PrimaryArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not yet implemented")
}
