//! Stock redis-server, built from Debian's unmodified source with musl, as
//! the guest under `lockstep run`, driven by stock redis-cli and
//! redis-benchmark through a real tap: the data types the own guest lacks
//! work because it is real redis, and a restart on the same disk (after a
//! clean stop and after `kill -9`) reloads every acknowledged write.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::apps::{AppVm, REDIS_ARGS, REDIS_READY, parse_csv, redis_server};
use common::*;
use lockstep_bench::kvclient;

const TESTS: &str = "set,get,incr,lpush,rpop,sadd,hset,mset";

/// redis-benchmark's CSV rows for every test in [`TESTS`].
fn benchmark(vm: &AppVm, pipeline: &str, n: &str) -> Vec<(String, f64)> {
    let out = vm.client(
        "redis-benchmark",
        &[
            "-h", GUEST_IP, "-n", n, "-c", "20", "-P", pipeline, "-t", TESTS, "--csv",
        ],
    );
    assert!(
        out.status.success(),
        "redis-benchmark: {}",
        output_text(&out)
    );
    let rows = parse_csv(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows.len(), 8, "one row per test:\n{}", output_text(&out));
    for (test, rps) in &rows {
        assert!(*rps > 0.0, "{test} made no progress");
    }
    rows
}

#[test]
fn stock_redis_serves_stock_clients_with_every_data_type() {
    if !kvm_available() {
        return;
    }
    let mut vm = AppVm::start("ar", &redis_server(), &REDIS_ARGS, REDIS_READY);
    assert_eq!(vm.redis(&["ping"]), "PONG");
    assert_eq!(
        vm.redis(&["set", "greeting", "hello from redis in lockstep"]),
        "OK"
    );
    assert_eq!(
        vm.redis(&["get", "greeting"]),
        "hello from redis in lockstep"
    );
    assert_eq!(vm.redis(&["rpush", "list", "a", "b", "c"]), "3");
    assert_eq!(vm.redis(&["lrange", "list", "0", "-1"]), "a\nb\nc");
    assert_eq!(vm.redis(&["hset", "hash", "f1", "v1", "f2", "v2"]), "2");
    assert_eq!(vm.redis(&["hget", "hash", "f2"]), "v2");
    assert_eq!(vm.redis(&["sadd", "set", "x", "y", "x"]), "2");
    assert_eq!(vm.redis(&["scard", "set"]), "2");
    assert_eq!(vm.redis(&["zadd", "zset", "2", "two", "1", "one"]), "2");
    assert_eq!(vm.redis(&["zrange", "zset", "0", "-1"]), "one\ntwo");
    assert!(vm.redis(&["info", "server"]).contains("redis_version:7.0"));
    benchmark(&vm, "1", "2000");
    benchmark(&vm, "16", "10000");
    assert!(vm.redis(&["llen", "mylist"]).parse::<u64>().is_ok());
    assert!(vm.redis(&["hlen", "myhash"]).parse::<u64>().unwrap_or(0) > 0);
    assert!(vm.redis(&["scard", "myset"]).parse::<u64>().unwrap_or(0) > 0);
    let log = vm.stop();
    assert!(log.contains("linux: exit status 0"), "{log}");
    assert!(
        log.contains("linux: unsupported: none"),
        "redis made a call the personality lacks:\n{log}"
    );
}

/// Writers SET unique keys until the server holds `keys` of them.
fn load(vm: &AppVm, keys: u64) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let addr = format!("{GUEST_IP}:6379");
    let writers = spawn_in_netns(vm.net.ns("c"), move || kvclient::write(&addr, 3, flag));
    wait_for(Duration::from_secs(60), "acknowledged writes", || {
        vm.redis(&["dbsize"]).parse::<u64>().unwrap_or(0) >= keys
    });
    stop.store(true, Ordering::Relaxed);
    let report = writers.join().expect("writers");
    assert!(
        report.errors.is_empty(),
        "writers saw {:?}",
        &report.errors[..report.errors.len().min(3)]
    );
    report.acked
}

fn lost(vm: &AppVm, acked: &[String]) -> Vec<String> {
    let addr = format!("{GUEST_IP}:6379");
    in_netns(&vm.net.ns("c"), || {
        kvclient::check(&addr, acked).expect("read back")
    })
}

#[test]
fn a_restart_on_the_same_disk_reloads_every_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    let redis = redis_server();
    let mut vm = AppVm::start("aa", &redis, &REDIS_ARGS, REDIS_READY);
    let mut acked = load(&vm, 2000);
    vm.stop();
    // The app is on the disk: boot it from there, without --app.
    vm.boot(&["--workload", "app"], &[], REDIS_READY);
    assert!(
        vm.vmm.log().contains("DB loaded from append only file"),
        "{}",
        vm.vmm.log()
    );
    assert_eq!(
        lost(&vm, &acked),
        Vec::<String>::new(),
        "after a clean stop"
    );

    // A crash: every write redis acknowledged was fdatasync'ed before.
    acked.extend(load(&vm, 4000));
    vm.vmm.signal(libc::SIGKILL);
    vm.vmm.exit_status(Duration::from_secs(10));
    vm.boot(
        &["--app", &redis.display().to_string()],
        &REDIS_ARGS,
        REDIS_READY,
    );
    let gone = lost(&vm, &acked);
    assert!(
        gone.is_empty(),
        "{} of {} acknowledged writes lost after kill -9, e.g. {:?}",
        gone.len(),
        acked.len(),
        &gone[..gone.len().min(5)]
    );
    vm.stop();
}
