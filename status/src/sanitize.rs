//! Strings from a remote endpoint made harmless for a terminal. A status
//! endpoint's name, peer and error text come from another process, maybe
//! another host: printed raw, an escape sequence in them could move the
//! cursor, rewrite what is on the screen, retitle the window or (on some
//! terminals) answer back with input; bidirectional overrides can make a
//! line read differently from what it says. Every control character (C0,
//! DEL, C1) and every bidi or invisible formatting character is shown as
//! an escape instead.

/// Characters that are not controls but still change how a line looks:
/// bidi embeddings, overrides and isolates, zero-width characters, marks.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}'
        | '\u{061c}'
        | '\u{feff}')
}

fn is_unsafe(c: char) -> bool {
    c.is_control() || is_invisible_format(c)
}

/// `s` with every unsafe character written as `\x1b` / `\u{202e}`.
pub fn for_terminal(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if (c as u32) < 0x80 && is_unsafe(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Compact JSON text made safe for a terminal: JSON writers escape C0
/// controls already, but not DEL, C1 or bidi characters; those become
/// `\uXXXX` escapes (still the same JSON value).
pub fn json_for_terminal(json: &str) -> String {
    if !json.chars().any(is_unsafe) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if is_unsafe(c) {
            // Every unsafe character is in the Basic Multilingual Plane.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(for_terminal("vm1-a"), "vm1-a");
        assert_eq!(
            for_terminal("x\x1b]0;owned\x07\x1b[2J\u{9b}1m"),
            "x\\x1b]0;owned\\x07\\x1b[2J\\u{9b}1m"
        );
        assert_eq!(for_terminal("a\u{202e}gnp.exe"), "a\\u{202e}gnp.exe");
        assert_eq!(for_terminal("é and ü stay"), "é and ü stay");
        let json = serde_json::json!({"name": "a\u{9b}b\u{7f}\u{202e}"}).to_string();
        let safe = json_for_terminal(&json);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["name"], "a\u{9b}b\u{7f}\u{202e}");
    }
}
