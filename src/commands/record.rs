//! `lockstep record`: a live VM whose inputs go to a log file.

use anyhow::Context;

use logchan::{FileSink, LogConfig, StreamHeader};

use lockstep_vmm::replay::recorder::Recorder;

use crate::cli::RecordArgs;
use crate::commands::boot::{LogSetup, LogTarget};
use crate::commands::live::{LiveOptions, run_live};
use crate::exit_status::ExitStatus;

/// Log buffers: room for bursts of received frames while the writer
/// catches up; a full set stalls the vCPU (the paper's full-buffer rule).
pub fn log_config() -> LogConfig {
    LogConfig {
        // The file writer polls every few ms: it needs no wake-up, and the
        // vCPU thread never pays one.
        wake_consumer: false,
        ..LogConfig::new(64, 1 << 20)
    }
}

pub fn record(args: RecordArgs) -> anyhow::Result<ExitStatus> {
    let path = args.log.clone();
    let backup_reads = args.backup_reads;
    let policy = args.digest.policy();
    let opts = LiveOptions {
        log: Some(Box::new(move |spec, kernel, _shared| {
            let flags = if backup_reads {
                0
            } else {
                logchan::header::flags::READ_DATA_LOGGED
            };
            let header = StreamHeader::new(spec.identity(kernel), flags, 0);
            let (producer, consumer) =
                logchan::log_buffers_with(&log_config()).context("allocating log buffers")?;
            let sink = FileSink::create(&path, &header, consumer)
                .with_context(|| format!("creating log {}", path.display()))?;
            let mut recorder = Recorder::new(producer, !backup_reads, policy);
            recorder
                .boot(&spec.encode())
                .context("writing the boot entry")?;
            tracing::info!("recording to {}", path.display());
            Ok(LogSetup {
                recorder,
                target: LogTarget::File(sink),
                plane: None,
            })
        })),
        ft: None,
        join: None,
        role: lockstep_status::Role::Recording,
        pacer: None,
        operator: None,
    };
    run_live(&args.vm, opts)
}
