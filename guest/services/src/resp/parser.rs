//! Incremental RESP2 request parser: multibulk (`*N` of `$len` bulks) and
//! inline commands, with Redis's error texts and this server's limits.
//!
//! The caller keeps the unparsed bytes; [`RespParser::next`] consumes whole
//! elements only (a header line, or a complete bulk), so a request that
//! arrives in pieces costs no re-scanning, and a bulk is copied once.

use alloc::vec::Vec;

use super::inline::split_args;
use crate::intfmt::parse_usize;
use crate::limits::{MAX_ARGS, MAX_BULK, MAX_INLINE, MAX_REQUEST};

/// A protocol error: the connection gets `-ERR Protocol error: <text>` and
/// is closed, as Redis does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A fixed message.
    Msg(&'static str),
    /// Redis: "expected '$', got 'X'" with the offending byte.
    ExpectedDollar(u8),
}

impl ProtocolError {
    /// The whole error line, without the leading `-` and the CRLF.
    pub fn line(&self) -> Vec<u8> {
        let mut m = b"ERR Protocol error: ".to_vec();
        match self {
            ProtocolError::Msg(s) => m.extend_from_slice(s.as_bytes()),
            ProtocolError::ExpectedDollar(b) => {
                m.extend_from_slice(b"expected '$', got '");
                m.push(*b);
                m.push(b'\'');
            }
        }
        m
    }
}

use ProtocolError::Msg;

/// A parsed command: its arguments.
pub type Argv = Vec<Vec<u8>>;

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    /// Inside a multibulk: `remaining` bulks still to come.
    Multibulk {
        remaining: usize,
        /// Length of the bulk whose header was consumed, if any.
        bulk: Option<usize>,
    },
}

/// The parser state of one connection.
#[derive(Debug, Default)]
pub struct RespParser {
    state: State,
    args: Argv,
    /// Bytes of the current request so far (bounded by `MAX_REQUEST`).
    request_bytes: usize,
}

/// What one step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    Incomplete,
    /// Bytes were consumed without completing a command (a header, a bulk,
    /// or an empty request): call again.
    Progress,
    /// A complete command.
    Command(Argv),
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Where the `*N` / `$N` header line at the start of `buf` ends (its CR),
/// `None` while it is incomplete; a line longer than `MAX_INLINE` is the
/// error `too_big`.
fn header_end(buf: &[u8], too_big: &'static str) -> Result<Option<usize>, ProtocolError> {
    match find_crlf(buf) {
        Some(end) if end <= MAX_INLINE => Ok(Some(end)),
        None if buf.len() <= MAX_INLINE => Ok(None),
        _ => Err(Msg(too_big)),
    }
}

impl RespParser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of a partial request the parser holds (its arguments so far).
    pub fn buffered(&self) -> usize {
        self.request_bytes
    }

    /// Whether the parser is between requests.
    pub fn idle(&self) -> bool {
        matches!(self.state, State::Start)
    }

    /// Parses from `buf` (the unconsumed input). Returns the bytes consumed
    /// and what they produced. On error the connection must be closed.
    pub fn next(&mut self, buf: &[u8]) -> Result<(usize, Step), ProtocolError> {
        match self.state {
            State::Start => self.start(buf),
            State::Multibulk { remaining, bulk } => self.bulk(buf, remaining, bulk),
        }
    }

    fn start(&mut self, buf: &[u8]) -> Result<(usize, Step), ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok((0, Step::Incomplete));
        };
        if first != b'*' {
            return inline(buf);
        }
        let Some(end) = header_end(buf, "too big mbulk count string")? else {
            return Ok((0, Step::Incomplete));
        };
        let line = &buf[1..end];
        let n = match line.first() {
            // Redis treats a non-positive count as an empty request.
            Some(b'-') => {
                crate::intfmt::parse_i64(line).ok_or(Msg("invalid multibulk length"))?;
                0
            }
            _ => parse_usize(line).ok_or(Msg("invalid multibulk length"))?,
        };
        if n > MAX_ARGS {
            return Err(Msg("invalid multibulk length"));
        }
        if n == 0 {
            return Ok((end + 2, Step::Progress));
        }
        self.args = Vec::with_capacity(n.min(1024));
        self.request_bytes = end + 2;
        self.state = State::Multibulk {
            remaining: n,
            bulk: None,
        };
        Ok((end + 2, Step::Progress))
    }

    fn bulk(
        &mut self,
        buf: &[u8],
        remaining: usize,
        bulk: Option<usize>,
    ) -> Result<(usize, Step), ProtocolError> {
        let Some(len) = bulk else {
            let Some(&first) = buf.first() else {
                return Ok((0, Step::Incomplete));
            };
            if first != b'$' {
                return Err(ProtocolError::ExpectedDollar(first));
            }
            let Some(end) = header_end(buf, "too big bulk count string")? else {
                return Ok((0, Step::Incomplete));
            };
            let len = parse_usize(&buf[1..end]).ok_or(Msg("invalid bulk length"))?;
            if len > MAX_BULK {
                return Err(Msg("invalid bulk length"));
            }
            self.request_bytes += end + 2 + len + 2;
            if self.request_bytes > MAX_REQUEST {
                return Err(Msg("too big request"));
            }
            self.state = State::Multibulk {
                remaining,
                bulk: Some(len),
            };
            return Ok((end + 2, Step::Progress));
        };
        if buf.len() < len + 2 {
            return Ok((0, Step::Incomplete));
        }
        // Like Redis, the two bytes after the data are skipped unchecked.
        self.args.push(buf[..len].to_vec());
        if remaining == 1 {
            self.state = State::Start;
            self.request_bytes = 0;
            return Ok((len + 2, Step::Command(core::mem::take(&mut self.args))));
        }
        self.state = State::Multibulk {
            remaining: remaining - 1,
            bulk: None,
        };
        Ok((len + 2, Step::Progress))
    }
}

/// One inline command: a line of space-separated, optionally quoted words.
fn inline(buf: &[u8]) -> Result<(usize, Step), ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(Msg("too big inline request"));
        }
        return Ok((0, Step::Incomplete));
    };
    if nl > MAX_INLINE {
        return Err(Msg("too big inline request"));
    }
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = split_args(line).ok_or(Msg("unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok((nl + 1, Step::Progress));
    }
    if args.len() > MAX_ARGS {
        return Err(Msg("invalid multibulk length"));
    }
    Ok((nl + 1, Step::Command(args)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Feeds `input` in pieces of `piece` bytes, the way a session does.
    fn parse_all(input: &[u8], piece: usize) -> Result<Vec<Argv>, ProtocolError> {
        let mut p = RespParser::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                let (n, step) = p.next(&buf)?;
                buf.drain(..n);
                match step {
                    Step::Incomplete => break,
                    Step::Progress => {}
                    Step::Command(a) => out.push(a),
                }
            }
        }
        Ok(out)
    }

    fn argv(words: &[&str]) -> Argv {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_whole_and_in_every_split() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n";
        for piece in 1..input.len() + 1 {
            let got = parse_all(input, piece).expect("parses");
            assert_eq!(
                got,
                vec![argv(&["SET", "key", "value"]), argv(&["PING"])],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn pipelined_mix_of_inline_and_multibulk() {
        let input =
            b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nset a \"b c\"\n\r\n*0\r\n*-1\r\nGET a\r\n";
        let got = parse_all(input, 1000).expect("parses");
        assert_eq!(
            got,
            vec![
                argv(&["PING"]),
                argv(&["ECHO", "hi"]),
                argv(&["set", "a", "b c"]),
                argv(&["GET", "a"]),
            ]
        );
    }

    #[test]
    fn binary_safe_bulks() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n\0\xff\r\n", 3).expect("parses");
        assert_eq!(got, vec![vec![b"GET".to_vec(), b"\r\n\0\xff".to_vec()]]);
    }

    #[test]
    fn errors_have_redis_texts() {
        let cases: [(&[u8], &str); 8] = [
            (b"*x\r\n", "invalid multibulk length"),
            (b"*65537\r\n", "invalid multibulk length"),
            (b"*1\r\nfoo\r\n", "expected '$', got 'f'"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$1048577\r\n", "invalid bulk length"),
            (b"*1\r\n$abc\r\n", "invalid bulk length"),
            (b"set a \"b\n", "unbalanced quotes in request"),
            (b"*1\r\n$1\r\nx\r\n*1\r\n:", "expected '$', got ':'"),
        ];
        for (input, msg) in cases {
            let got = parse_all(input, 1000).map_err(|e| e.line());
            let mut want = b"ERR Protocol error: ".to_vec();
            want.extend_from_slice(msg.as_bytes());
            assert_eq!(got, Err(want), "{input:?}");
        }
    }

    #[test]
    fn limits() {
        let long = vec![b'a'; MAX_INLINE + 2];
        assert_eq!(parse_all(&long, 4096), Err(Msg("too big inline request")));
        let mut mb = b"*".to_vec();
        mb.extend(vec![b'1'; MAX_INLINE + 2]);
        assert_eq!(parse_all(&mb, 4096), Err(Msg("too big mbulk count string")));
        // A maximal bulk is fine, in pieces.
        let mut big = b"*2\r\n$3\r\nSET\r\n$1048576\r\n".to_vec();
        big.extend(vec![b'x'; MAX_BULK]);
        big.extend_from_slice(b"\r\n");
        let got = parse_all(&big, 65536).expect("parses");
        assert_eq!(got[0][1].len(), MAX_BULK);
        // Too many big bulks in one request.
        let mut huge = b"*5\r\n".to_vec();
        for _ in 0..5 {
            huge.extend_from_slice(b"$1048576\r\n");
            huge.extend(vec![b'x'; MAX_BULK]);
            huge.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_all(&huge, 1 << 20), Err(Msg("too big request")));
    }
}
