//! `lockstep-bench channel-crypto`: the logging channel authenticated and
//! encrypted (a pair key: Noise NNpsk0, AES-256-GCM records) against the
//! same channel with `--insecure`'s bare stream, on the same logging link
//! between two namespaces, interleaved in one run: stream throughput, the
//! engines' CPU per logged MiB, and the publish→ack round trip. With
//! `--link-mbit` the link is shaped to that rate (`tc tbf`, both ways), as
//! the paper's 1 Gbit/s logging link: unshaped, this 2-core machine's
//! CPU is the limit, which separate hosts would not share.

use anyhow::Context;
use lockstep_bench::channel::{self, RoundTrips, StreamRun};
use logchan::channel::{ReceiverOptions, SenderOptions};
use logchan::secure::PairKey;

use crate::link::{logging_link, stream_total};
use crate::report::{Table, median, ratio};
use crate::shaping::Shaped;

const RUNS: usize = 5;
const RTT_BLOCKS: usize = 4;
const RTT_SAMPLES: u64 = 5_000;
const RTT_WARMUP: u64 = 500;

/// CPU of producer, sender and receiver per MiB of log.
fn cpu_ms_per_mib(r: &StreamRun) -> f64 {
    let cpu = r.producer_cpu.total() + r.sender.cpu.total() + r.receiver.cpu.total();
    cpu.as_secs_f64() * 1e3 / (r.bytes as f64 / f64::from(1 << 20))
}

pub fn compare(mib: u64, link_mbit: Option<u64>) -> anyhow::Result<()> {
    let total = stream_total(mib)?;
    let link = match link_mbit {
        Some(0) => anyhow::bail!("--link-mbit must be at least 1"),
        Some(m) => format!("the logging link shaped to {m} Mbit/s"),
        None => "the logging link, unshaped".to_string(),
    };
    println!("## The logging channel encrypted against --insecure on {link}\n");
    let (net, hosts) = logging_link("bcry")?;
    let shaped = link_mbit.map(|m| Shaped::new(&net, m)).transpose()?;
    let key = PairKey::generate().context("pair key")?;
    let (send, recv) = (SenderOptions::default(), ReceiverOptions::default());
    let stream = |k: Option<PairKey>, bytes| channel::channel_stream(&hosts, bytes, send, recv, k);
    stream(Some(key.clone()), total.min(32 << 20)).context("warm-up")?;
    stream(None, total.min(32 << 20)).context("warm-up")?;
    let (mut sealed, mut plain) = (Vec::new(), Vec::new());
    for i in 1..=RUNS {
        // Alternate which goes first, so neither always follows the other.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enc in order {
            let r = stream(enc.then(|| key.clone()), total)
                .with_context(|| format!("stream run {i} (encrypted: {enc})"))?;
            eprintln!(
                "run {i}: {} {:.0} MB/s; CPU ms: producer {:.0}, sender {:.0}, receiver {:.0}",
                if enc { "encrypted" } else { "insecure" },
                r.mb_per_s(),
                r.producer_cpu.total().as_secs_f64() * 1e3,
                r.sender.cpu.total().as_secs_f64() * 1e3,
                r.receiver.cpu.total().as_secs_f64() * 1e3,
            );
            if enc { sealed.push(r) } else { plain.push(r) }
        }
    }
    let pair_ratio = median(
        sealed
            .iter()
            .zip(&plain)
            .map(|(s, p)| s.mb_per_s() / p.mb_per_s())
            .collect(),
    );
    let mbs = |v: &[StreamRun]| median(v.iter().map(StreamRun::mb_per_s).collect());
    let cpu = |v: &[StreamRun]| median(v.iter().map(cpu_ms_per_mib).collect());

    // Round trips in alternating blocks, merged per kind.
    let (mut rt_sealed, mut rt_plain): (Option<RoundTrips>, Option<RoundTrips>) = (None, None);
    for b in 0..RTT_BLOCKS {
        for enc in if b % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let rt = channel::channel_round_trips(
                &hosts,
                RTT_WARMUP,
                RTT_SAMPLES,
                send,
                recv,
                enc.then(|| key.clone()),
            )
            .context("round trips")?;
            let slot = if enc { &mut rt_sealed } else { &mut rt_plain };
            match slot {
                Some(acc) => {
                    acc.hist.add(&rt.hist).map_err(|e| anyhow::anyhow!("{e}"))?;
                    acc.took += rt.took;
                }
                None => *slot = Some(rt),
            }
        }
    }
    let (rs, rp) = (
        rt_sealed.context("no encrypted round trips")?,
        rt_plain.context("no insecure round trips")?,
    );
    drop(shaped);
    drop(net);

    println!(
        "Logging link: a veth between two namespaces (A 10.99.0.1 → B 10.99.0.2; {link}); producer and \
         SenderEngine threads in A, ReceiverEngine in B. Stream: {mib} MiB of NetRx entries \
         (1536 B each, one published per exit) until the last one's ack; {RUNS} runs of each, \
         interleaved (the order alternating). Round trips: {} blocks of {RTT_SAMPLES} \
         publish→ack samples each, alternating.\n",
        RTT_BLOCKS
    );
    let runs = |v: &[StreamRun]| {
        v.iter()
            .map(|r| format!("{:.0}", r.mb_per_s()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut t = Table::new(&[
        "channel",
        "MB/s (median)",
        "runs, MB/s",
        "CPU ms per logged MiB (producer + sender + receiver)",
    ]);
    t.row(vec![
        "authenticated + encrypted (pair key)".into(),
        format!("{:.0}", mbs(&sealed)),
        runs(&sealed),
        format!("{:.2}", cpu(&sealed)),
    ]);
    t.row(vec![
        "--insecure".into(),
        format!("{:.0}", mbs(&plain)),
        runs(&plain),
        format!("{:.2}", cpu(&plain)),
    ]);
    println!("{}", t.markdown());
    println!(
        "Encrypted ÷ insecure throughput: {} (median of per-run pairs {}); CPU per MiB: {}.\n",
        ratio(mbs(&sealed), mbs(&plain)),
        ratio(pair_ratio, 1.0),
        ratio(cpu(&sealed), cpu(&plain)),
    );
    let mut t = Table::new(&["publish → ack", "p50 µs", "p99 µs", "p99.9 µs"]);
    for (name, rt) in [("encrypted", &rs), ("--insecure", &rp)] {
        t.row(vec![
            name.into(),
            format!("{:.1}", rt.us(0.5)),
            format!("{:.1}", rt.us(0.99)),
            format!("{:.1}", rt.us(0.999)),
        ]);
    }
    println!("{}", t.markdown());
    println!(
        "Encrypted − insecure: p50 {:+.1} µs, p99 {:+.1} µs.\n",
        rs.us(0.5) - rp.us(0.5),
        rs.us(0.99) - rp.us(0.99)
    );
    Ok(())
}
