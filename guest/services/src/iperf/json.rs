//! Just enough JSON for iperf3's parameter and result messages: reading a
//! top-level number or boolean from the client's object, and writing the
//! server's results object. No floats are parsed and nothing nests in what
//! is read; a malformed document is simply "not found".

use alloc::vec::Vec;

use crate::intfmt::{push_i64, push_u64};

/// A top-level value of the client's parameter object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    /// A string, an object, an array, null or a float: present, not read.
    Other,
}

/// The value of top-level `key` in the JSON object `doc`, if present.
/// Strings are skipped with their escapes, so a key name inside a string
/// value is never mistaken for a key.
pub fn field(doc: &[u8], key: &str) -> Option<Value> {
    let mut p = Cursor { b: doc, i: 0 };
    p.ws();
    p.eat(b'{')?;
    loop {
        p.ws();
        if p.peek()? == b'}' {
            return None;
        }
        let name = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        let start = p.i;
        p.skip_value()?;
        if name == key.as_bytes() {
            return Some(scalar(&doc[start..p.i]));
        }
        p.ws();
        if p.next()? != b',' {
            return None;
        }
    }
}

fn scalar(v: &[u8]) -> Value {
    match v {
        b"true" => Value::Bool(true),
        b"false" => Value::Bool(false),
        _ => crate::intfmt::parse_i64(v).map_or(Value::Other, Value::Int),
    }
}

/// Deepest nesting [`Cursor::skip_value`] follows: the parameters are flat.
const MAX_DEPTH: usize = 16;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    /// A string's raw bytes (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'\\' => {
                    self.next()?;
                }
                b'"' => return self.b.get(start..self.i - 1),
                _ => {}
            }
        }
    }
    /// Skips one value of any kind, nesting at most [`MAX_DEPTH`] deep.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    continue;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                _ => {
                    let start = self.i;
                    while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                    {
                        self.i += 1;
                    }
                    if self.i == start {
                        return None;
                    }
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

/// One data stream's line of the results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamResult {
    pub id: u32,
    pub bytes: u64,
}

/// The server's results object, as iperf3's `send_results` writes it: CPU
/// figures (none measured: 0), no retransmit counts, and per stream its
/// bytes and the test's duration.
pub fn results(streams: &[StreamResult], duration_ns: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + 200 * streams.len());
    out.extend_from_slice(
        b"{\"cpu_util_total\":0,\"cpu_util_user\":0,\"cpu_util_system\":0,\"sender_has_retransmits\":0,\"streams\":[",
    );
    for (n, s) in streams.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_u64(&mut out, u64::from(s.id));
        out.extend_from_slice(b",\"bytes\":");
        push_u64(&mut out, s.bytes);
        out.extend_from_slice(b",\"retransmits\":");
        push_i64(&mut out, -1);
        out.extend_from_slice(
            b",\"jitter\":0,\"errors\":0,\"omitted_errors\":0,\"packets\":0,\"omitted_packets\":0,\"start_time\":0,\"end_time\":",
        );
        push_seconds(&mut out, duration_ns);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// `ns` as seconds with six decimals ("1.500000").
fn push_seconds(out: &mut Vec<u8>, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    out.push(b'.');
    let micros = (ns % 1_000_000_000) / 1_000;
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&digits);
}
