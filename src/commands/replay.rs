//! `lockstep replay`: re-execute a recording from its log alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use logchan::{DecodeError, LogFileReader};

use lockstep_vmm::dataplane::io_thread::IoChannels;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::backup_disk::BackupDisk;
use lockstep_vmm::replay::cursor::{FileChunks, LogCursor, Logged};
use lockstep_vmm::replay::replayer::{Perturb, ReplayIo, ReplayStats, ReplayStop};
use lockstep_vmm::spec::GuestSpec;

use crate::cli::ReplayArgs;
use crate::commands::drive::{Served, VmParts, drive};
use crate::exit_status::ExitStatus;
use crate::launch;

/// Refuses a log with a corrupt entry before anything runs; returns a note
/// if the log is cut short (the replay then stops where it ends).
fn check_log(args: &ReplayArgs) -> anyhow::Result<Option<String>> {
    let reader = LogFileReader::open(&args.log)
        .with_context(|| format!("opening log {}", args.log.display()))?;
    for entry in reader.entries() {
        match entry {
            Ok(_) => {}
            Err(e @ DecodeError::Corrupt { .. }) => {
                bail!("refusing to replay {}: {e}", args.log.display());
            }
            Err(e @ DecodeError::Incomplete { .. }) => return Ok(Some(e.to_string())),
        }
    }
    Ok(None)
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitStatus> {
    let signals = launch::block_stop_signals()?;
    let truncated = check_log(&args)?;
    if let Some(note) = &truncated {
        tracing::warn!("{note}: the replay will stop there");
    }
    let source = FileChunks::open(&args.log)
        .with_context(|| format!("opening log {}", args.log.display()))?;
    let mut cursor = LogCursor::new(Box::new(source)).context("reading the log header")?;
    let header = *cursor.header();
    let spec = match cursor.pop_boot() {
        Some(Logged::Boot(config)) => {
            GuestSpec::decode(&config).context("reading the log's boot entry")?
        }
        _ => bail!("{} does not start with a boot entry", args.log.display()),
    };
    let kernel = launch::kernel_bytes(args.kernel.as_deref())?;
    header
        .check_identity(&spec.identity(&kernel))
        .context("this log cannot be replayed with this kernel")?;
    let disk = match (&args.disk, args.backup_reads || !header.read_data_logged()) {
        (Some(path), true) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening disk {}", path.display()))?;
            Some(BackupDisk::new(file, true))
        }
        (None, true) => bail!(
            "{}: replaying disk reads needs --disk IMAGE (a copy of the disk as it was when the recording began)",
            if header.read_data_logged() {
                "--backup-reads"
            } else {
                "this log was recorded with --backup-reads"
            }
        ),
        (Some(_), false) => bail!("--disk is only used with --backup-reads"),
        (None, false) => None,
    };
    let vm = spec.build_vm(&kernel).context("building the VM")?;
    let console = launch::console_for(args.console.as_deref())?;
    let (vcpu_cpu, _) = launch::parse_cpus(args.cpus.as_deref())?;
    lockstep_vmm::cpu::avoid_cpu(vcpu_cpu);
    let mut io = ReplayIo::new(spec.devices(), cursor, disk);
    io.perturb = args.perturb_time_at.map(|at_exit| Perturb {
        at_exit,
        delta_ns: 1_000_000,
    });
    let (_vm_fd, vm) = VmParts::split(vm, vcpu_cpu);
    tracing::info!(
        "replaying {} ({} MiB guest)",
        args.log.display(),
        spec.mem_size >> 20
    );
    let run = drive(
        vm,
        console,
        io,
        Arc::new(VmShared::default()),
        &signals,
        Duration::from_secs(1),
        None,
    )?;
    let (exits, output_hash, console_hash) = (run.exits, run.io.output_hash(), run.console_hash);
    let summary = |s: &ReplayStats| {
        format!(
            "{exits} exits, {} entries, {} sync calls, {} frames, {} disk completions, {} outputs and {} digests ({} with memory) checked, {} backup reads; output hash {output_hash:#018x}, console hash {console_hash:#018x}; {:.2?}",
            s.entries,
            s.syncs,
            s.frames,
            s.disk_completions,
            s.outputs_checked,
            s.digests_checked,
            s.mem_hashes_checked,
            s.backup_reads,
            run.elapsed
        )
    };
    let stats = summary(&run.io.stats);
    // A replay's outcome is in the stop reason of the sync call (or the end
    // check) that ended it.
    let stop = run.end.as_ref().err().and_then(|e| e.io_error()?.stop());
    match (stop, &run.end) {
        (
            Some(ReplayStop::Recorded {
                exit_index, reason, ..
            }),
            _,
        ) => {
            tracing::info!(
                "replay matched the recording up to its end at exit {exit_index} ({reason:?}): {stats}"
            );
            Ok(ExitStatus::Ok)
        }
        (Some(ReplayStop::Diverged(d)), _) => {
            eprintln!("lockstep: {d}");
            tracing::info!("{stats}");
            Ok(ExitStatus::Diverged)
        }
        (Some(ReplayStop::LogEnded { exit_index, end }), _) => {
            eprintln!(
                "lockstep: the replay applied every whole entry and stopped at exit {exit_index}: {end}{}",
                truncated.map(|t| format!(" ({t})")).unwrap_or_default()
            );
            tracing::info!("{stats}");
            Ok(ExitStatus::LogEnded)
        }
        (None, Ok(run_end)) => {
            let (line, status) = launch::describe_end(run_end);
            tracing::info!("replay matched the recording: {line}; {stats}");
            Ok(status)
        }
        (None, Err(_)) => {
            tracing::info!("{stats}");
            run.end.map(drop).context("replaying the VM")?;
            Ok(ExitStatus::Error)
        }
    }
}

impl Served for ReplayIo {
    fn channels(&mut self) -> Option<&mut IoChannels> {
        None
    }
}
