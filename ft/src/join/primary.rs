//! The primary's side of a join: a primary that runs alone (its backup
//! lost, or never had one) brings a waiting backup into lockstep by live
//! clone, and from the join point on the pair runs as if it had booted
//! together — a new epoch at the arbiter, the output rule, heartbeats,
//! failure detection (docs/join.md).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use lockstep_status::protection::Hold;
use lockstep_status::{Role, StatusCounters};
use lockstep_vmm::dataplane::join_point::{JoinCtl, PauseKit, Resume};
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::recorder::{DigestPolicy, Recorder};
use lockstep_vmm::snapshot::memory::PreCopy;
use lockstep_vmm::snapshot::stream::{self, CopyOptions};
use lockstep_vmm::snapshot::{Hello, JoinStats, SnapshotError};
use logchan::channel::{HeartbeatEngine, Role as BeatRole, SenderEngine, SenderOptions};
use logchan::secure::{AttachRequest, Security, initiate};
use logchan::{GuestIdentity, LogConfig, StreamHeader};

use crate::arbiter::{Arbiter, Claimant};
use crate::failure::{JOIN_GRACE, Liveness};
use crate::lag::{LagControl, LagShared};
use crate::plane::{PrimaryPlane, TAG_HEARTBEAT, TAG_LOG};
use crate::shared::FtShared;
use crate::supervisor::Rebind;

use super::transport::JoinChannel;

/// How long the opening (connect, handshake, attach verdict) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a send on the join stream may block: a joiner that stops
/// reading fails the copy instead of holding it (and, at the pause, the
/// guest) for longer.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the copy waits for the guest's next join point.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a primary alone with no spare to join waits before it asks
/// its spares (a registry read) again.
const NO_SPARE_WAIT: Duration = Duration::from_millis(500);
/// How long the heartbeat port may stay taken by the retired plane.
const BIND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a join did not complete. The primary serves on alone in every case.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("beginning a new epoch at the arbiter")]
    Arbiter(#[source] crate::arbiter::ArbiterError),
    #[error("connecting to the new backup at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the logging channel to {addr}")]
    Open {
        addr: SocketAddr,
        #[source]
        source: logchan::secure::HandshakeError,
    },
    #[error("copying the guest")]
    Copy(#[source] SnapshotError),
    #[error("setting up the joined backup's channel: {0}")]
    Setup(String),
}

/// What a primary knows for every join of its run.
pub struct JoinSetup {
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub ctl: Arc<JoinCtl>,
    pub shared: Arc<VmShared>,
    pub identity: GuestIdentity,
    /// The guest configuration (the attach request's `Boot`).
    pub boot: Vec<u8>,
    pub security: Security,
    pub arbiter: Box<dyn Arbiter>,
    pub who: Claimant,
    pub live: Liveness,
    pub lease: Duration,
    pub log: LogConfig,
    pub policy: DigestPolicy,
    pub keepalive: Duration,
    /// The heartbeat port, on this side and the backup's (0: the port of
    /// the backup joined, as a backup's own default).
    pub hb_port: u16,
    pub rebind: Rebind,
    /// The main thread, which supervises (woken by the new run's events).
    pub main_thread: Thread,
    pub copy: CopyOptions,
    /// A failed join's run being settled at the arbiter (`settle`): no
    /// new join begins a later epoch before the supervisor has claimed it.
    pub settling: std::sync::Mutex<Option<Arc<FtShared>>>,
    /// The primary's lag samples and throttle target: a joined backup's
    /// plane measures its lag and brakes the guest with them
    /// (docs/throttling.md). `None`: measure nothing (a backup gone live,
    /// whose guest has no pacer).
    pub lag: Option<(Arc<LagShared>, Option<Duration>)>,
    /// The operator's say over re-protection (docs/operator-actions.md).
    pub control: Arc<super::control::Protection>,
}

/// A completed join.
pub struct Joined {
    pub epoch: u64,
    pub stats: JoinStats,
    /// The guest's whole pause at the join point.
    pub pause: Duration,
    /// In the pause: from the frozen state's hand-over to the last message
    /// sent, and then the new channel's setup.
    pub sent: Duration,
    pub setup: Duration,
    pub ft: Arc<FtShared>,
}

/// Binds the heartbeat socket, waiting for the retired plane to free it.
///
/// Counted in tries, not against a deadline: the port is freed by this
/// process's own vCPU and I/O threads (the retire at the next sync exit,
/// then its drain), so a stop of the whole process (SIGSTOP, a starved
/// host) must not use up the wait while they did not run either. With a
/// deadline, a primary stopped for more than 2 s here woke to a deadline
/// already past and failed the join (`tests/ft_join_pause.rs`).
fn bind_heartbeat(local: std::net::IpAddr, port: u16) -> Result<UdpSocket, JoinError> {
    const TRY_EVERY: Duration = Duration::from_millis(20);
    let tries = BIND_TIMEOUT.as_millis() / TRY_EVERY.as_millis();
    let mut tried = 0;
    loop {
        tried += 1;
        match UdpSocket::bind((local, port)) {
            Ok(s) => return Ok(s),
            Err(e) if tried >= tries => {
                return Err(JoinError::Setup(format!(
                    "binding the heartbeat port {local}:{port}: {e}"
                )));
            }
            Err(_) => std::thread::sleep(TRY_EVERY),
        }
    }
}

/// Joins the backup waiting at `addr`: opens the channel (its admission
/// checks this guest), copies the running guest, and switches the primary
/// to logging for it at the join point. `lockstep status` follows it.
pub fn join_backup(setup: &JoinSetup, addr: SocketAddr) -> Result<Joined, JoinError> {
    let join = &setup.shared.status.join;
    join.start(setup.identity.mem_size / lockstep_vmm::snapshot::memory::PAGE as u64);
    let result = try_join(setup, addr);
    join.end(result.as_ref().err().map(|e| chain(e)));
    result
}

/// An error with its causes, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why.push_str(&format!(": {s}"));
        src = s.source();
    }
    why
}

fn try_join(setup: &JoinSetup, addr: SocketAddr) -> Result<Joined, JoinError> {
    let status = &setup.shared.status;
    let epoch = setup
        .arbiter
        .begin_next(&setup.who)
        .map_err(JoinError::Arbiter)?;
    // The new log goes on where the last one stopped; a stream whose
    // first seq is above 1 tells the backup a join stream comes first.
    let first_seq = status
        .log_seq
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_add(1)
        .max(2);
    let mut header = StreamHeader::new(
        setup.identity,
        logchan::header::flags::READ_DATA_LOGGED,
        epoch,
    )
    .with_lease_ms(u32::try_from(setup.lease.as_millis()).unwrap_or(u32::MAX));
    header.first_seq = first_seq;
    let attach = AttachRequest {
        header,
        boot: setup.boot.clone(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, OPEN_TIMEOUT)
        .map_err(|source| JoinError::Connect { addr, source })?;
    let mut session = initiate(
        &mut stream,
        &setup.security,
        &attach,
        Instant::now() + OPEN_TIMEOUT,
    )
    .map_err(|source| JoinError::Open { addr, source })?;
    tracing::info!("joining the backup at {addr} (epoch {epoch}, log from seq {first_seq})");
    let wake = || setup.shared.wake_vcpu();
    // The lone primary's plane lets go of its sockets now.
    setup.ctl.begin(wake);
    let local = stream
        .local_addr()
        .map_err(|e| JoinError::Setup(format!("local address: {e}")))?;
    let hb_port = match setup.hb_port {
        0 => addr.port(),
        p => p,
    };
    let udp = bind_heartbeat(local.ip(), hb_port)?;
    let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
    let (producer, consumer) = logchan::log_buffers_with(&LogConfig {
        first_seq,
        ..setup.log.clone()
    })
    .map_err(|e| JoinError::Setup(format!("log buffers: {e}")))?;
    let recorder = Recorder::new(producer, true, setup.policy);
    let hello = Hello {
        mem_size: setup.identity.mem_size,
        kernel_hash: setup.identity.kernel_hash,
        boot_hash: setup.identity.boot_hash,
    };
    status.set_role(Role::PrimaryAlone);
    // When the guest stood at the join point and handed over its state:
    // from there the joiner may hold all of it, so a failure is settled at
    // the arbiter (`settle`); and the rest of the pause is this thread's
    // (the last sends, the new channel).
    let frozen_at = std::cell::Cell::new(None);
    let copied = PreCopy::start(setup.vm.clone(), setup.mem.clone()).and_then(|precopy| {
        let mut sink = JoinChannel::new(&stream, session.records.as_mut());
        let mut progress = |round: u32, pages: u64| status.join.round(u64::from(round), pages);
        stream::send_clone(
            &mut sink,
            precopy,
            &hello,
            setup.copy,
            &mut progress,
            |precopy| {
                let frozen = setup.ctl.pause(
                    PauseKit {
                        precopy,
                        recorder: Some(recorder),
                        keepalive: Some(setup.keepalive),
                    },
                    wake,
                    PAUSE_TIMEOUT,
                );
                if frozen.is_ok() {
                    frozen_at.set(Some(Instant::now()));
                }
                frozen
            },
        )
    });
    let ft = Arc::new(FtShared::default());
    let _ = ft.main_thread.set(setup.main_thread.clone());
    let stats = match copied {
        Ok(stats) => stats,
        Err(e) => {
            setup.ctl.resume(Resume::Abandon);
            if frozen_at.get().is_some() {
                settle(setup, epoch, ft, "the join's last messages were not sent");
            }
            return Err(JoinError::Copy(e));
        }
    };
    let sent_at = Instant::now();
    // The joiner has the whole state: the log stream follows on the same
    // connection, from the I/O thread, under the output rule.
    let _ = stream.set_write_timeout(None);
    let plane = switch_fault().and_then(|()| {
        SenderEngine::new(stream, consumer, header, TAG_LOG, SenderOptions::default())
            .map_err(|e| JoinError::Setup(format!("logging channel: {e}")))
            .map(|s| s.secured(session.records.take()))
            .and_then(|sender| {
                let peer = SocketAddr::new(addr.ip(), hb_port);
                let heartbeat = HeartbeatEngine::new(
                    udp,
                    peer,
                    BeatRole::Primary,
                    epoch,
                    setup.live.period,
                    TAG_HEARTBEAT,
                )
                .map_err(|e| JoinError::Setup(format!("heartbeats: {e}")))?
                .with_keys(session.beats.take());
                // The joiner answered every round and holds the whole
                // state: it is not starting a VM, so silence from it is
                // failure after a short grace, not the boot's 10 s, or a
                // joiner stopped or dead at the join point holds every
                // output that long (docs/join.md, "Failures").
                let plane = PrimaryPlane::new(
                    sender,
                    heartbeat,
                    setup.live,
                    setup.lease,
                    ft.clone(),
                    status.clone(),
                )
                .with_startup_grace(JOIN_GRACE.max(setup.live.timeout));
                Ok(match &setup.lag {
                    Some((lag, target)) => {
                        plane.with_lag(LagControl::new(lag.clone(), *target, status.clone()))
                    }
                    None => plane,
                })
            })
    });
    let plane = match plane {
        Ok(p) => p,
        Err(e) => {
            setup.ctl.resume(Resume::Abandon);
            settle(
                setup,
                epoch,
                ft,
                "the joined backup's channel could not be set up",
            );
            return Err(e);
        }
    };
    let built_at = Instant::now();
    // The supervisor watches the new run before its first verdict can come.
    setup.rebind.to(epoch, ft.clone());
    StatusCounters::set(&status.epoch, epoch);
    status.set_peer(&addr.to_string());
    if !setup.ctl.resume(Resume::Switch(Some(Box::new(plane)))) {
        settle(
            setup,
            epoch,
            ft,
            "the guest gave up waiting at the join point",
        );
        return Err(JoinError::Setup(
            "the paused guest went on before the switch (the copy was too slow)".into(),
        ));
    }
    let pause = setup
        .ctl
        .wait_pause(PAUSE_TIMEOUT)
        .unwrap_or(Duration::from_micros(stats.pause_us));
    status.set_role(Role::Primary);
    let since_frozen = |t: Instant| frozen_at.get().map_or(Duration::ZERO, |f| t - f);
    Ok(Joined {
        epoch,
        stats,
        pause,
        sent: since_frozen(sent_at),
        setup: built_at - sent_at,
        ft,
    })
}

/// Tests: the joined backup's channel cannot be set up after the joiner
/// received the whole state (a join failing at its last step);
/// `join-switch-wait` holds that step (a test begins an outage meanwhile).
fn switch_fault() -> Result<(), JoinError> {
    fail::fail_point!("join-switch-wait");
    fail::fail_point!("join-switch", |_| Err(JoinError::Setup(
        "fail point join-switch".into()
    )));
    Ok(())
}

/// A join that failed once the joiner may hold the whole state. The guest
/// goes on alone at once, releasing outputs: safe because the new log
/// never began — its plane is installed only by the switch that failed —
/// and a backup claims nothing before its stream's first entry (a joiner
/// that gets none stops: `lockstep backup`, "the primary sent no boot
/// entry"), so no joiner can go live from the join point
/// (`tests/ft_join_faults.rs`). The new epoch is still settled as a lost
/// backup is, so that nothing can ever win it against this primary: the
/// supervisor, rebound to the new run with the peer declared dead, claims
/// it (retrying through an arbiter outage).
fn settle(setup: &JoinSetup, epoch: u64, ft: Arc<FtShared>, why: &str) {
    tracing::warn!(
        "join of epoch {epoch} failed after the pause: {why}; settling it at the arbiter"
    );
    ft.note(why.to_string());
    setup.rebind.to(epoch, ft.clone());
    ft.set(&ft.peer_dead);
    if let Ok(mut s) = setup.settling.lock() {
        *s = Some(ft);
    }
}

/// Re-protection: whenever the pair run `current` leaves this primary
/// alone (or from the start, with `current` = `None`), join the first of
/// the targets `setup.control` names that accepts, retrying with back-off
/// (woken early by the operator's actions); ends when the VM stops.
pub fn reprotect(setup: JoinSetup, mut current: Option<Arc<FtShared>>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        // Alone: a primary whose backup was lost, or a backup gone live,
        // once the supervisor settled it (role primary-alone).
        let alone = setup.shared.status.role() == Role::PrimaryAlone
            && setup.shared.status.join.hold() == Hold::None
            && current
                .as_ref()
                .is_none_or(|ft| FtShared::flag(&ft.alone) || FtShared::flag(&ft.go_live));
        if setup.shared.stop_requested() || setup.shared.forced() {
            return;
        }
        if !alone {
            setup.control.wait(Duration::from_millis(20));
            continue;
        }
        let targets = setup.control.targets(&setup.shared.status.join);
        if targets.is_empty() {
            // No spare now (none listed, or none registered): look again
            // after a while, or at once when the operator aims a join.
            setup.control.wait(NO_SPARE_WAIT);
            continue;
        }
        let started = Instant::now();
        let mut joined = None;
        for &addr in &targets {
            let attempt = setup.control.attempt(addr, &setup.shared.status.join, || {
                join_backup(&setup, addr)
            });
            match attempt {
                // The operator holds re-protection now.
                None => break,
                Some(Ok(j)) => {
                    joined = Some(j);
                    break;
                }
                Some(Err(e)) => {
                    let why = chain(&e);
                    tracing::warn!("no backup joined at {addr} ({why}); serving on alone");
                }
            }
        }
        match joined {
            Some(j) => {
                tracing::info!(
                    "protected again (epoch {}): {} pre-copy rounds, {} pages ({} at the pause), guest paused {:.3} ms (state capture {:.3} ms, last pages and state sent in {:.3} ms, channel set up in {:.3} ms), join took {} ms",
                    j.epoch,
                    j.stats.rounds,
                    j.stats.pages,
                    j.stats.final_pages,
                    j.pause.as_secs_f64() * 1e3,
                    j.stats.pause_us as f64 / 1e3,
                    j.sent.as_secs_f64() * 1e3,
                    j.setup.as_secs_f64() * 1e3,
                    started.elapsed().as_millis()
                );
                current = Some(j.ft);
                backoff = Duration::from_millis(200);
            }
            None => {
                // A failed join being settled: wait for the supervisor's
                // claim (won: alone again; lost: the VM stops) first.
                if let Some(ft) = setup.settling.lock().ok().and_then(|mut s| s.take()) {
                    current = Some(ft);
                }
                setup.control.wait(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
