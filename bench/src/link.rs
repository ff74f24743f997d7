//! `lockstep-bench channel`: the logging channel against raw TCP on the
//! logging link between two namespaces, side by side in one run: stream
//! throughput, the threads' CPU time, and round trips (the floor the
//! output rule's added latency is judged against).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use lockstep_bench::channel::{self, Hosts, RawRun, RoundTrips, StreamRun, ThreadCpu};
use lockstep_bench::netns;
use logchan::channel::{ReceiverOptions, SenderOptions};

use crate::report::{Table, median, ratio};

/// The run of median time; `None` if there are none.
fn median_by<T: Clone>(runs: &[T], key: impl Fn(&T) -> std::time::Duration) -> Option<T> {
    let mut v: Vec<T> = runs.to_vec();
    v.sort_by_key(|r| key(r));
    v.get(v.len() / 2).cloned()
}

/// Bytes of whole NetRx entries in `mib` MiB (at least one entry).
pub fn stream_total(mib: u64) -> anyhow::Result<u64> {
    match mib.checked_mul(1 << 20) {
        Some(b) if b >= channel::netrx_len() => Ok(channel::stream_bytes(b)),
        _ => bail!("--mib must be at least 1 (and fit in 64 bits as bytes)"),
    }
}

/// Hosts A and B of `scripts/net ft-up` (namespaces `PREFIX-…`) and their
/// logging link, A 10.99.0.1 → B 10.99.0.2.
pub fn logging_link(prefix: &str) -> anyhow::Result<(netns::Net, Hosts)> {
    let net = netns::Net::ft(prefix)?;
    let hosts = Hosts {
        a: net.side("a"),
        b: net.side("b"),
        b_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 2)),
    };
    Ok((net, hosts))
}

/// `lockstep-bench channel`: the logging channel against raw TCP on the
/// logging link of `scripts/net ft-up` (A 10.99.0.1 → B 10.99.0.2 over a
/// veth), in the same run: stream throughput (median of 3 runs each,
/// interleaved) and round trips.
pub fn compare(mib: u64) -> anyhow::Result<()> {
    const RUNS: usize = 5;
    const RTT_SAMPLES: u64 = 20_000;
    const RTT_WARMUP: u64 = 2_000;
    const WARMUP_BYTES: u64 = 32 << 20;

    let total = stream_total(mib)?;
    println!("## The logging channel against raw TCP on the logging link\n");
    let (net, hosts) = logging_link("bchan")?;
    // 1 MiB of encoded entries: the raw stream writes the channel's bytes.
    let chunk = Arc::new(channel::encoded_chunk(1 << 20)?);
    let (send, recv) = (SenderOptions::default(), ReceiverOptions::default());

    // One short run of each first (connections, caches, clocks), then the
    // measured runs, interleaved so that drift hits both alike.
    channel::channel_stream(&hosts, total.min(WARMUP_BYTES), send, recv, None)
        .context("warm-up")?;
    channel::raw_stream(&hosts, total.min(WARMUP_BYTES), chunk.clone()).context("warm-up")?;
    let mut chan: Vec<StreamRun> = Vec::new();
    let mut raw: Vec<RawRun> = Vec::new();
    for i in 1..=RUNS {
        let c = channel::channel_stream(&hosts, total, send, recv, None)
            .with_context(|| format!("channel stream, run {i}"))?;
        let r = channel::raw_stream(&hosts, total, chunk.clone())
            .with_context(|| format!("raw TCP stream, run {i}"))?;
        eprintln!(
            "run {i}: channel {:.0} MB/s, raw TCP {:.0} MB/s",
            c.mb_per_s(),
            r.mb_per_s()
        );
        chan.push(c);
        raw.push(r);
    }
    // Each channel run is paired with the raw run right after it: the
    // median of those ratios is the figure least moved by drift.
    let pair_ratio = median(
        chan.iter()
            .zip(&raw)
            .map(|(c, r)| c.mb_per_s() / r.mb_per_s())
            .collect(),
    );
    let c = median_by(&chan, |r| r.took).context("no channel runs")?;
    let r = median_by(&raw, |r| r.took).context("no raw runs")?;

    let raw_rtt = channel::raw_round_trips(&hosts, RTT_WARMUP, RTT_SAMPLES, false)
        .context("raw ping-pong")?;
    let raw_spin = channel::raw_round_trips(&hosts, RTT_WARMUP, RTT_SAMPLES, true)
        .context("raw ping-pong, spinning")?;
    let chan_rtt = channel::channel_round_trips(&hosts, RTT_WARMUP, RTT_SAMPLES, send, recv, None)
        .context("channel publish→ack")?;
    let (n, ns_a, ns_b) = (net.name.clone(), net.ns("a"), net.ns("b"));
    // The namespaces go now; on an error above they go with `net` too.
    drop(net);

    let st = c.sender.stats;
    let name = |m: Option<logchan::channel::SendMode>| m.map_or("?".to_string(), |m| m.to_string());
    let mode = name(st.mode);
    let rmode = c
        .receiver
        .stats
        .mode
        .map_or("?".to_string(), |m| m.to_string());
    println!(
        "Logging link: veth {n}-ab (10.99.0.1, namespace {a}) → {n}-ba (10.99.0.2, namespace {b}); \
         sender and producer threads in {a}, receiver in {b}. Stream: {mib} MiB of NetRx \
         entries ({len} B each, one published per exit) until the last one's ack; raw TCP: \
         the same bytes, `write_all` of 1 MiB against `read` of 256 KiB. {RUNS} runs of each, \
         interleaved; the median run.\n",
        a = ns_a,
        b = ns_b,
        len = channel::netrx_len(),
    );
    let runs = |v: Vec<f64>| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut t = Table::new(&[
        "stream A → B",
        "MB/s (median)",
        "runs, MB/s",
        "vs raw TCP (median of per-run pairs)",
    ]);
    t.row(vec![
        format!("logging channel (sender: {mode}; receiver: {rmode})"),
        format!("{:.0}", c.mb_per_s()),
        runs(chan.iter().map(StreamRun::mb_per_s).collect()),
        format!(
            "{} (pairs: {})",
            ratio(c.mb_per_s(), r.mb_per_s()),
            ratio(pair_ratio, 1.0)
        ),
    ]);
    t.row(vec![
        "raw TCP".into(),
        format!("{:.0}", r.mb_per_s()),
        runs(raw.iter().map(RawRun::mb_per_s).collect()),
        "1.00".into(),
    ]);
    println!("{}", t.markdown());
    println!(
        "Send mode: attached in {}, ended in {mode} after {} SEND_ZC notifications, {} of them \
         copied by the kernel (an automatic zero-copy mode probes with sends of at most 16 KiB \
         and switches to plain sends after 64 copied in a row). {} sends ({} partial) carried \
         {} segments; {} acks over {} reads. Producer: {} stalls on full log buffers ({:.0} ms).\n",
        name(c.sender.attached),
        st.zc_notifications,
        st.zc_copied,
        st.send_ops,
        st.partial_sends,
        st.segments_sent,
        st.acks_received,
        c.receiver.stats.reads,
        c.sender.log.stalls,
        c.sender.log.stall_ns as f64 / 1e6,
    );

    let mut t = Table::new(&[
        "thread (median runs)",
        "CPU ms (user)",
        "of wall time",
        "sleeps",
        "preempted",
    ]);
    let mut cpu_row = |name: &str, cpu: &ThreadCpu, wall: Duration| {
        t.row(vec![
            name.to_string(),
            format!(
                "{:.0} ({:.0})",
                cpu.total().as_secs_f64() * 1e3,
                cpu.user.as_secs_f64() * 1e3
            ),
            format!(
                "{:.0}%",
                cpu.total().as_secs_f64() / wall.as_secs_f64() * 100.0
            ),
            cpu.sleeps.to_string(),
            cpu.preempted.to_string(),
        ]);
    };
    cpu_row("channel: producer (A)", &c.producer_cpu, c.took);
    cpu_row("channel: SenderEngine (A)", &c.sender.cpu, c.took);
    cpu_row("channel: ReceiverEngine (B)", &c.receiver.cpu, c.took);
    cpu_row("raw: writer (A)", &r.writer_cpu, r.took);
    cpu_row("raw: reader (B)", &r.reader_cpu, r.took);
    println!("{}", t.markdown());

    println!(
        "Round trips A → B → A, {RTT_SAMPLES} samples each after {RTT_WARMUP} unrecorded \
         (`hdrhistogram`). The channel's engine threads poll for 50 µs before they sleep; \
         compare it with the spinning ping-pong.\n"
    );
    let mut t = Table::new(&[
        "round trip",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "p50 vs spinning raw",
    ]);
    let floor = raw_spin.us(0.5);
    let rows: [(&str, &RoundTrips); 3] = [
        ("raw TCP ping-pong, 40 B, blocking reads", &raw_rtt),
        (
            "raw TCP ping-pong, 40 B, spinning on non-blocking reads",
            &raw_spin,
        ),
        ("channel: publish a Sync entry → its ack", &chan_rtt),
    ];
    for (name, rt) in rows {
        t.row(vec![
            name.to_string(),
            format!("{:.1}", rt.us(0.5)),
            format!("{:.1}", rt.us(0.99)),
            format!("{:.1}", rt.us(0.999)),
            ratio(rt.us(0.5), floor),
        ]);
    }
    println!("{}", t.markdown());
    Ok(())
}
