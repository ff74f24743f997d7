//! Splitting an inline command line into arguments, as Redis's
//! `sdssplitargs` does: words separated by white space; `"..."` with
//! `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` escapes; `'...'` with `\'`; a closing
//! quote must be followed by white space or the end of the line.

use alloc::vec::Vec;

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The arguments of `line`, or `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        // 0 = bare, 1 = double quotes, 2 = single quotes.
        let mut quote = 0u8;
        loop {
            if quote == 1 {
                let c = *line.get(i)?;
                if c == b'\\'
                    && i + 3 < line.len()
                    && line[i + 1] == b'x'
                    && let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3]))
                {
                    cur.push(h * 16 + l);
                    i += 4;
                    continue;
                }
                if c == b'\\' && i + 1 < line.len() {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if i + 1 < line.len() && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if quote == 2 {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < line.len() && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(&c) if is_space(c) => break,
                    Some(b'"') => quote = 1,
                    Some(b'\'') => quote = 2,
                    Some(&c) => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::split_args as s;
    use alloc::vec;
    use alloc::vec::Vec;

    fn v(words: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
        Some(words.iter().map(|w| w.to_vec()).collect())
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(s(b"  set  a b "), v(&[b"set", b"a", b"b"]));
        assert_eq!(s(b"set \"a b\" 'c d'"), v(&[b"set", b"a b", b"c d"]));
        assert_eq!(s(b"echo \"\\x41\\n\\\"\""), v(&[b"echo", b"A\n\""]));
        assert_eq!(s(b"echo 'it\\'s'"), v(&[b"echo", b"it's"]));
        assert_eq!(s(b"echo \"\""), v(&[b"echo", b""]));
        assert_eq!(s(b"a\"b c\""), v(&[b"ab c"]));
        assert_eq!(s(b""), Some(vec![]));
    }

    #[test]
    fn unbalanced() {
        assert_eq!(s(b"echo \"abc"), None);
        assert_eq!(s(b"echo 'abc"), None);
        assert_eq!(s(b"echo \"a\"b"), None);
        assert_eq!(s(b"echo 'a'b"), None);
        assert_eq!(s(b"echo \"\\"), None);
    }
}
