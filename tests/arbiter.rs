//! The arbiters against real storage: a temporary directory for `file:`,
//! a real `etcd` process (Debian `etcd-server`) for `etcd://`. Races run
//! between threads and between processes (this test binary re-executes
//! itself as the racing children); every test is bounded in time.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lockstep_ft::arbiter::{
    self, Arbiter, ArbiterError, Claim, Claimant, EtcdArbiter, FileArbiter, URI_FORMS,
};

mod common;

const CHILD_ENV: &str = "LOCKSTEP_ARBITER_CHILD";
const READY: &str = "ARBITER-READY";
const RESULT: &str = "ARBITER-RESULT:";

use common::tempdir;

fn file_uri(dir: &Path) -> String {
    format!("file:{}/arbiter", dir.display())
}

fn open(uri: &str) -> Box<dyn Arbiter> {
    arbiter::parse(uri).unwrap_or_else(|e| panic!("parse {uri}: {e}"))
}

/// A claimant named `name`, with a token of its own.
fn who(name: &str) -> Claimant {
    Claimant::new(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Begins `epoch` (claims are only for begun epochs).
fn begun(uri: &str, epoch: u64) {
    open(uri)
        .begin(epoch, &who("starter"))
        .unwrap_or_else(|e| panic!("begin {epoch}: {e}"));
}

/// `threads` sides, each with its own arbiter instance, claim `epoch` at
/// the same moment. Returns every answer, by side name.
fn race_threads(uri: &str, epoch: u64, threads: usize) -> Vec<(String, Claim)> {
    let names: Vec<String> = (0..threads).map(|i| format!("thread-{i}")).collect();
    race_named(uri, epoch, &names)
}

/// One thread per name (names may repeat: each thread has its own token).
fn race_named(uri: &str, epoch: u64, names: &[String]) -> Vec<(String, Claim)> {
    let barrier = Arc::new(Barrier::new(names.len()));
    let handles: Vec<_> = names
        .iter()
        .map(|name| {
            let barrier = barrier.clone();
            let arbiter = open(uri);
            let me = who(name);
            std::thread::spawn(move || {
                barrier.wait();
                let claim = arbiter
                    .claim(epoch, &me)
                    .unwrap_or_else(|e| panic!("{}: claim epoch {epoch}: {e}", me.name()));
                (me.name().to_string(), claim)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("racing thread panicked"))
        .collect()
}

/// Exactly one winner; every loser names it.
fn assert_one_winner(results: &[(String, Claim)]) {
    let winners: Vec<&String> = results
        .iter()
        .filter(|(_, c)| *c == Claim::Won)
        .map(|(w, _)| w)
        .collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?} in {results:?}");
    for (who, claim) in results {
        if let Claim::Lost { winner } = claim {
            assert_eq!(winner, winners[0], "{who} was told the wrong winner");
        }
    }
}

/// A racing child process: this test binary, running only `child_claim`.
struct ChildSide {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl ChildSide {
    fn spawn(uri: &str, epoch: u64, name: &str) -> ChildSide {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", "child_claim", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{epoch} {name} {uri}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn racing child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        ChildSide {
            name: name.to_string(),
            child,
            stdin,
            stdout,
        }
    }

    /// What follows `marker` on the next line that has it (the test
    /// harness prints its own text, also on the same line).
    fn line_with(&mut self, marker: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("read child");
            assert!(n > 0, "child {} ended before {marker}", self.name);
            if let Some(at) = line.find(marker) {
                return line[at + marker.len()..].trim().to_string();
            }
        }
    }
}

impl Drop for ChildSide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the body of a racing child process. Without the
/// environment variable (a normal test run) it does nothing.
#[test]
fn child_claim() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ' ');
    let (Some(epoch), Some(name), Some(uri)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_ENV}={spec:?}");
    };
    let epoch: u64 = epoch.parse().expect("epoch");
    let arbiter = open(uri);
    println!("{READY}");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("wait for go");
    match arbiter.claim(epoch, &who(name)) {
        Ok(Claim::Won) => println!("{RESULT} won"),
        Ok(Claim::Lost { winner }) => println!("{RESULT} lost {winner}"),
        Err(e) => println!("{RESULT} error {e}"),
    }
}

/// `n` processes claim `epoch` together (released at once after all are
/// ready).
fn race_processes(uri: &str, epoch: u64, n: usize) -> Vec<(String, Claim)> {
    let mut sides: Vec<ChildSide> = (0..n)
        .map(|i| ChildSide::spawn(uri, epoch, &format!("proc-{i}")))
        .collect();
    for side in &mut sides {
        side.line_with(READY);
    }
    for side in &mut sides {
        let mut stdin = side.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("release child");
    }
    sides
        .iter_mut()
        .map(|side| {
            let result = side.line_with(RESULT);
            let claim = if result == "won" {
                Claim::Won
            } else if let Some(winner) = result.strip_prefix("lost ") {
                Claim::Lost {
                    winner: winner.to_string(),
                }
            } else {
                panic!("{}: {result}", side.name);
            };
            (side.name.clone(), claim)
        })
        .collect()
}

// ---------------------------------------------------------------- file: --

#[test]
fn file_threads_race_for_each_epoch() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    for epoch in 1..=20 {
        begun(&uri, epoch);
        assert_one_winner(&race_threads(&uri, epoch, 12));
    }
}

#[test]
fn file_processes_race_for_each_epoch() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    for epoch in 1..=3 {
        begun(&uri, epoch);
        let results = race_processes(&uri, epoch, 6);
        assert_one_winner(&results);
        // The record names the winner for anyone asking later.
        let late = open(&uri)
            .claim(epoch, &who("latecomer"))
            .expect("late claim");
        let winner = results.iter().find(|(_, c)| *c == Claim::Won).map(|r| &r.0);
        assert_eq!(
            Some(&late),
            winner.map(|w| Claim::Lost { winner: w.clone() }).as_ref()
        );
    }
}

/// The epoch rules every backend keeps (a fresh arbiter at `uri`).
fn epochs_begin_and_supersede(uri: &str) {
    let a = open(uri);
    let (pa, pb, pc) = (who("primary-a"), who("primary-b"), who("primary-c"));
    assert_eq!(a.latest_epoch().expect("latest"), 0);
    assert_eq!(a.begin_next(&pa).expect("begin"), 1);
    assert_eq!(a.latest_epoch().expect("latest"), 1);
    // Begun, never claimed: the next run still gets a higher epoch.
    assert_eq!(a.begin_next(&pb).expect("begin"), 2);
    assert_eq!(a.latest_epoch().expect("latest"), 2);
    // Repeating one's own begin is fine; taking someone else's is not.
    a.begin(2, &pb).expect("idempotent begin");
    assert!(matches!(
        a.begin(2, &pc),
        Err(ArbiterError::EpochTaken { epoch: 2, ref by }) if by == "primary-b"
    ));
    assert!(matches!(
        a.begin(1, &pc),
        Err(ArbiterError::EpochTaken { .. })
    ));
    // The same name is not the same side: another token is another claimant.
    assert!(matches!(
        a.begin(2, &who("primary-b")),
        Err(ArbiterError::EpochTaken { .. })
    ));
    // A stale side of epoch 1 can no longer win: epoch 2 has begun.
    match a.claim(1, &who("backup-a")).expect("stale claim") {
        Claim::Lost { winner } => assert!(winner.contains("primary-b"), "{winner}"),
        Claim::Won => panic!("a stale epoch won"),
    }
    // primary-a's own begin of epoch 1 stands.
    a.begin(1, &pa).expect("own begin");
    // The current epoch is claimable, once.
    let bb = who("backup-b");
    assert_eq!(a.claim(2, &bb).expect("claim"), Claim::Won);
    assert_eq!(a.claim(2, &bb).expect("retry"), Claim::Won);
    assert_eq!(
        a.claim(2, &pb).expect("claim"),
        Claim::Lost {
            winner: "backup-b".into()
        }
    );
    // Only a begun epoch can be claimed: a made-up one is refused.
    assert!(matches!(
        a.claim(9, &who("forger")),
        Err(ArbiterError::NotBegun { epoch: 9 })
    ));
    a.begin(5, &who("x")).expect("begin 5");
    assert_eq!(a.claim(5, &who("y")).expect("claim"), Claim::Won);
    assert_eq!(a.latest_epoch().expect("latest"), 5);
    assert!(matches!(
        a.begin(4, &who("z")),
        Err(ArbiterError::Stale {
            epoch: 4,
            latest: 5
        })
    ));
}

#[test]
fn file_epochs_begin_and_supersede() {
    let dir = tempdir();
    epochs_begin_and_supersede(&file_uri(dir.path()));
}

#[test]
fn file_two_processes_with_one_name_never_both_win() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    for epoch in 1..=10 {
        begun(&uri, epoch);
        let names = vec!["twin".to_string(); 6];
        let results = race_named(&uri, epoch, &names);
        let won = results.iter().filter(|(_, c)| *c == Claim::Won).count();
        assert_eq!(won, 1, "epoch {epoch}: {results:?}");
    }
}

#[test]
fn file_a_claim_created_but_never_written_does_not_stop_the_survivor() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    let a = FileArbiter::new(&uri, &format!("{}/arbiter", dir.path().display())).expect("new");
    begun(&uri, 3);
    // A claimant of an older build crashed between its create and its
    // write: an empty record.
    std::fs::File::create(a.claim_path(3)).expect("create");
    let survivor = who("survivor");
    let t = Instant::now();
    assert_eq!(a.claim(3, &survivor).expect("claim"), Claim::Won);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Everyone agrees afterwards, at once.
    assert_eq!(
        a.claim(3, &who("other")).expect("claim"),
        Claim::Lost {
            winner: "survivor".into()
        }
    );
    assert_eq!(a.claim(3, &survivor).expect("retry"), Claim::Won);
    // Two survivors racing past the same void record: one wins.
    begun(&uri, 4);
    std::fs::File::create(a.claim_path(4)).expect("create");
    assert_one_winner(&race_threads(&uri, 4, 6));
}

#[test]
fn file_no_epoch_past_the_last() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    let a = FileArbiter::new(&uri, &format!("{}/arbiter", dir.path().display())).expect("new");
    std::fs::write(a.begun_path(u64::MAX), "someone 00ff\n").expect("write");
    assert_eq!(a.latest_epoch().expect("latest"), u64::MAX);
    assert!(matches!(
        a.begin_next(&who("p")),
        Err(ArbiterError::EpochsExhausted)
    ));
}

#[test]
fn file_loser_waits_for_a_winner_mid_write() {
    let dir = tempdir();
    let uri = file_uri(dir.path());
    let a = FileArbiter::new(&uri, &format!("{}/arbiter", dir.path().display())).expect("new");
    begun(&uri, 3);
    let path = a.claim_path(3);
    // An older build's winner that has created its record but not yet
    // written its name.
    std::fs::File::create(&path).expect("create");
    let writer = std::thread::spawn({
        let path = path.clone();
        move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(&path, "slow-winner 0a0b\n").expect("write");
        }
    });
    let t = Instant::now();
    assert_eq!(
        a.claim(3, &who("me")).expect("claim"),
        Claim::Lost {
            winner: "slow-winner".into()
        }
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
    writer.join().expect("writer");
}

#[test]
fn file_missing_directory_is_an_error_and_is_not_created() {
    let dir = tempdir();
    let missing = dir.path().join("not-mounted");
    let a = open(&format!("file:{}/arbiter", missing.display()));
    let err = a
        .claim(1, &who("me"))
        .expect_err("claim without a directory");
    assert!(matches!(err, ArbiterError::NoDirectory { .. }), "{err}");
    assert!(err.to_string().contains("not-mounted"), "{err}");
    assert!(a.latest_epoch().is_err());
    assert!(!missing.exists(), "the arbiter created a local directory");
    // PATH itself a directory: refused with a hint.
    let err = open(&format!("file:{}", dir.path().display()))
        .claim(1, &who("me"))
        .expect_err("PATH is a directory");
    assert!(err.to_string().contains("is a directory"), "{err}");
}

// -------------------------------------------------------------- etcd:// --

use common::etcd::Etcd;

#[test]
fn etcd_threads_and_processes_race() {
    let etcd = Etcd::start();
    let uri = etcd.uri("lockstep/race");
    for epoch in 1..=10 {
        begun(&uri, epoch);
        assert_one_winner(&race_threads(&uri, epoch, 8));
    }
    for epoch in 11..=12 {
        begun(&uri, epoch);
        assert_one_winner(&race_processes(&uri, epoch, 5));
    }
    begun(&uri, 13);
    let twins = race_named(&uri, 13, &vec!["twin".to_string(); 5]);
    assert_eq!(twins.iter().filter(|(_, c)| *c == Claim::Won).count(), 1);
    assert_eq!(open(&uri).latest_epoch().expect("latest"), 13);
    // Another KEY is another arbiter.
    assert_eq!(
        open(&etcd.uri("lockstep/other"))
            .latest_epoch()
            .expect("latest"),
        0
    );
}

#[test]
fn etcd_epochs_begin_and_supersede() {
    let etcd = Etcd::start();
    epochs_begin_and_supersede(&etcd.uri("vm1"));
    // A second endpoint that is down does not matter while the first
    // answers, and the order does not matter either.
    let dead = format!("127.0.0.1:{}", common::etcd::free_port());
    let both = open(&format!("etcd://{dead},{}/vm1", etcd.client_addr()));
    assert_eq!(both.latest_epoch().expect("latest via second endpoint"), 5);
}

#[test]
fn etcd_unreachable_means_no_win() {
    let etcd = Etcd::start();
    let uri = etcd.uri("vm2");
    let a = open(&uri);
    assert_eq!(a.begin_next(&who("p")).expect("begin"), 1);
    drop(etcd);
    let t = Instant::now();
    let err = a.claim(1, &who("b")).expect_err("claim with etcd gone");
    assert!(
        matches!(err, ArbiterError::Unreachable { .. }),
        "{err}: {:?}",
        std::error::Error::source(&err)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Something that accepts but never answers: a timeout, not a hang.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let rest = format!("{addr}/vm3");
    let slow = EtcdArbiter::new(&format!("etcd://{rest}"), &rest)
        .expect("uri")
        .with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let err = slow
        .claim(1, &who("b"))
        .expect_err("claim against a silent server");
    assert!(matches!(err, ArbiterError::Unreachable { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

// ------------------------------------------------------------ URIs etc. --

#[test]
fn bad_uris_are_refused_with_the_grammar() {
    for uri in [
        "",
        "/var/lib/lockstep/arbiter",
        "nfs:/x",
        "file:",
        "file:/var/lib/lockstep/",
        "file://otherhost/var/x",
        "etcd://",
        "etcd://127.0.0.1:2379",
        "etcd://127.0.0.1:2379/",
        "etcd://127.0.0.1/key",
        "etcd://127.0.0.1:notaport/key",
        "etcd://127.0.0.1:0/key",
        "etcd://:2379/key",
        "etcd://user:pw@127.0.0.1:2379/key",
        "etcd://127.0.0.1:2379/key?x=1",
    ] {
        match arbiter::parse(uri) {
            Ok(a) => panic!("{uri:?} was accepted as {}", a.describe()),
            Err(e) => {
                assert!(matches!(e, ArbiterError::BadUri { .. }), "{uri:?}: {e}");
                assert!(e.to_string().contains(URI_FORMS), "{uri:?}: {e}");
            }
        }
    }
    for uri in [
        "file:/var/lib/lockstep/arbiter",
        "file:///var/lib/lockstep/arbiter",
        "file:relative/arbiter",
        "etcd://127.0.0.1:2379/lockstep/vm1",
        "etcd://etcd-1:2379,etcd-2:2379,[::1]:2379/vm1",
    ] {
        let a = arbiter::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(a.describe(), uri);
    }
}

#[test]
fn bad_names_and_epoch_zero_are_refused() {
    let dir = tempdir();
    let a = open(&file_uri(dir.path()));
    for name in ["", "two\nlines", &"x".repeat(256)] {
        assert!(
            matches!(Claimant::new(name), Err(ArbiterError::BadName { .. })),
            "{name:?}"
        );
    }
    let me = who("me");
    assert!(matches!(a.claim(0, &me), Err(ArbiterError::EpochZero)));
    assert!(matches!(a.begin(0, &me), Err(ArbiterError::EpochZero)));
    // Nothing was recorded by the refused calls.
    assert_eq!(a.latest_epoch().expect("latest"), 0);
}
