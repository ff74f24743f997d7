//! Console output: whole lines, one exit each. `StackBuf` formats without
//! the heap, for early boot and the panic handler.

use core::fmt;

use crate::ports;

/// A fixed-size formatting buffer; text past its end is cut.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The text, or `?` if the cut fell inside a character.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes one formatted line (a newline is appended) in one exit.
pub fn line(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::<1024>::new();
    let _ = fmt::write(&mut b, args);
    let _ = fmt::Write::write_str(&mut b, "\n");
    ports::console(b.as_bytes());
}

/// `println!`-like: one console exit per line.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(format_args!($($arg)*)) };
}
