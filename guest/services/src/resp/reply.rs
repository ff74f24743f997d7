//! RESP2 reply encoding.

use alloc::vec::Vec;

use crate::intfmt::{push_i64, push_u64};

/// `+OK`
pub const OK: &[u8] = b"+OK\r\n";
/// Null bulk string.
pub const NIL: &[u8] = b"$-1\r\n";

/// `+text` (no CR/LF inside).
pub fn simple(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'+');
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// `-text`: `s` starts with the error code (e.g. `ERR ...`). CR and LF in
/// it are replaced by spaces, as Redis does, so a reply stays one line.
pub fn error(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'-');
    out.extend(
        s.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `:n`
pub fn int(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len` + data.
pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    push_u64(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A bulk or the null bulk.
pub fn opt_bulk(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(d) => bulk(out, d),
        None => out.extend_from_slice(NIL),
    }
}

/// `*n` header of an array of `n` elements.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let mut o = Vec::new();
        simple(&mut o, b"PONG");
        error(&mut o, b"ERR bad\r\nthing");
        int(&mut o, -3);
        bulk(&mut o, b"");
        opt_bulk(&mut o, None);
        array(&mut o, 2);
        assert_eq!(
            &o[..],
            b"+PONG\r\n-ERR bad  thing\r\n:-3\r\n$0\r\n\r\n$-1\r\n*2\r\n"
        );
    }
}
