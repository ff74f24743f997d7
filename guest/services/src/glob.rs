//! Redis glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`,
//! `[abc]`, `[^a-z]`, and `\` escapes, with Redis's edge cases (an unclosed
//! class ends at the pattern's end; a trailing `\` is a literal).
//!
//! Unlike Redis's recursive matcher this one backtracks only to the last
//! `*`, so a hostile pattern costs O(pattern × key), never exponential time.

/// Whether `s` matches `pat`.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Position after the last `*` and the input position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pat.len() {
            if pat[p] == b'*' {
                while p < pat.len() && pat[p] == b'*' {
                    p += 1;
                }
                if p == pat.len() {
                    return true;
                }
                star = Some((p, i));
                continue;
            }
            if i < s.len() {
                let (ok, next) = one(pat, p, s[i]);
                if ok {
                    p = next;
                    i += 1;
                    continue;
                }
            }
        } else if i == s.len() {
            return true;
        }
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches the single-character token at `pat[p]` (not `*`) against `c`:
/// returns whether it matched and where the next token starts.
fn one(pat: &[u8], p: usize, c: u8) -> (bool, usize) {
    match pat[p] {
        b'?' => (true, p + 1),
        b'\\' if p + 1 < pat.len() => (pat[p + 1] == c, p + 2),
        b'[' => class(pat, p + 1, c),
        lit => (lit == c, p + 1),
    }
}

/// Matches a `[...]` class whose body starts at `pat[p]`.
fn class(pat: &[u8], mut p: usize, c: u8) -> (bool, usize) {
    let negate = pat.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    while p < pat.len() && pat[p] != b']' {
        if pat[p] == b'\\' && p + 1 < pat.len() {
            matched |= pat[p + 1] == c;
            p += 2;
        } else if p + 2 < pat.len() && pat[p + 1] == b'-' {
            let (mut lo, mut hi) = (pat[p], pat[p + 2]);
            if lo > hi {
                core::mem::swap(&mut lo, &mut hi);
            }
            matched |= (lo..=hi).contains(&c);
            p += 3;
        } else {
            matched |= pat[p] == c;
            p += 1;
        }
    }
    // Skip the closing `]` if there is one (an unclosed class just ends).
    if p < pat.len() {
        p += 1;
    }
    (matched != negate, p)
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn basics() {
        assert!(m(b"*", b""));
        assert!(m(b"*", b"anything"));
        assert!(m(b"h?llo", b"hello"));
        assert!(!m(b"h?llo", b"hllo"));
        assert!(m(b"h*llo", b"heeeello"));
        assert!(m(b"h*llo", b"hllo"));
        assert!(m(b"h[ae]llo", b"hallo"));
        assert!(!m(b"h[ae]llo", b"hillo"));
        assert!(m(b"h[^e]llo", b"hallo"));
        assert!(!m(b"h[^e]llo", b"hello"));
        assert!(m(b"h[a-b]llo", b"hbllo"));
        assert!(m(b"h[b-a]llo", b"hallo"));
        assert!(m(b"key:*", b"key:123"));
        assert!(!m(b"key:*", b"ke"));
        assert!(m(b"a\\*b", b"a*b"));
        assert!(!m(b"a\\*b", b"axb"));
        assert!(m(b"a\\", b"a\\"));
        assert!(m(b"[\\]]", b"]"));
        assert!(m(b"x[abc", b"xb"));
        assert!(m(b"*a*b*c*", b"xxaxxbxxcxx"));
        assert!(!m(b"*a*b*c*", b"xxaxxcxxbxx"));
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
    }

    #[test]
    fn hostile_pattern_is_fast() {
        let pat = [b'*', b'a'].repeat(50);
        let s = [b'a'; 5000];
        assert!(!m(&[&pat[..], b"b"].concat(), &s));
    }
}
