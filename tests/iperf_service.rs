//! The guest's iperf3-compatible server (port 5201) measured by Debian's
//! stock `iperf3` client, forward (the guest receives) and reverse (`-R`,
//! the guest sends), through the whole stack: real KVM, a tap in a network
//! namespace. Speed is the benchmarks' business (`lockstep-bench paper`);
//! this checks that the client completes and agrees with the guest.

mod common;

use common::*;

/// `iperf3 -c GUEST -t 1 -J [extra]`: the bytes the receiver counted.
fn iperf(vm: &KvVm, extra: &[&str]) -> u64 {
    let mut args = vec!["-c", GUEST_IP, "-t", "1", "-J", "--connect-timeout", "5000"];
    args.extend_from_slice(extra);
    let out = vm.client("iperf3", &args);
    let text = output_text(&out);
    assert!(out.status.success(), "iperf3 {extra:?}:\n{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J prints JSON");
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "iperf3 {extra:?} moved nothing:\n{text}");
    bytes
}

#[test]
fn stock_iperf3_measures_the_guest_both_ways() {
    if !kvm_available() {
        return;
    }
    if std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("iperf3 is missing: scripts/test installs it (apt-get install iperf3)");
    }
    let vm = KvVm::start("ipf", &[]);
    let received = iperf(&vm, &[]);
    let sent = iperf(&vm, &["-R", "-P", "2"]);
    // The guest prints what it counted: the same bytes the client reports
    // for a forward test (the client's receiver figure comes from the
    // guest's results message).
    wait_for(
        std::time::Duration::from_secs(5),
        "the guest's reports",
        || vm.vmm.log().matches("iperf: ").count() >= 2,
    );
    let log = vm.vmm.log();
    assert!(
        log.contains(&format!("iperf: received {received} bytes on 1 stream(s)")),
        "{log}"
    );
    assert!(
        log.contains("iperf: sent ") && log.contains("on 2 stream(s)"),
        "{log}"
    );
    assert!(sent > 0);
    // A third client while none runs is served again: the server went
    // back to idle after each test.
    iperf(&vm, &["-R"]);
}
