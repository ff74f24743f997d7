//! Round trips: raw TCP ping-pong against the channel's publish → ack.

use super::*;

fn backoff(i: &mut u32) {
    std::hint::spin_loop();
    *i = i.wrapping_add(1);
    if i.is_multiple_of(64) {
        std::thread::yield_now();
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> io::Result<()> {
    if !spin {
        return s.read_exact(buf);
    }
    let (mut got, mut i) = (0, 0u32);
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => backoff(&mut i),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(s: &mut TcpStream, buf: &[u8], spin: bool) -> io::Result<()> {
    if !spin {
        return s.write_all(buf);
    }
    let (mut put, mut i) = (0, 0u32);
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => backoff(&mut i),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A 40-byte pong server on `s` until the client closes. `spin`: the
/// socket is non-blocking and polled (yielding now and then) instead of
/// sleeping in `read`.
pub fn pong(mut s: TcpStream, spin: bool) -> io::Result<()> {
    s.set_nonblocking(spin)?;
    let mut b = [0u8; PING];
    loop {
        match read_exact(&mut s, &mut b, spin) {
            Ok(()) => write_all(&mut s, &b, spin)?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// `iters` 40-byte round trips against a [`pong`] server; `hist` gets each
/// one's latency in ns. Returns the total time.
pub fn ping_pong(
    client: &mut TcpStream,
    iters: u64,
    spin: bool,
    mut hist: Option<&mut Histogram<u64>>,
) -> io::Result<Duration> {
    client.set_nonblocking(spin)?;
    let ping = [0x11u8; PING];
    let mut back = [0u8; PING];
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        write_all(client, &ping, spin)?;
        read_exact(client, &mut back, spin)?;
        if let Some(h) = hist.as_deref_mut() {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(start.elapsed())
}

/// Round-trip latencies (ns) and the time all of them took.
#[derive(Clone, Debug)]
pub struct RoundTrips {
    pub hist: Histogram<u64>,
    pub took: Duration,
    /// `Some` for the channel: its sender's counters.
    pub sender: Option<SenderStats>,
}

impl RoundTrips {
    /// Latency at `q` (0..=1) in µs.
    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }
}

/// 1 ns to 60 s, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// `warmup` then `samples` 40-byte ping-pongs from A to B.
pub fn raw_round_trips(
    hosts: &Hosts,
    warmup: u64,
    samples: u64,
    spin: bool,
) -> anyhow::Result<RoundTrips> {
    let (rt, ()) = hosts.run(
        "ping",
        move |addr, hs| {
            let mut c = connect(addr)?;
            hs.ready()?;
            ping_pong(&mut c, warmup, spin, None).context("ping")?;
            let mut hist = histogram()?;
            let took = ping_pong(&mut c, samples, spin, Some(&mut hist)).context("ping")?;
            Ok(RoundTrips {
                hist,
                took,
                sender: None,
            })
        },
        move |l, hs| {
            let s = accept(&l)?;
            hs.ready()?;
            pong(s, spin).context("pong")
        },
    )?;
    Ok(rt)
}

/// `iters` times: publish one [`sync_entry`], wait for its ack; each
/// latency (ns) into `hist`. Returns the total time.
pub fn publish_ack(
    tx: &mut ChannelSender,
    iters: u64,
    mut hist: Option<&mut Histogram<u64>>,
) -> anyhow::Result<Duration> {
    let e = sync_entry();
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        let seq = tx.publish(&e)?;
        tx.wait_acked(seq)?;
        if let Some(h) = hist.as_deref_mut() {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(start.elapsed())
}

/// `warmup` then `samples` publish→ack round trips through a fresh channel
/// from A to B.
pub fn channel_round_trips(
    hosts: &Hosts,
    warmup: u64,
    samples: u64,
    send: SenderOptions,
    recv: ReceiverOptions,
    key: Option<PairKey>,
) -> anyhow::Result<RoundTrips> {
    let key_b = key.clone();
    let (rt, _) = hosts.run(
        "rtt",
        move |addr, hs| {
            let (stream, records) = open_a(connect(addr)?, key.as_ref())?;
            let mut tx = ChannelSender::start_sealed(stream, send, records)?;
            hs.ready()?;
            publish_ack(&mut tx, warmup, None)?;
            let mut hist = histogram()?;
            let took = publish_ack(&mut tx, samples, Some(&mut hist))?;
            let report = tx.finish()?;
            Ok(RoundTrips {
                hist,
                took,
                sender: Some(report.stats),
            })
        },
        move |l, hs| {
            let (stream, records) = open_b(accept(&l)?, key_b.as_ref())?;
            run_receiver(stream, recv, records, || hs.ready())
        },
    )?;
    Ok(rt)
}
