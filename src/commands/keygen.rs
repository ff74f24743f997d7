//! `lockstep keygen PATH`: a fresh pair key (or `--token`: a status bearer
//! token) in a new file only its owner may read. The key itself is never
//! printed; its fingerprint is, so an operator can check that both hosts
//! hold the same one.

use anyhow::Context;

use logchan::secure::{PairKey, write_new_token};

use crate::cli::KeygenArgs;
use crate::exit_status::ExitStatus;

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitStatus> {
    let path = args.path.display();
    if args.token {
        write_new_token(&args.path).context("writing a status token")?;
        println!(
            "wrote a status bearer token to {path} (mode 600): give it to `lockstep primary|backup --status-token-file {path}` and `lockstep status --token-file {path}`"
        );
    } else {
        let key = PairKey::write_new(&args.path).context("writing a pair key")?;
        println!(
            "wrote a pair key to {path} (mode 600, fingerprint {}): copy it to both hosts of the pair and give it to `lockstep primary|backup --key-file {path}`",
            key.fingerprint()
        );
    }
    Ok(ExitStatus::Ok)
}
