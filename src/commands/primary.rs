//! `lockstep primary`: the serving side of an FT pair.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use logchan::StreamHeader;
use logchan::channel::{HeartbeatEngine, Role, SenderEngine, SenderOptions};
use logchan::secure::{AttachRequest, Security, Session, initiate};

use lockstep_ft::join::control::Protection;
use lockstep_ft::lag::{LagControl, LagShared, ThrottlePacer};
use lockstep_ft::membership;
use lockstep_ft::operator::Operator;
use lockstep_ft::plane::{PrimaryPlane, TAG_HEARTBEAT, TAG_LOG};
use lockstep_ft::shared::FtShared;
use lockstep_ft::supervisor::{Side, Supervisor};
use lockstep_status::StatusCounters;
use lockstep_status::protection::Hold;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::recorder::Recorder;
use lockstep_vmm::spec::GuestSpec;

use crate::cli::PrimaryArgs;
use crate::commands::boot::{LogSetup, LogTarget};
use crate::commands::live::{KEEPALIVE_EVERY, LiveOptions, run_live};
use crate::commands::pair::{claimant, lease, liveness, open_arbiter, resolve, security};
use crate::commands::rejoin;
use crate::exit_status::ExitStatus;

/// How long one opening (handshake, attach, verdict) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the backup and opens the channel, retrying while there is
/// no backup of this pair there yet. Whatever does not prove it holds the
/// pair key — nobody, an impostor, a backup of another pair — is no backup
/// at all: tried again until `timeout`, never sent a byte of the log. A
/// backup that answers and refuses ends the attempt with its reason.
fn open_channel(
    addr: SocketAddr,
    timeout: Duration,
    security: &Security,
    attach: &AttachRequest,
) -> anyhow::Result<(TcpStream, Session)> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let failed: anyhow::Error = match TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        {
            Err(e) => e.into(),
            Ok(mut stream) => {
                let until = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
                match initiate(&mut stream, security, attach, until) {
                    Ok(session) => return Ok((stream, session)),
                    Err(e) if !e.is_no_backup() => {
                        return Err(e)
                            .with_context(|| format!("opening the logging channel to {addr}"));
                    }
                    Err(e) => e.into(),
                }
            }
        };
        if Instant::now() >= deadline {
            return Err(failed).with_context(|| {
                format!("no backup of this pair answered at {addr} within {timeout:?}")
            });
        }
        if !said {
            tracing::warn!("no backup of this pair at {addr} yet ({failed:#}); trying again");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn primary(args: PrimaryArgs) -> anyhow::Result<ExitStatus> {
    primary_as(args, Hold::None)
}

/// A primary whose re-protection starts held by `hold`: a `run` VM with
/// the FT options is a primary alone with no spares, `Off` until the
/// operator's `ft on` (docs/operator-actions.md).
pub fn primary_as(args: PrimaryArgs, hold: Hold) -> anyhow::Result<ExitStatus> {
    let who = claimant(&args.ft, "primary")?;
    let name = who.name().to_string();
    let live = liveness(&args.ft)?;
    let lease_ms = lease(&args.ft, KEEPALIVE_EVERY)?;
    let arbiter = open_arbiter(&args.ft)?;
    // Without --backup (only --spares): the VM starts alone and is
    // protected once a spare joins it. Without either (`run` with the FT
    // options): alone until `lockstep ft on HOST:PORT`. A bad --spares is
    // refused before a run begins at the arbiter.
    let spares = membership::parse(&args.spares).context("--spares")?;
    let backup = args
        .backup
        .as_deref()
        .map(|b| resolve("--backup", b))
        .transpose()?;
    let starts_alone = backup.is_none();
    let security = security(&args.ft, "primary")?;
    let epoch = arbiter.begin_next(&who).with_context(|| {
        format!(
            "starting a new pair run at the arbiter {}",
            arbiter.describe()
        )
    })?;
    let ft = Arc::new(FtShared::default());
    let policy = args.digest.policy();
    let connect_timeout = Duration::from_secs(args.connect_timeout);
    // The first backup's: its logging port, as the backup's own default.
    let hb_port = args
        .ft
        .heartbeat_port
        .unwrap_or(backup.map_or(0, |b| b.port()));
    // The I/O thread sends what the vCPU thread publishes; the vCPU wakes
    // it (it does that for outputs anyway), not the log buffers. 16 MiB of
    // log buffers by default: room for bursts, and quick to register
    // (registration pins every page). A full set stalls the vCPU until the
    // backup catches up or is failed (the ack timeout); a failed backup's
    // log is discarded, so the stall ends there.
    let config = rejoin::log_config(usize::from(args.log_buffer_mib), live);
    // The lag the acks show, measured from the guest's sync points, and
    // the throttle that holds the guest when it grows (docs/throttling.md);
    // a joined backup's plane measures and brakes with the same.
    let lag = Arc::new(LagShared::default());
    let pacer = ThrottlePacer::new(lag.clone());
    let lag_target =
        (args.lag_target_ms > 0).then(|| Duration::from_millis(u64::from(args.lag_target_ms)));
    // The join thread runs for every primary: the operator's actions
    // (`ft on HOST:PORT`, `migrate-backup`) join where no spare is listed.
    let control = Arc::new(Protection::new(spares));
    let join = rejoin::start(
        control.clone(),
        &args.ft,
        "primary",
        live,
        Duration::from_millis(u64::from(lease_ms)),
        config.clone(),
        policy,
        // A joined backup's: its own logging port too (0), unless given —
        // spares and `migrate-backup` targets need not share a port.
        args.ft.heartbeat_port.unwrap_or(0),
        Some((lag.clone(), lag_target)),
    )?;
    if starts_alone {
        // Alone from the start: re-protection begins at once.
        ft.set(&ft.alone);
    } else if let Some(b) = backup {
        control.set_current(ft.clone(), b.to_string());
    }
    let operator = Arc::new(Operator::new(
        control,
        hold,
        Box::new(|| {
            tracing::warn!("test failover: this primary stops now; its backup takes over");
            std::process::exit(i32::from(ExitStatus::TestFailover.code()));
        }),
        ExitStatus::TestFailover.code(),
    ));
    let plane_ft = ft.clone();
    let supervisor = Supervisor::new(Side::Primary, arbiter, epoch, who, ft.clone());
    let log = Box::new(
        move |spec: &GuestSpec, kernel: &[u8], shared: &Arc<VmShared>| {
            StatusCounters::set(&shared.status.epoch, epoch);
            StatusCounters::set(
                &shared.status.failure_timeout_ms,
                u64::try_from(live.timeout.as_millis()).unwrap_or(u64::MAX),
            );
            StatusCounters::set(
                &shared.status.log_buffer_capacity,
                u64::from(args.log_buffer_mib) << 20,
            );
            let _ = shared.status.name.set(name.clone());
            let backup = backup.context("a primary that logs from the start has a backup")?;
            shared.status.set_peer(&backup.to_string());
            let hb_peer = args
                .ft
                .heartbeat_peer
                .unwrap_or(SocketAddr::new(backup.ip(), hb_port));
            let header = StreamHeader::new(
                spec.identity(kernel),
                logchan::header::flags::READ_DATA_LOGGED,
                epoch,
            )
            .with_lease_ms(lease_ms);
            let attach = AttachRequest {
                header,
                boot: spec.encode(),
            };
            let (stream, session) = open_channel(backup, connect_timeout, &security, &attach)?;
            if session.mode() != security.mode() {
                bail!("the opened channel is not the one asked for");
            }
            let local = stream
                .local_addr()
                .context("local address of the logging channel")?;
            let udp = UdpSocket::bind((local.ip(), hb_port))
                .with_context(|| format!("binding the heartbeat port {}:{hb_port}", local.ip()))?;
            let _ = shared
                .status
                .channel
                .set(security.mode().name().to_string());
            let (producer, consumer) =
                logchan::log_buffers_with(&config).context("allocating log buffers")?;
            let sender =
                SenderEngine::new(stream, consumer, header, TAG_LOG, SenderOptions::default())
                    .context("setting up the logging channel")?
                    .secured(session.records);
            let heartbeat = HeartbeatEngine::new(
                udp,
                hb_peer,
                Role::Primary,
                epoch,
                live.period,
                TAG_HEARTBEAT,
            )
            .context("setting up heartbeats")?
            .with_keys(session.beats);
            let mut recorder = Recorder::new(producer, true, policy);
            recorder
                .boot(&spec.encode())
                .context("sending the boot entry")?;
            tracing::info!("primary {name} of epoch {epoch}: logging to the backup at {backup}");
            Ok(LogSetup {
                recorder,
                target: LogTarget::Channel,
                plane: Some(Box::new(
                    PrimaryPlane::new(
                        sender,
                        heartbeat,
                        live,
                        Duration::from_millis(u64::from(lease_ms)),
                        plane_ft,
                        shared.status.clone(),
                    )
                    .with_lag(LagControl::new(
                        lag,
                        lag_target,
                        shared.status.clone(),
                    )),
                )),
            })
        },
    );
    run_live(
        &args.vm,
        LiveOptions {
            log: (!starts_alone).then_some(log),
            ft: Some((ft, supervisor)),
            pacer: Some(Box::new(pacer)),
            join: Some(join),
            operator: Some(operator),
            role: if starts_alone {
                lockstep_status::Role::PrimaryAlone
            } else {
                lockstep_status::Role::Primary
            },
        },
    )
}
