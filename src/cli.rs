//! The command line.

use std::net::Ipv4Addr;
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
    /// Guest workload: kv, compute, disk or idle.
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
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
}
