//! The guest's services through the whole stack: real KVM, a real tap in a
//! network namespace, stock clients (`redis-cli`, `redis-benchmark`, `curl`)
//! and our own RESP client where a test must know exactly what was
//! acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::resp::{Client, Reply};
use common::*;
use lockstep_bench::kvclient;

fn addr() -> String {
    format!("{GUEST_IP}:6379")
}

#[test]
fn redis_cli_and_curl_drive_the_guest() {
    if !kvm_available() {
        return;
    }
    let vm = KvVm::start("kv", &[]);
    assert!(
        vm.vmm
            .log()
            .contains("lockstep guest 0.1.0 (abi 1): workload=kv"),
        "{}",
        vm.vmm.log()
    );
    assert_eq!(vm.redis(&["ping"]), "PONG");
    assert_eq!(vm.redis(&["set", "greeting", "hello"]), "OK");
    assert_eq!(vm.redis(&["get", "greeting"]), "hello");
    assert_eq!(vm.redis(&["incr", "counter"]), "1");
    assert_eq!(vm.redis(&["incrby", "counter", "41"]), "42");
    assert_eq!(vm.redis(&["mset", "a", "1", "b", "2"]), "OK");
    assert_eq!(vm.redis(&["mget", "a", "b", "nope"]), "1\n2");
    assert_eq!(vm.redis(&["exists", "a", "b", "nope"]), "2");
    assert_eq!(vm.redis(&["del", "a"]), "1");
    assert_eq!(vm.redis(&["dbsize"]), "3");
    assert!(vm.redis(&["incr", "greeting"]).contains("not an integer"));

    let curl = |args: &[&str]| {
        let mut all = vec!["-s", "-S", "--max-time", "10"];
        all.extend_from_slice(args);
        let out = vm.client("curl", &all);
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let url = format!("http://{GUEST_IP}/kv/web%20key");
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--data-binary",
            "from curl",
            &url
        ]),
        "201"
    );
    assert_eq!(curl(&[&url]), "from curl");
    assert_eq!(
        vm.redis(&["get", "web key"]),
        "from curl",
        "HTTP and RESP share the store"
    );
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &url
        ]),
        "204"
    );
    assert_eq!(
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]),
        "404"
    );
    let stats = curl(&[&format!("http://{GUEST_IP}/stats")]);
    assert!(stats.contains("\"keys\":3"), "{stats}");
    // Keep-alive: two requests on one connection.
    let two = curl(&[
        "-w",
        "|",
        &format!("http://{GUEST_IP}/kv/greeting"),
        &format!("http://{GUEST_IP}/kv/counter"),
    ]);
    assert_eq!(two, "hello|42|");
}

fn benchmark(vm: &KvVm, extra: &[&str]) {
    let mut args = vec![
        "-h",
        GUEST_IP,
        "-n",
        "20000",
        "-c",
        "50",
        "-t",
        "set,get,incr,ping",
        "-q",
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = vm.client("redis-benchmark", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-benchmark {extra:?} failed: {stderr}\n{stdout}"
    );
    for t in ["SET", "GET", "INCR", "PING_INLINE", "PING_MBULK"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{t}: ")) && l.contains("requests per second")),
            "{t} missing from redis-benchmark {extra:?}:\n{stdout}"
        );
    }
    assert!(
        !stderr.contains("rror"),
        "redis-benchmark {extra:?} reported errors: {stderr}"
    );
    eprintln!("redis-benchmark {extra:?} took {:.1?}", started.elapsed());
}

#[test]
fn redis_benchmark_completes_without_errors_plain_and_pipelined() {
    if !kvm_available() {
        return;
    }
    let vm = KvVm::start("kb", &[]);
    benchmark(&vm, &[]);
    benchmark(&vm, &["-P", "16"]);
    // INCR ran 2 × 20,000 times on one counter: every one was applied once.
    assert_eq!(vm.redis(&["get", "counter:__rand_int__"]), "40000");
}

#[test]
fn every_acknowledged_set_survives_a_hard_kill_and_restart() {
    if !kvm_available() {
        return;
    }
    let mut vm = KvVm::start("kd", &[]);
    // Writers keep going until the VMM is killed under them; each records
    // the writes the guest acknowledged.
    let ns = vm.net.ns("c");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                in_netns(&ns, || {
                    let mut acked = Vec::new();
                    let Ok(mut c) = Client::connect(&addr()) else {
                        return acked;
                    };
                    for i in 0..100_000u32 {
                        let key = format!("w{w}:{i}");
                        match c.call(&[b"SET", key.as_bytes(), format!("v{i}").as_bytes()]) {
                            Ok(Reply::Simple(s)) if s == "OK" => acked.push(key),
                            _ => break,
                        }
                    }
                    acked
                })
            })
        })
        .collect();
    // Let them write for a while, then kill the VMM without warning.
    wait_for(Duration::from_secs(30), "writes to be acknowledged", || {
        vm.redis(&["dbsize"]).parse::<u64>().unwrap_or(0) > 2_000
    });
    vm.vmm.signal(libc::SIGKILL);
    vm.vmm.exit_status(Duration::from_secs(10));
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        acked.len() > 2_000,
        "only {} writes acknowledged",
        acked.len()
    );

    vm.restart(&[]);
    assert!(vm.vmm.log().contains("kv: recovered"), "{}", vm.vmm.log());
    let lost = in_netns(&vm.net.ns("c"), || {
        kvclient::check(&addr(), &acked)
            .unwrap_or_else(|e| panic!("reading back after the restart: {e:#}"))
    });
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    vm.stop();
}

/// Finds the last commit of the first log generation in a disk image:
/// returns (first sector, sectors) of it. Layout: docs/guest-services.md
/// (generation 1's superblock is in sector 1 and names its region).
fn last_commit(image: &[u8]) -> (usize, usize) {
    assert_eq!(&image[512..520], b"LKSTEPSB", "superblock of generation 1");
    let mut sector = u64::from_le_bytes(image[512 + 24..512 + 32].try_into().unwrap()) as usize;
    let mut last = None;
    loop {
        let at = sector * 512;
        if image.len() < at + 48 || &image[at..at + 4] != b"LKC1" {
            break;
        }
        let payload = u32::from_le_bytes(image[at + 28..at + 32].try_into().unwrap()) as usize;
        let sectors = (48 + payload).div_ceil(512);
        last = Some((sector, sectors));
        sector += sectors;
    }
    last.expect("no commit found in the image")
}

#[test]
fn a_torn_or_corrupted_log_tail_is_dropped_never_misread() {
    if !kvm_available() {
        return;
    }
    let mut vm = KvVm::start("kt", &[]);
    for i in 0..20 {
        assert_eq!(vm.redis(&["set", &format!("k{i}"), "v"]), "OK");
    }
    // The last commit: one big value spanning several sectors.
    let big = "x".repeat(3000);
    assert_eq!(vm.redis(&["set", "big", &big]), "OK");
    vm.stop();
    let pristine = std::fs::read(vm.disk()).expect("read image");
    let (first, sectors) = last_commit(&pristine);
    assert!(sectors >= 6, "the big value spans {sectors} sectors");

    type Damage = fn(&mut [u8], usize, usize);
    let cases: [(&str, Damage); 2] = [
        ("torn", |img, first, sectors| {
            let end = (first + sectors) * 512;
            img[end - 1024..end].fill(0); // the last two sectors never made it
        }),
        ("corrupt", |img, first, _| {
            img[first * 512 + 1000] ^= 0x40; // one flipped bit in the payload
        }),
    ];
    for (what, damage) in cases {
        let mut img = pristine.clone();
        damage(&mut img, first, sectors);
        std::fs::write(vm.disk(), &img).expect("write image");
        vm.restart(&[]);
        let log = vm.vmm.log();
        assert!(
            log.contains("kv: recovered 20 keys") && log.contains("tail: dropped"),
            "{what}: recovery must drop the damaged commit and keep the rest:\n{log}"
        );
        assert_eq!(vm.redis(&["get", "k19"]), "v", "{what}");
        assert_eq!(
            vm.redis(&["exists", "big"]),
            "0",
            "{what}: the damaged write is gone, not misread"
        );
        // New writes go on after the dropped tail and survive a restart.
        assert_eq!(vm.redis(&["set", "after", what]), "OK");
        vm.stop();
        vm.restart(&[]);
        assert!(
            vm.vmm.log().contains("tail: clean"),
            "{what}:\n{}",
            vm.vmm.log()
        );
        assert_eq!(vm.redis(&["get", "after"]), what);
        vm.stop();
    }
}

#[test]
fn hostile_clients_get_errors_and_everyone_else_keeps_being_served() {
    if !kvm_available() {
        return;
    }
    let vm = KvVm::start("kh", &[]);
    in_netns(&vm.net.ns("c"), || {
        let mut good = Client::connect(&addr()).expect("connect");
        let mut check = |round: &str| {
            let reply = good
                .call(&[b"INCR", b"alive"])
                .unwrap_or_else(|e| panic!("{round}: {e}"));
            assert!(matches!(reply, Reply::Int(_)), "{round}: {reply:?}");
        };
        check("start");

        // Binary garbage, an absurd bulk length, a negative multibulk count.
        for bad in [
            &b"\x00\xff\x13\x37garbage\r\n"[..],
            b"*1\r\n$999999999999\r\n",
            b"*-5\r\n*1\r\n",
        ] {
            let mut c = Client::connect(&addr()).expect("connect");
            c.raw(bad).expect("send");
            match c.read() {
                Ok(Reply::Error(e)) => {
                    assert!(e.contains("Protocol error") || e.contains("ERR"), "{e}")
                }
                Ok(other) => {
                    // Inline garbage is an unknown command, which is an error too.
                    panic!("{bad:?}: expected an error, got {other:?}")
                }
                Err(_) => {} // closed without a reply is acceptable
            }
            check("after garbage");
        }
        // Half a request, then the client vanishes.
        {
            let mut c = Client::connect(&addr()).expect("connect");
            c.raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk").expect("send");
        }
        check("after a half request");

        // HTTP garbage and an oversized header.
        for bad in [
            &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
            &[b'A'; 10_000][..],
        ] {
            use std::io::{Read, Write};
            let mut s =
                std::net::TcpStream::connect(format!("{GUEST_IP}:80")).expect("http connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            s.write_all(bad).expect("send");
            let mut reply = Vec::new();
            let _ = s.read_to_end(&mut reply);
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("HTTP/1.1 4"), "{text}");
            check("after HTTP garbage");
        }

        // A thousand connections at once: the excess is refused or closed.
        let mut crowd = Vec::new();
        for _ in 0..1000 {
            if let Ok(c) = std::net::TcpStream::connect_timeout(
                &addr().parse().unwrap(),
                Duration::from_secs(2),
            ) {
                crowd.push(c);
            }
        }
        check("with a thousand connections open");
        drop(crowd);
        check("after the crowd left");
    });
    assert!(vm.redis(&["get", "alive"]).parse::<u64>().unwrap_or(0) >= 8);
}

#[test]
fn hostile_clients_together_cannot_exhaust_the_guests_memory() {
    if !kvm_available() {
        return;
    }
    let vm = KvVm::start("km", &[]);
    in_netns(&vm.net.ns("c"), || {
        use std::io::Write;
        // Each starts an MSET of four 1 MiB values and never finishes it:
        // ~3 MiB held per connection, far past a quarter of a 128 MiB
        // guest's heap for 24 of them.
        let value = vec![b'x'; 1 << 20];
        let mut hogs = Vec::new();
        for _ in 0..24 {
            let mut s = std::net::TcpStream::connect(addr()).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(5))).ok();
            let mut req = b"*9\r\n$4\r\nMSET\r\n".to_vec();
            for k in 0..3 {
                req.extend_from_slice(format!("$2\r\nk{k}\r\n$1048576\r\n").as_bytes());
                req.extend_from_slice(&value);
                req.extend_from_slice(b"\r\n");
            }
            let _ = s.write_all(&req);
            hogs.push(s);
        }
        let mut good = Client::connect(&addr()).expect("connect");
        let reply = good
            .call(&[b"SET", b"still", b"alive"])
            .expect("the guest still serves");
        assert_eq!(reply, Reply::Simple("OK".into()));
        // Some of the hogs were told why they were closed.
        let told = hogs
            .iter_mut()
            .filter_map(|s| {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                let mut buf = [0u8; 128];
                let n = s.read(&mut buf).ok()?;
                String::from_utf8_lossy(&buf[..n])
                    .contains("buffer limit")
                    .then_some(())
            })
            .count();
        assert!(told > 0, "no connection was closed for the memory budget");
    });
    assert_eq!(vm.redis(&["get", "still"]), "alive");
}
