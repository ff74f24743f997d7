//! Stream throughput: the channel against raw TCP, the same bytes.

use super::*;

/// Publishes `n` [`netrx`] entries one by one (each its own exit and
/// segment) and waits for the last one's ack; returns the time from the
/// first append to that ack, and the producer thread's CPU use.
pub fn stream_entries(tx: &mut ChannelSender, n: u64) -> anyhow::Result<(Duration, ThreadCpu)> {
    let e = netrx();
    let cpu0 = ThreadCpu::now();
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..n {
        last = tx.publish(&e)?;
    }
    tx.wait_acked(last)?;
    Ok((start.elapsed(), ThreadCpu::now().since(&cpu0)))
}

/// One channel stream run.
#[derive(Clone, Copy, Debug)]
pub struct StreamRun {
    /// First append to the last entry's ack.
    pub took: Duration,
    /// Entry bytes streamed (and received).
    pub bytes: u64,
    pub sender: SenderReport,
    pub receiver: ReceiverReport,
    /// The producer's thread, while it published and waited.
    pub producer_cpu: ThreadCpu,
}

impl StreamRun {
    /// Entry bytes per second, in MB/s (10^6).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.took.as_secs_f64() / 1e6
    }
}

/// Streams `total` bytes (whole [`netrx`] entries) from A to B through a
/// fresh channel.
pub fn channel_stream(
    hosts: &Hosts,
    total: u64,
    send: SenderOptions,
    recv: ReceiverOptions,
    key: Option<PairKey>,
) -> anyhow::Result<StreamRun> {
    let n = total / netrx_len();
    let key_b = key.clone();
    let (a, receiver) = hosts.run(
        "chan",
        move |addr, hs| {
            let (stream, records) = open_a(connect(addr)?, key.as_ref())?;
            let mut tx = ChannelSender::start_sealed(stream, send, records)?;
            hs.ready()?;
            let (took, producer_cpu) = stream_entries(&mut tx, n)?;
            Ok((took, producer_cpu, tx.finish()?))
        },
        move |l, hs| {
            let (stream, records) = open_b(accept(&l)?, key_b.as_ref())?;
            run_receiver(stream, recv, records, || hs.ready())
        },
    )?;
    let (took, producer_cpu, sender) = a;
    let bytes = n * netrx_len();
    if receiver.bytes != bytes {
        bail!("the receiver got {} entry bytes of {bytes}", receiver.bytes);
    }
    Ok(StreamRun {
        took,
        bytes,
        sender,
        receiver,
        producer_cpu,
    })
}

/// Writes `total` bytes of `chunk` (repeated) to `s`.
pub fn raw_write(s: &mut TcpStream, total: u64, chunk: &[u8]) -> io::Result<()> {
    if chunk.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty chunk"));
    }
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads `total` bytes from `s`, 256 KiB at a time.
pub fn raw_read(s: &mut TcpStream, total: u64) -> io::Result<()> {
    let mut buf = vec![0u8; RAW_READ];
    let mut got = 0u64;
    while got < total {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as u64;
    }
    Ok(())
}

/// One raw TCP stream run.
#[derive(Clone, Copy, Debug)]
pub struct RawRun {
    /// From both ends being ready to the last byte read.
    pub took: Duration,
    pub bytes: u64,
    pub writer_cpu: ThreadCpu,
    pub reader_cpu: ThreadCpu,
}

impl RawRun {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.took.as_secs_f64() / 1e6
    }
}

/// `total` bytes from A to B over a plain socket: `write_all` of `chunk`
/// (encoded entries, the same bytes the channel carries) against `read`.
pub fn raw_stream(hosts: &Hosts, total: u64, chunk: Arc<Vec<u8>>) -> anyhow::Result<RawRun> {
    let ((start, writer_cpu), (end, reader_cpu)) = hosts.run(
        "raw",
        move |addr, hs| {
            let mut s = connect(addr)?;
            hs.ready()?;
            let cpu0 = ThreadCpu::now();
            let start = Instant::now();
            raw_write(&mut s, total, &chunk).context("raw write")?;
            Ok((start, ThreadCpu::now().since(&cpu0)))
        },
        move |l, hs| {
            let mut s = accept(&l)?;
            hs.ready()?;
            let cpu0 = ThreadCpu::now();
            raw_read(&mut s, total).context("raw read")?;
            Ok((Instant::now(), ThreadCpu::now().since(&cpu0)))
        },
    )?;
    Ok(RawRun {
        took: end.saturating_duration_since(start),
        bytes: total,
        writer_cpu,
        reader_cpu,
    })
}
