//! The stock clients that load the guest, from the client namespace on the
//! clients' CPUs: `redis-benchmark` (kv), `ab` (HTTP), `iperf3` (bulk TCP).
//! Each returns (rate, units of work done).

use std::process::{Command, Output};

use anyhow::{Context, bail};

use lockstep_bench::netns::GUEST_IP;
use lockstep_bench::pair::Host;

use super::Ctx;
use crate::redis::parse_csv;

/// Concurrent connections of redis-benchmark and ab (the FT bench's 50
/// for redis-benchmark; ab's HTTP clients are fewer, as the guest serves at
/// most 32 HTTP connections).
const REDIS_CLIENTS: u32 = 50;
const HTTP_CLIENTS: u32 = 16;

/// `program` on the clients' CPUs in the client namespace, killed after
/// `limit_s` seconds: a client that hangs (a guest bug) fails its step
/// instead of the whole run.
fn client(ctx: &Ctx, program: &str, limit_s: u64) -> Command {
    let mut c = ctx.net.cmd("c", "timeout");
    c.args(["-k", "5", &limit_s.to_string(), program]);
    ctx.place.wrap(Host::B, c)
}

/// Longest a redis-benchmark or ab run may take.
const LOAD_LIMIT_S: u64 = 300;

fn run(mut cmd: Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `redis-benchmark -t TEST -P PIPELINE`: (requests/s, requests).
pub fn redis(ctx: &Ctx, test: &str, pipeline: u32) -> anyhow::Result<(f64, f64)> {
    let n = ctx.opts.kv_requests;
    let mut cmd = client(ctx, "redis-benchmark", LOAD_LIMIT_S);
    cmd.args(["-h", GUEST_IP, "-p", "6379", "-n", &n.to_string()])
        .args([
            "-c",
            &REDIS_CLIENTS.to_string(),
            "-P",
            &pipeline.to_string(),
        ])
        .args(["-t", test, "--csv"]);
    let out = run(cmd, "redis-benchmark")?;
    let rows = parse_csv(&String::from_utf8_lossy(&out.stdout));
    match rows.first() {
        Some(r) if r.rps > 0.0 => Ok((r.rps, n as f64)),
        _ => bail!(
            "no result from redis-benchmark: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

/// The HTTP key every request reads or replaces.
const HTTP_URL: &str = "http://10.77.0.2/kv/paper-bench";

/// Requests/s from `ab`'s report, if every request succeeded.
pub fn parse_ab(text: &str) -> anyhow::Result<f64> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let failed = field("Failed requests").unwrap_or(0.0);
    let non2xx = field("Non-2xx responses").unwrap_or(0.0);
    if failed > 0.0 || non2xx > 0.0 {
        bail!("ab: {failed} failed and {non2xx} non-2xx responses");
    }
    field("Requests per second").context("ab printed no rate")
}

/// `ab -k` GET (or PUT of a 100-byte value) of one key: (requests/s,
/// requests).
pub fn http(ctx: &Ctx, put: bool) -> anyhow::Result<(f64, f64)> {
    let body = ctx.dir.path().join("http-body");
    std::fs::write(&body, [b'v'; 100])?;
    // The key exists before it is read.
    let mut seed = ctx.net.cmd("c", "curl");
    seed.args(["-sf", "--max-time", "10", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(HTTP_URL);
    run(seed, "curl PUT")?;
    let n = if put {
        ctx.opts.http_requests / 4
    } else {
        ctx.opts.http_requests
    };
    let mut cmd = client(ctx, "ab", LOAD_LIMIT_S);
    cmd.args(["-k", "-q", "-n", &n.to_string()])
        .args(["-c", &HTTP_CLIENTS.to_string()]);
    if put {
        cmd.arg("-u").arg(&body).args(["-T", "text/plain"]);
    }
    cmd.arg(HTTP_URL);
    let out = run(cmd, "ab")?;
    Ok((parse_ab(&String::from_utf8_lossy(&out.stdout))?, n as f64))
}

/// `iperf3 -c GUEST -J [-R]`: (Mbit/s the receiver counted, MB moved).
pub fn iperf(ctx: &Ctx, reverse: bool) -> anyhow::Result<(f64, f64)> {
    let mut cmd = client(ctx, "iperf3", ctx.opts.iperf_secs + 30);
    cmd.args(["-c", GUEST_IP, "-J", "-t", &ctx.opts.iperf_secs.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let out = run(cmd, "iperf3")?;
    parse_iperf(&String::from_utf8_lossy(&out.stdout))
}

/// (Mbit/s, MB) of the receiving side from `iperf3 -J`.
pub fn parse_iperf(json: &str) -> anyhow::Result<(f64, f64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let r = &v["end"]["sum_received"];
    match (r["bits_per_second"].as_f64(), r["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bps > 0.0 => Ok((bps / 1e6, bytes / 1e6)),
        _ => bail!("iperf3 reported no received bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_reports_parse() {
        let ab = "Complete requests:      2000\nFailed requests:        0\nRequests per second:    5342.17 [#/sec] (mean)\n";
        assert_eq!(parse_ab(ab).unwrap(), 5342.17);
        assert!(
            parse_ab("Failed requests:        3\nRequests per second:    1 [#/sec]\n").is_err()
        );
        assert!(parse_ab("Non-2xx responses:      5\nRequests per second:    1\n").is_err());
        let j = r#"{"end":{"sum_received":{"bytes":250000000,"bits_per_second":1.0e9}}}"#;
        assert_eq!(parse_iperf(j).unwrap(), (1000.0, 250.0));
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#).is_err());
    }
}
