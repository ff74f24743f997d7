//! Running an unmodified static Linux program as the guest, through the
//! guest's Linux personality (`docs/linux-personality.md`). The program is
//! checked here ([`check`]), written to the app area at the start of the
//! disk ([`image`]), and named on the guest's command line by the CRC of
//! its bytes (`workload=app app=CRC`), which the guest verifies and a
//! backup compares with its own copy.

pub mod check;
pub mod image;
pub mod rewrite;

pub use lockstep_guest_abi::syscall_rewrite::traps_syscalls;

use std::path::{Path, PathBuf};

use check::CheckError;
use image::ImageError;

/// Why an app cannot run in the guest.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("reading app {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to run {path} in the guest")]
    Refused {
        path: PathBuf,
        #[source]
        source: CheckError,
    },
    #[error("rewriting the system calls of {path}")]
    Rewrite {
        path: PathBuf,
        #[source]
        source: rewrite::NotASyscall,
    },
    #[error("building the app header for {path}")]
    Header {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("installing {path} on {disk}")]
    Install {
        path: PathBuf,
        disk: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error(
        "the primary runs an app with CRC {theirs}, {path} has CRC {ours:08x}: not the same program"
    )]
    NotTheSame {
        path: PathBuf,
        theirs: String,
        ours: u32,
    },
    #[error("the primary runs no app, but this side was given {path}")]
    PrimaryRunsNone { path: PathBuf },
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

/// Reads and checks the program at `path`: its loadable prefix, with its
/// `syscall`s rewritten where they may be if `rewrite`, and its CRC.
fn read_checked(path: &Path, rewrite: bool) -> Result<(Vec<u8>, u32), AppError> {
    let mut elf = std::fs::read(path).map_err(|source| AppError::Read {
        path: path.to_owned(),
        source,
    })?;
    let checked = check::check(&elf).map_err(|source| AppError::Refused {
        path: path.to_owned(),
        source,
    })?;
    // `check` bounded the prefix by the file's length and the app area.
    elf.truncate(usize::try_from(checked.prefix_len).unwrap_or(elf.len()));
    let sites: Vec<u64> = checked
        .rewritable
        .iter()
        .copied()
        .filter(|o| *o < elf.len() as u64)
        .collect();
    if rewrite {
        rewrite::patch(&mut elf, &sites).map_err(|source| AppError::Rewrite {
            path: path.to_owned(),
            source,
        })?;
    }
    let crc = crc32c::crc32c(&elf);
    tracing::info!(
        "app {}: {} loadable bytes, {} functions checked, no forbidden instruction; \
         {} of {} system call sites {}",
        path.display(),
        elf.len(),
        checked.functions,
        sites.len(),
        checked.syscalls,
        if rewrite {
            "rewritten to `call rax`"
        } else {
            "could be rewritten (syscalls=trap: left as they are)"
        }
    );
    Ok((elf, crc))
}

impl PreparedApp {
    /// Reads and checks the program at `path`, to be run with `args`
    /// (argv[0] is its file name), its system calls rewritten if `rewrite`
    /// (`lockstep_guest_abi::syscall_rewrite`).
    pub fn prepare(path: &Path, args: &[String], rewrite: bool) -> Result<PreparedApp, AppError> {
        let (elf, crc) = read_checked(path, rewrite)?;
        let name = path
            .file_name()
            .map_or_else(|| "app".into(), |n| n.to_string_lossy().into_owned());
        let argv: Vec<String> = std::iter::once(name).chain(args.iter().cloned()).collect();
        let header = image::header_block(&elf, &argv).map_err(|source| AppError::Header {
            path: path.to_owned(),
            source,
        })?;
        Ok(PreparedApp {
            path: path.to_owned(),
            elf,
            header,
            crc,
        })
    }

    /// Writes the app area of the disk image.
    pub fn install(&self, disk: &Path) -> Result<(), AppError> {
        image::write(disk, &self.header, &self.elf).map_err(|source| AppError::Install {
            path: self.path.clone(),
            disk: disk.to_owned(),
            source,
        })
    }
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

/// A backup given the program at `path` checks that the primary, whose
/// guest command line is `primary_cmdline`, runs the same program.
pub fn check_same(path: &Path, primary_cmdline: &str) -> Result<(), AppError> {
    let rewrite = !traps_syscalls(primary_cmdline);
    let (_, crc) = read_checked(path, rewrite)?;
    let theirs = primary_cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("app="));
    match theirs {
        Some(v) if v == format!("{crc:08x}") => Ok(()),
        Some(v) => Err(AppError::NotTheSame {
            path: path.to_owned(),
            theirs: v.to_string(),
            ours: crc,
        }),
        None => Err(AppError::PrimaryRunsNone {
            path: path.to_owned(),
        }),
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
