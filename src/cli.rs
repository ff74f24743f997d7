//! The command line.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "Fault-tolerant virtual machines on Linux/KVM: a primary and a backup in virtual lockstep",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot one VM (no fault tolerance).
    Run(RunArgs),
    /// Run one VM and record every non-deterministic input to a log file.
    Record(RecordArgs),
    /// Re-execute a recorded VM from its log: inputs from the log, outputs
    /// suppressed, every observable state compared with the recording.
    Replay(ReplayArgs),
    /// Run the primary of a fault-tolerant pair: serve clients, stream the
    /// log to the backup, release each output once the backup has the log
    /// up to it.
    Primary(PrimaryArgs),
    /// Run the backup of a fault-tolerant pair: replay the primary's log in
    /// lockstep and take over when the primary's host dies.
    Backup(BackupArgs),
    /// Show a running lockstep VMM's role, log positions, lag and bandwidth.
    Status(StatusArgs),
    /// An operator action on a running VM's fault tolerance, through its
    /// status endpoint (needs its bearer token): turn it on or off, suspend
    /// or resume re-protection, test a failover, restart or move the backup.
    Ft(FtActionArgs),
    /// Write a new pair key (or, with --token, a status bearer token) to a
    /// file only its owner can read.
    Keygen(KeygenArgs),
}

/// The operator's FT actions (docs/operator-actions.md).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FtAction {
    /// Protect a VM that runs alone: join HOST:PORT, or its next spare.
    On,
    /// Drop the backup; nothing joins until `ft on`.
    Off,
    /// Drop the backup, keeping the spares for `ft resume`.
    Suspend,
    /// Re-protect a suspended VM from its spares.
    Resume,
    /// Stop the primary on purpose: its backup takes over.
    TestFailover,
    /// Drop the backup; a spare joins at once.
    TestRestartBackup,
    /// Drop the backup and join the one at HOST:PORT.
    MigrateBackup,
}

#[derive(Args, Debug)]
pub struct FtActionArgs {
    pub action: FtAction,
    /// The waiting backup to join (`on`: optional, `migrate-backup`:
    /// required).
    #[arg(value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// The VMM's status endpoint (its --status), e.g. 127.0.0.1:7010.
    #[arg(long, value_name = "ADDR")]
    pub status: String,
    /// The endpoint's bearer token (its --status-token-file): every action
    /// needs it, also on loopback.
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
    /// `test-failover`: the backup's status endpoint (same token), watched
    /// until the backup serves, to print how long the VM was unprotected.
    #[arg(long, value_name = "ADDR")]
    pub peer_status: Option<String>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The file to create (never overwritten). Copy a pair key to both
    /// hosts of the pair (e.g. /etc/lockstep/pair.key), mode 600.
    pub path: PathBuf,
    /// Write a bearer token for --status-token-file / status --token-file
    /// instead of a pair key.
    #[arg(long)]
    pub token: bool,
}

/// Options both sides of an FT pair take.
#[derive(Args, Debug, Clone)]
pub struct FtArgs {
    /// The arbiter both sides reach: file:PATH (a file on storage both
    /// hosts share) or etcd://HOST:PORT/KEY.
    #[arg(
        long,
        value_name = "URI",
        default_value = "file:/var/lib/lockstep/arbiter"
    )]
    pub arbiter: String,
    /// This side's name in the arbiter and in reports (default: host name
    /// and role).
    #[arg(long)]
    pub name: Option<String>,
    /// UDP port for heartbeats, on both hosts (default: the logging
    /// channel's port).
    #[arg(long, value_name = "PORT")]
    pub heartbeat_port: Option<u16>,
    /// Primary only: where to send heartbeats, if not to the backup's host
    /// (a logging channel through a proxy or NAT).
    #[arg(long, value_name = "ADDR:PORT")]
    pub heartbeat_peer: Option<SocketAddr>,
    /// Heartbeat period.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// The peer is declared dead after this long without a heartbeat or
    /// log traffic.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub failure_timeout_ms: u64,
    /// Primary only: a backup that is heard from but acknowledges nothing
    /// for this long while log entries wait is failed (default: the
    /// failure timeout).
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Primary only: the output lease. An output leaves only within this
    /// long after the log entry its backup acknowledged was sent, and a
    /// backup goes live no sooner than this long after its last ack, so a
    /// paused or partitioned primary can never release an output once the
    /// backup serves (default: the failure timeout, which makes a failover
    /// wait for nothing).
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// The pair key both sides hold (`lockstep keygen`): it authenticates
    /// and encrypts the logging channel and the heartbeats.
    #[arg(long, value_name = "PATH", default_value = "/etc/lockstep/pair.key")]
    pub key_file: PathBuf,
    /// Run the logging channel and heartbeats WITHOUT authentication or
    /// encryption (benchmarks on a private link only; both sides must
    /// agree). Anyone who reaches the ports can then become the primary,
    /// pose as the backup, read client data and block failover.
    #[arg(long)]
    pub insecure: bool,
}

/// Where a VMM reports on itself.
#[derive(Args, Debug, Clone, Default)]
pub struct MonitorArgs {
    /// Serve `lockstep status` (GET /status, and /metrics) here.
    #[arg(long, value_name = "ADDR:PORT")]
    pub status: Option<String>,
    /// Also serve Prometheus metrics (GET /metrics) here.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Bearer token (`lockstep keygen --token`) the endpoints require of
    /// every request; needed to serve on an address beyond loopback. A
    /// bare PORT in --status/--metrics means 127.0.0.1:PORT.
    #[arg(long, value_name = "PATH")]
    pub status_token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PrimaryArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// The backup's logging-channel address. Without it the VM starts
    /// alone, unprotected, until a backup of `--spares` joins it
    /// (docs/join.md).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "spares")]
    pub backup: Option<String>,
    /// How long to keep trying to reach the backup at start.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout: u64,
    /// Log buffers in MiB (1 MiB each, 2 to 1024): how far the primary may
    /// run ahead of its backup's acks before its vCPU waits.
    #[arg(long, value_name = "MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(2..=1024))]
    pub log_buffer_mib: u16,
    /// The execution lag (ms of guest execution the backup has still to
    /// replay) the throttle holds the backup under: beyond it the
    /// primary's guest is slowed smoothly (docs/throttling.md); 0 turns
    /// the throttle off (the lag is still measured).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=60_000))]
    pub lag_target_ms: u32,
    /// Waiting backups to join by live clone whenever this primary runs
    /// alone (its backup lost), tried in order with back-off: a list, or
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX for the spares registered
    /// there (`backup --standby`), read afresh each round (docs/join.md).
    /// Without it a primary alone stays alone.
    #[arg(long, value_name = "HOST:PORT,...|etcd://...", value_delimiter = ',')]
    pub spares: Vec<String>,
    #[command(flatten)]
    pub ft: FtArgs,
    #[command(flatten)]
    pub digest: DigestArgs,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to accept the primary's logging channel.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// The disk image the primary uses (shared storage).
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// The tap this host gives the guest when it goes live.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Guest kernel; must be the primary's. Default: the built-in guest.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Write the guest console here instead of standard output.
    #[arg(long, value_name = "PATH")]
    pub console: Option<PathBuf>,
    /// CPUs for the vCPU thread and the I/O thread.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Follow only a primary whose guest has this much memory (MiB).
    #[arg(long, value_name = "MiB")]
    pub mem: Option<u64>,
    /// Follow only a primary whose guest has this MAC address (the one
    /// this backup would announce when it goes live).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Follow only a primary whose guest has this address (ADDR or
    /// ADDR/PREFIX).
    #[arg(long, value_name = "ADDR")]
    pub guest_ip: Option<String>,
    /// Bound on the log received and not yet replayed, in MiB: at the
    /// bound the backup stops reading the channel until its replay catches
    /// up (TCP then holds the primary, whose full log buffers stall it).
    #[arg(long, value_name = "MIB", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub replay_buffer_mib: u32,
    /// The same bound in chunks (the entries of one read each).
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub replay_buffer_chunks: u32,
    /// Once this backup has gone live: waiting backups to join by live
    /// clone, as `primary --spares` (docs/join.md).
    #[arg(long, value_name = "HOST:PORT,...|etcd://...", value_delimiter = ',')]
    pub spares: Vec<String>,
    /// Register as a spare while waiting: the key PREFIX/NAME (--name)
    /// holds the --listen address under an etcd lease kept alive until a
    /// primary attaches or this backup stops; primaries with
    /// --spares etcd://.../PREFIX pick it from there (docs/join.md).
    #[arg(long, value_name = "etcd://HOST:PORT[,...]/PREFIX")]
    pub standby: Option<String>,
    #[command(flatten)]
    pub ft: FtArgs,
    #[command(flatten)]
    pub monitor: MonitorArgs,
    #[command(flatten)]
    pub app: AppArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The VMM's status address (its --status option), e.g. 10.99.0.1:7010.
    pub addr: String,
    /// Print JSON instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Print again every this many milliseconds until interrupted.
    #[arg(long, value_name = "MS")]
    pub watch: Option<u64>,
    /// The endpoint's bearer token (needed for an endpoint beyond
    /// loopback).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// Options every command that boots a VM shares.
#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Guest kernel (static ELF64). Default: the guest built into this binary.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Disk image; created (zero-filled, --disk-size) if absent.
    #[arg(long, value_name = "PATH", default_value = "lockstep-disk.img")]
    pub disk: PathBuf,
    /// Size of a disk image that has to be created.
    #[arg(long, value_name = "MiB", default_value_t = 64)]
    pub disk_size: u64,
    /// Tap device for the guest's network (created if absent). Without it the
    /// guest has no network.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Guest memory.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub mem: u64,
    /// The guest's address and prefix length.
    #[arg(long, value_name = "ADDR/PREFIX", default_value = "10.77.0.2/24")]
    pub guest_ip: String,
    /// The guest's default gateway.
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// The guest's MAC address.
    #[arg(long, value_name = "MAC", default_value = "52:54:00:12:34:56")]
    pub mac: String,
    /// Guest workload: kv, compute, disk, idle, hostile (misuses its
    /// devices, for tests), or app (the program --app installed on the
    /// disk earlier).
    #[arg(long, default_value = "kv")]
    pub workload: String,
    /// Extra `key=value` words for the guest's command line.
    #[arg(long, value_name = "WORDS")]
    pub append: Option<String>,
    /// CPUs to pin to: the vCPU thread to the first, the I/O thread to the
    /// second. Default: 0,1 when the host has two or more CPUs.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Write the guest console here instead of standard output.
    #[arg(long, value_name = "PATH")]
    pub console: Option<PathBuf>,
    /// Seed for the guest's pseudo-random numbers (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds the guest gets to stop after SIGINT/SIGTERM before it is stopped hard.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub stop_timeout: u64,
    #[command(flatten)]
    pub monitor: MonitorArgs,
    #[command(flatten)]
    pub app: AppArgs,
}

/// The program to run in the guest through its Linux personality.
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

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Any of these makes the VM one that `lockstep ft on HOST:PORT` can
    /// protect later without a restart: it runs as a primary alone,
    /// unprotected ("turned off") until then (docs/operator-actions.md).
    /// Without them `run` has no fault tolerance at all.
    #[command(
        flatten,
        next_help_heading = "Fault tolerance, turned on later (lockstep ft on)"
    )]
    pub ft: Option<FtArgs>,
}

/// How the recorder writes digests.
#[derive(Args, Debug, Clone)]
pub struct DigestArgs {
    /// A state digest (registers, output hash) every this many sync exits.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub digest_every: u64,
    /// Also hash all of guest memory in every N-th digest (0: only at the end).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub mem_digest_every: u64,
}

impl DigestArgs {
    /// The recorder's digest policy these options ask for.
    pub fn policy(&self) -> lockstep_vmm::replay::recorder::DigestPolicy {
        lockstep_vmm::replay::recorder::DigestPolicy {
            every_syncs: self.digest_every,
            mem_every_digests: self.mem_digest_every,
        }
    }
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// The log file to write.
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// Log only a hash of each disk read, not its data: the replay reads the
    /// disk itself (less log bandwidth; replay with --backup-reads).
    #[arg(long)]
    pub backup_reads: bool,
    #[command(flatten)]
    pub digest: DigestArgs,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The log to replay.
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// Guest kernel; must be the one recorded. Default: the built-in guest.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Execute disk reads (and writes) on this image instead of taking read
    /// data from the log; it must be a copy of the disk as it was when the
    /// recording began. Required for logs recorded with --backup-reads.
    #[arg(long)]
    pub backup_reads: bool,
    /// The disk image for --backup-reads.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Write the guest console here instead of standard output.
    #[arg(long, value_name = "PATH")]
    pub console: Option<PathBuf>,
    /// CPU to pin the vCPU thread to.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Test only: add 1 ms to the time the sync call at this exit returns,
    /// to show that the divergence is caught.
    #[arg(long, value_name = "EXIT", hide = true)]
    pub perturb_time_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> RunArgs {
        let all = [&["lockstep", "run"], args].concat();
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_is_fault_tolerant_only_when_asked() {
        assert!(run(&[]).ft.is_none());
        assert!(run(&["--mem", "128"]).ft.is_none());
        let ft = run(&["--arbiter", "file:/tmp/a"]).ft.expect("FT options");
        assert_eq!(ft.arbiter, "file:/tmp/a");
        assert_eq!(
            ft.failure_timeout_ms, 1000,
            "the others keep their defaults"
        );
        assert!(run(&["--insecure"]).ft.is_some());
    }
}
