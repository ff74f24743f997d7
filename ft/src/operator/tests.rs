//! The actions' decisions without a VM: what does not fit is refused with
//! its reason, a drop goes through the supervisor's claim (simulated
//! here), a hold shows in the protection state, a test failover fences
//! only after its answer.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

fn operator(spares: Vec<SocketAddr>, role: Role) -> (Operator, Arc<VmShared>, Arc<AtomicBool>) {
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let mut op = Operator::new(
        Arc::new(Protection::new((!spares.is_empty()).then(|| {
            Box::new(crate::membership::StaticSpares(spares)) as Box<dyn crate::membership::Spares>
        }))),
        Hold::None,
        Box::new(move || flag.store(true, Ordering::SeqCst)),
        9,
    );
    op.deadline = Duration::from_secs(5);
    let shared = Arc::new(VmShared::default());
    shared.status.set_role(role);
    op.attach(shared.clone());
    (op, shared, stopped)
}

fn refused(a: Answered) -> String {
    match a.outcome {
        Outcome::Conflict(t) | Outcome::BadRequest(t) => t,
        other => panic!("not refused: {other:?}"),
    }
}

/// The supervisor's part of a drop: once the backup is dropped, it claims
/// the epoch and wins (`won`) or loses.
fn supervisor(ft: Arc<FtShared>, shared: Arc<VmShared>, won: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !(FtShared::flag(&ft.peer_dead) && FtShared::flag(&ft.dropped)) {
            std::thread::yield_now();
        }
        if won {
            shared.status.set_role(Role::PrimaryAlone);
            ft.set(&ft.alone);
        } else {
            shared.status.set_role(Role::Stopped);
        }
    })
}

#[test]
fn actions_that_do_not_fit_are_refused_with_the_reason() {
    let (op, shared, _) = operator(Vec::new(), Role::PrimaryAlone);
    let on = op.act(Action::On { target: None });
    assert!(refused(on).contains("no spare to join"));
    assert!(refused(op.act(Action::Resume)).contains("not suspended"));
    assert!(refused(op.act(Action::TestFailover)).contains("needs a protected VM"));
    assert!(refused(op.act(Action::TestRestartBackup)).contains("needs a protected VM"));
    let bad = op.act(Action::On {
        target: Some("no-such-host.invalid:7000".into()),
    });
    assert!(refused(bad).contains("cannot resolve"));
    shared.status.set_role(Role::Primary);
    assert!(refused(op.act(Action::On { target: None })).contains("already protected"));
    // A lost backup the supervisor cannot settle yet is no protection.
    let unreachable = &shared.status.join.arbiter_unreachable;
    unreachable.store(true, Ordering::Relaxed);
    assert!(refused(op.act(Action::TestFailover)).contains("arbiter unreachable"));
    assert!(refused(op.act(Action::On { target: None })).contains("settled first"));
    unreachable.store(false, Ordering::Relaxed);
    shared.status.set_role(Role::Backup);
    assert!(refused(op.act(Action::Off)).contains("role backup"));
}

#[test]
fn off_on_a_vm_alone_holds_re_protection_and_says_so() {
    let (op, shared, _) = operator(Vec::new(), Role::PrimaryAlone);
    match op.act(Action::Off).outcome {
        Outcome::Done(t) => assert!(
            t.contains("protection off (the VM was not protected"),
            "{t}"
        ),
        other => panic!("{other:?}"),
    }
    let status = &shared.status;
    assert_eq!(
        status.join.describe(status.role()),
        "not protected (turned off)"
    );
    assert!(refused(op.act(Action::Suspend)).contains("protection is off"));
    assert!(refused(op.act(Action::Resume)).contains("use `ft on`"));
}

#[test]
fn a_dropped_backup_is_claimed_like_a_lost_one_and_suspend_shows() {
    let spare: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let (op, shared, _) = operator(vec![spare], Role::Primary);
    let ft = Arc::new(FtShared::default());
    op.control.set_current(ft.clone(), "10.99.0.2:7000".into());
    let sup = supervisor(ft.clone(), shared.clone(), true);
    match op.act(Action::Suspend).outcome {
        Outcome::Done(t) => {
            assert!(t.contains("dropped the backup at 10.99.0.2:7000"), "{t}");
            assert!(t.contains("until `lockstep ft resume`"), "{t}");
        }
        other => panic!("{other:?}"),
    }
    sup.join().unwrap();
    assert!(FtShared::flag(&ft.dropped) && FtShared::flag(&ft.alone));
    let status = &shared.status;
    assert_eq!(
        status.join.describe(status.role()),
        "not protected (suspended by the operator)"
    );
    // The join thread may not begin a join while held.
    let attempted = op
        .control
        .attempt(spare, &status.join, || panic!("joined while held"));
    assert!(attempted.is_none());
}

#[test]
fn a_drop_whose_claim_is_lost_reports_that_the_backup_serves() {
    let (op, shared, _) = operator(Vec::new(), Role::Primary);
    let ft = Arc::new(FtShared::default());
    op.control.set_current(ft.clone(), "10.99.0.2:7000".into());
    let sup = supervisor(ft, shared, false);
    match op.act(Action::Off).outcome {
        Outcome::Failed(t) => assert!(t.contains("to the backup at 10.99.0.2:7000"), "{t}"),
        other => panic!("{other:?}"),
    }
    sup.join().unwrap();
}

#[test]
fn a_test_failover_fences_and_stops_only_after_its_answer() {
    let (op, shared, stopped) = operator(Vec::new(), Role::Primary);
    let ft = Arc::new(FtShared::default());
    op.control.set_current(ft.clone(), "10.99.0.2:7000".into());
    let Answered { outcome, then } = op.act(Action::TestFailover);
    match outcome {
        Outcome::Done(t) => assert!(t.contains("exit status 9"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert!(!FtShared::flag(&ft.fenced) && !stopped.load(Ordering::SeqCst));
    then.expect("a step after the answer")();
    assert!(FtShared::flag(&ft.fenced) && stopped.load(Ordering::SeqCst));
    assert_eq!(shared.status.role(), Role::Primary, "nothing else changed");
}
