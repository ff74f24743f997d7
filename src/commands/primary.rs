//! `lockstep primary`: the serving side of an FT pair.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use logchan::channel::{HeartbeatEngine, Role, SenderEngine, SenderOptions};
use logchan::{LogConfig, StreamHeader};

use lockstep_ft::arbiter;
use lockstep_ft::failure::Liveness;
use lockstep_ft::plane::{PrimaryPlane, TAG_HEARTBEAT, TAG_LOG};
use lockstep_ft::shared::FtShared;
use lockstep_ft::supervisor::{Side, Supervisor};
use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::recorder::Recorder;
use lockstep_vmm::spec::GuestSpec;

use crate::cli::{FtArgs, PrimaryArgs};
use crate::commands::boot::{LogSetup, LogTarget};
use crate::commands::live::{LiveOptions, run_live};
use crate::exit_status::ExitStatus;

/// The name a side has in the arbiter and in reports.
pub fn side_name(ft: &FtArgs, role: &str) -> String {
    ft.name.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        format!("{host}-{role}-{}", std::process::id())
    })
}

/// The first address `addr` (`HOST:PORT`, the value of `flag`) resolves to.
pub fn resolve(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("{flag} {addr}"))?
        .next()
        .with_context(|| format!("{flag} {addr}: no address"))
}

pub fn liveness(ft: &FtArgs) -> anyhow::Result<Liveness> {
    if ft.heartbeat_ms == 0 || ft.failure_timeout_ms <= ft.heartbeat_ms {
        bail!(
            "--failure-timeout-ms ({}) must be larger than --heartbeat-ms ({}), which must be positive",
            ft.failure_timeout_ms,
            ft.heartbeat_ms
        );
    }
    Ok(Liveness {
        period: Duration::from_millis(ft.heartbeat_ms),
        timeout: Duration::from_millis(ft.failure_timeout_ms),
    })
}

/// Connects to the backup, retrying while it is not up yet.
fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                if !said {
                    tracing::info!("waiting for the backup at {addr} ({e})");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot reach the backup at {addr} within {timeout:?}")
                });
            }
        }
    }
}

pub fn primary(args: PrimaryArgs) -> anyhow::Result<ExitStatus> {
    let name = side_name(&args.ft, "primary");
    let live = liveness(&args.ft)?;
    let arbiter =
        arbiter::parse(&args.ft.arbiter).with_context(|| format!("arbiter {}", args.ft.arbiter))?;
    let backup = resolve("--backup", &args.backup)?;
    let epoch = arbiter.begin_next(&name).with_context(|| {
        format!(
            "starting a new pair run at the arbiter {}",
            arbiter.describe()
        )
    })?;
    let ft = Arc::new(FtShared::default());
    let policy = args.digest.policy();
    let connect_timeout = Duration::from_secs(args.connect_timeout);
    let hb_port = args.ft.heartbeat_port.unwrap_or(backup.port());
    let hb_peer = args
        .ft
        .heartbeat_peer
        .unwrap_or(SocketAddr::new(backup.ip(), hb_port));
    let plane_ft = ft.clone();
    let supervisor = Supervisor::new(Side::Primary, arbiter, epoch, name.clone(), ft.clone());
    let log = Box::new(
        move |spec: &GuestSpec, kernel: &[u8], shared: &Arc<VmShared>| {
            StatusCounters::set(&shared.status.epoch, epoch);
            let _ = shared.status.name.set(name.clone());
            let _ = shared.status.peer.set(backup.to_string());
            let stream = connect(backup, connect_timeout)?;
            let local = stream
                .local_addr()
                .context("local address of the logging channel")?;
            let udp = UdpSocket::bind((local.ip(), hb_port))
                .with_context(|| format!("binding the heartbeat port {}:{hb_port}", local.ip()))?;
            let header = StreamHeader::new(
                spec.identity(kernel),
                logchan::header::flags::READ_DATA_LOGGED,
                epoch,
            );
            // The I/O thread sends what the vCPU thread publishes; the vCPU
            // wakes it (it does that for outputs anyway), not the log buffers.
            // 16 MiB of log buffers: room for bursts, and quick to register
            // (registration pins every page).
            let config = LogConfig {
                wake_consumer: false,
                ..LogConfig::new(16, 1 << 20)
            };
            let (producer, consumer) =
                logchan::log_buffers_with(&config).context("allocating log buffers")?;
            let sender =
                SenderEngine::new(stream, consumer, header, TAG_LOG, SenderOptions::default())
                    .context("setting up the logging channel")?;
            let heartbeat = HeartbeatEngine::new(
                udp,
                hb_peer,
                Role::Primary,
                epoch,
                live.period,
                TAG_HEARTBEAT,
            )
            .context("setting up heartbeats")?;
            let mut recorder = Recorder::new(producer, true, policy);
            recorder
                .boot(&spec.encode())
                .context("sending the boot entry")?;
            tracing::info!("primary {name} of epoch {epoch}: logging to the backup at {backup}");
            Ok(LogSetup {
                recorder,
                target: LogTarget::Channel,
                plane: Some(Box::new(PrimaryPlane::new(
                    sender,
                    heartbeat,
                    live,
                    plane_ft,
                    shared.status.clone(),
                ))),
            })
        },
    );
    run_live(
        &args.vm,
        LiveOptions {
            log: Some(log),
            ft: Some((ft, supervisor)),
            role: lockstep_status::Role::Primary,
        },
    )
}
