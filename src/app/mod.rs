//! `--app PATH [-- ARGS...]`: run an unmodified static Linux program as the
//! guest, through the guest's Linux personality
//! (`docs/linux-personality.md`). The program is checked here
//! ([`check`]), written to the app area at the start of the disk
//! ([`image`]), and named on the guest's command line by the CRC of its
//! bytes (`workload=app app=CRC`), which the guest verifies and a backup
//! compares with its own copy.

pub mod check;
pub mod image;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::spec::GuestSpec;

/// The program to run in the guest.
#[derive(Args, Debug, Clone, Default)]
pub struct AppArgs {
    /// Run this static Linux x86-64 program (e.g. built with musl-gcc
    /// -static) as the guest, through its Linux personality. It goes to the
    /// start of the disk; the program's files live behind it on the same disk.
    #[arg(long, value_name = "ELF")]
    pub app: Option<PathBuf>,
    /// The program's arguments (after `--`; argv[0] is its file name).
    #[arg(last = true, value_name = "ARGS")]
    pub app_args: Vec<String>,
}

/// A checked program, ready for the disk.
#[derive(Debug)]
pub struct PreparedApp {
    pub path: PathBuf,
    /// The loadable prefix of the file.
    pub elf: Vec<u8>,
    pub header: Vec<u8>,
    pub crc: u32,
}

fn read_checked(path: &Path) -> anyhow::Result<(Vec<u8>, u32)> {
    let mut elf = std::fs::read(path).with_context(|| format!("reading app {}", path.display()))?;
    let checked = check::check(&elf)
        .with_context(|| format!("refusing to run {} in the guest", path.display()))?;
    elf.truncate(checked.prefix_len as usize);
    let crc = crc32c::crc32c(&elf);
    tracing::info!(
        "app {}: {} loadable bytes, {} functions checked, no forbidden instruction",
        path.display(),
        elf.len(),
        checked.functions
    );
    Ok((elf, crc))
}

/// Reads and checks `--app`, if given.
pub fn prepare(args: &AppArgs) -> anyhow::Result<Option<PreparedApp>> {
    let Some(path) = &args.app else {
        if !args.app_args.is_empty() {
            bail!("arguments after `--` are for an app; name it with --app");
        }
        return Ok(None);
    };
    let (elf, crc) = read_checked(path)?;
    let name = path
        .file_name()
        .map_or_else(|| "app".into(), |n| n.to_string_lossy().into_owned());
    let argv: Vec<String> = std::iter::once(name)
        .chain(args.app_args.iter().cloned())
        .collect();
    let header = image::header_block(&elf, &argv).context("building the app header")?;
    Ok(Some(PreparedApp {
        path: path.clone(),
        elf,
        header,
        crc,
    }))
}

/// The guest command line for `app`: `workload=app app=CRC` in place of the
/// workload word.
pub fn cmdline(line: String, app: Option<&PreparedApp>) -> String {
    let Some(app) = app else { return line };
    line.split(' ')
        .map(|w| {
            if w.starts_with("workload=") {
                format!("workload=app app={:08x}", app.crc)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PreparedApp {
    /// Writes the app area of the disk image.
    pub fn install(&self, disk: &Path) -> anyhow::Result<()> {
        image::write(disk, &self.header, &self.elf)
            .with_context(|| format!("installing {} on {}", self.path.display(), disk.display()))
    }
}

/// A backup given `--app` checks that the primary runs the same program.
pub fn check_backup(args: &AppArgs, spec: &GuestSpec) -> anyhow::Result<()> {
    let Some(path) = &args.app else {
        return Ok(());
    };
    let (_, crc) = read_checked(path)?;
    let theirs = spec
        .cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("app="));
    match theirs {
        Some(v) if v == format!("{crc:08x}") => Ok(()),
        Some(v) => bail!(
            "the primary runs an app with CRC {v}, {} has CRC {crc:08x}: not the same program",
            path.display()
        ),
        None => bail!("the primary runs no app (--app given to the backup)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_word_names_the_app() {
        let app = PreparedApp {
            path: "r".into(),
            elf: vec![],
            header: vec![],
            crc: 0xab,
        };
        assert_eq!(
            cmdline("workload=kv ip=10.77.0.2/24".into(), Some(&app)),
            "workload=app app=000000ab ip=10.77.0.2/24"
        );
        assert_eq!(cmdline("workload=kv".into(), None), "workload=kv");
    }
}
