//! The spares registry in a real etcd (docs/join.md, "Spares in etcd"),
//! without KVM: a waiting `lockstep backup --standby` registers its listen
//! address under the prefix; killed, its registration vanishes when its
//! lease expires; stopped cleanly, at once; kept alive, it outlives its
//! TTL, and registers again if its lease is lost. A primary's read skips
//! junk under the prefix and survives an etcd that does not answer; bad
//! URIs are refused with the grammar. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, free_port};
use common::*;
use lockstep_ft::etcd::Gateway;
use lockstep_ft::membership::{EtcdSpares, Spares, Standby};

/// A `lockstep backup --standby` on loopback, waiting for a primary that
/// never comes (no KVM is touched before one attaches).
fn standby(dir: &std::path::Path, etcd: &Etcd, name: &str, port: u16) -> Vmm {
    let mut cmd = std::process::Command::new(lockstep());
    cmd.args(["backup", "--listen", &format!("127.0.0.1:{port}"), "--disk"])
        .arg(dir.join("disk.img"))
        .args([
            "--standby",
            &etcd.uri("spares"),
            "--name",
            name,
            "--insecure",
        ])
        .arg("--arbiter")
        .arg(format!("file:{}/arbiter", dir.display()));
    let mut vmm = spawn_vmm(cmd);
    vmm.wait_for_line("waiting for the primary", Duration::from_secs(20));
    vmm
}

fn registered(spares: &EtcdSpares) -> Vec<(String, SocketAddr)> {
    spares
        .list()
        .expect("list the spares")
        .spares
        .into_iter()
        .map(|s| (s.name, s.addr))
        .collect()
}

#[test]
fn a_dead_spare_vanishes_with_its_lease_and_a_stopped_one_at_once() {
    let etcd = Etcd::start();
    let dir = tempdir();
    let reader = EtcdSpares::new(&etcd.uri("spares")).expect("uri");
    let (p1, p2) = (free_port(), free_port());
    let mut dead = standby(dir.path(), &etcd, "s1", p1);
    let mut stopped = standby(dir.path(), &etcd, "s2", p2);
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    wait_for(Duration::from_secs(10), "both spares to register", || {
        registered(&reader).len() == 2
    });
    assert_eq!(
        registered(&reader),
        [("s1".to_string(), addr(p1)), ("s2".to_string(), addr(p2))],
        "oldest registration first"
    );
    // Killed: nothing withdraws it; the lease (5 s) runs out.
    dead.signal(libc::SIGKILL);
    let killed = Instant::now();
    let _ = dead.wait_exit(Duration::from_secs(5));
    assert!(
        registered(&reader).iter().any(|(n, _)| n == "s1"),
        "a killed spare's key lives on until its lease expires"
    );
    wait_for(
        Duration::from_secs(15),
        "the dead spare's lease to expire",
        || !registered(&reader).iter().any(|(n, _)| n == "s1"),
    );
    eprintln!(
        "the dead spare vanished {:?} after its kill",
        killed.elapsed()
    );
    // Stopped cleanly: withdrawn before it exits.
    stopped.signal(libc::SIGTERM);
    let status = stopped.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status:?}\n{}", stopped.log());
    assert!(
        stopped.log().contains("withdrew spares/s2"),
        "{}",
        stopped.log()
    );
    assert_eq!(registered(&reader), [], "a stopped spare is gone at once");
}

#[test]
fn junk_under_the_prefix_is_skipped_and_an_unreachable_registry_offers_none() {
    let etcd = Etcd::start();
    let rest = format!("{}/spares", etcd.client_addr());
    let (gateway, _) = Gateway::parse(&etcd.uri("spares"), &rest, "PREFIX").expect("uri");
    let long = "1".repeat(100);
    for (key, value) in [
        ("spares/name", &b"a host name:7000"[..]),
        ("spares/dns", b"localhost:7000"),
        ("spares/any", b"0.0.0.0:7000"),
        ("spares/zero", b"127.0.0.1:0"),
        ("spares/long", long.as_bytes()),
        ("spares/", b"127.0.0.1:7002"),
        ("spares/bytes", b"\xff\xfe:7000"),
        ("sparesX/other", b"127.0.0.1:7003"),
    ] {
        gateway.put(key, value, None).expect("put junk");
    }
    let good = Standby::register(
        &etcd.uri("spares"),
        "good",
        SocketAddr::from(([127, 0, 0, 1], 7001)),
        Duration::from_secs(5),
    )
    .expect("register");
    let mut reader = EtcdSpares::new(&etcd.uri("spares")).expect("uri");
    wait_for(
        Duration::from_secs(10),
        "the good spare to register",
        || good.is_registered(),
    );
    let listing = reader.list().expect("list");
    assert_eq!(listing.junk.len(), 7, "{:?}", listing.junk);
    assert_eq!(
        reader.candidates(),
        [SocketAddr::from(([127, 0, 0, 1], 7001))]
    );
    // Withdrawn: gone at once.
    assert!(good.withdraw(Duration::from_secs(5)), "withdrawn in time");
    assert_eq!(reader.candidates(), []);
    // Nothing answers: no spares this round, no panic, bounded.
    let mut nowhere = EtcdSpares::new(&format!("etcd://127.0.0.1:{}/spares", free_port()))
        .expect("uri")
        .with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(nowhere.candidates(), []);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_kept_alive_spare_outlives_its_ttl_and_registers_again_if_its_lease_is_lost() {
    let etcd = Etcd::start();
    let uri = etcd.uri("spares");
    let rest = format!("{}/spares", etcd.client_addr());
    let (gateway, _) = Gateway::parse(&uri, &rest, "PREFIX").expect("uri");
    let lease = || {
        let range = gateway.range_prefix("spares/", 8).expect("range");
        range.kvs.first().map(|kv| kv.lease)
    };
    let ttl = Duration::from_secs(2);
    let spare = Standby::register(&uri, "kept", SocketAddr::from(([127, 0, 0, 1], 7001)), ttl)
        .expect("register");
    wait_for(Duration::from_secs(10), "the spare to register", || {
        spare.is_registered()
    });
    let first = lease().expect("the spare's key");
    // Kept alive through the gateway's streaming keep-alive: still there,
    // on the same lease, after twice its TTL (time passing is the point).
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        assert_eq!(lease(), Some(first), "the registration lapsed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second registration of the name does not take the key over.
    let held = gateway
        .put_if_absent("spares/kept", b"127.0.0.1:9", None)
        .expect("txn");
    assert_eq!(held.map(|kv| kv.value), Some(b"127.0.0.1:7001".to_vec()));
    // The lease lost (an etcd outage longer than the TTL): the key goes
    // with it, and the spare registers again on a new lease.
    gateway.revoke(first).expect("revoke");
    wait_for(Duration::from_secs(10), "a new registration", || {
        lease().is_some_and(|l| l != first)
    });
    assert!(spare.withdraw(Duration::from_secs(5)), "withdrawn in time");
    assert_eq!(lease(), None);
}

#[test]
fn bad_spares_and_standby_uris_are_refused_with_the_grammar() {
    let dir = tempdir();
    for (args, needle) in [
        (
            &[
                "backup",
                "--listen",
                "127.0.0.1:1",
                "--standby",
                "http://h:1/p",
            ][..],
            "etcd://HOST:PORT",
        ),
        (
            &[
                "backup",
                "--listen",
                "127.0.0.1:1",
                "--standby",
                "etcd://h:1",
            ],
            "PREFIX is missing",
        ),
        (
            &[
                "backup",
                "--listen",
                "0.0.0.0:1",
                "--standby",
                "etcd://h:1/p",
            ],
            "--listen on a specific address",
        ),
        (
            &[
                "backup",
                "--listen",
                "127.0.0.1:1",
                "--spares",
                "etcd://h:x/p",
            ],
            "is not HOST:PORT",
        ),
        (
            &["primary", "--spares", "etcd://h:1/p,10.0.0.1:7000"],
            "must be the only --spares value",
        ),
        (
            &["primary", "--spares", "10.0.0.1:7000,etcd://h:1/p"],
            "a URI must be the only value",
        ),
    ] {
        let mut child = std::process::Command::new(lockstep())
            .args(args)
            .arg("--disk")
            .arg(dir.path().join("disk.img"))
            .arg("--insecure")
            .arg("--arbiter")
            .arg(format!("file:{}/arbiter", dir.path().display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run lockstep");
        // Refused at once; one that is not would run a VM: bounded.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} was accepted: still running after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(!status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
