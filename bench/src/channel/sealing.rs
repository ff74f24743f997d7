//! Opening a benchmark channel the way the VMM does: with a pair key, the
//! handshake and its record layer (`logchan::secure`); without, the bare
//! stream (`--insecure`'s wire, minus the plaintext attach request, which
//! costs nothing on a stream).

use super::*;

use logchan::secure::{AttachRequest, Responder, Security, Step, Verdict, initiate};

fn attach() -> AttachRequest {
    AttachRequest {
        header: header(),
        boot: b"bench".to_vec(),
    }
}

/// Side A's opening: the stream and, with a key, its record layer.
pub fn open_a(
    mut stream: TcpStream,
    key: Option<&PairKey>,
) -> anyhow::Result<(TcpStream, Option<RecordLayer>)> {
    let Some(key) = key else {
        return Ok((stream, None));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = initiate(
        &mut stream,
        &Security::Key(key.clone()),
        &attach(),
        deadline,
    )
    .context("opening the channel")?;
    Ok((stream, session.records))
}

/// Side B's opening.
pub fn open_b(
    mut stream: TcpStream,
    key: Option<&PairKey>,
) -> anyhow::Result<(TcpStream, Option<RecordLayer>)> {
    let Some(key) = key else {
        return Ok((stream, None));
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = Responder::new(Security::Key(key.clone()));
    let mut buf = [0u8; 4096];
    loop {
        match r
            .advance()
            .map_err(|e| anyhow!("opening the channel: {e}"))?
        {
            Step::NeedMore => {
                let n = match stream.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("opening the channel"),
                };
                if n == 0 {
                    bail!("the peer closed during the opening");
                }
                r.input(&buf[..n]).map_err(|e| anyhow!("{e}"))?;
            }
            Step::Send(b) => stream.write_all(&b)?,
            Step::Attach(_) => {
                let (b, session) = r.answer(&Verdict::Accepted).map_err(|e| anyhow!("{e}"))?;
                stream.write_all(&b)?;
                stream.set_read_timeout(None)?;
                let session = session.context("accepted without a session")?;
                return Ok((stream, session.records));
            }
        }
    }
}
