//! Keyspace commands: DEL EXISTS EXPIRE* PERSIST TTL PTTL TYPE KEYS SCAN
//! DBSIZE FLUSHALL.

use alloc::vec::Vec;

use super::{Ctx, int_arg, is};
use crate::glob::glob_match;
use crate::intfmt::{parse_usize, push_u64};
use crate::resp::reply;

pub fn del(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if !x.admit_shrink() {
        return;
    }
    let n = a[1..].iter().filter(|k| x.e.del(k)).count();
    reply::int(x.out, n as i64);
}

pub fn exists(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let now = x.e.now_ms();
    let n = a[1..].iter().filter(|k| x.e.store.contains(k, now)).count();
    reply::int(x.out, n as i64);
}

pub fn dbsize(x: &mut Ctx<'_>, _a: &[Vec<u8>]) {
    reply::int(x.out, x.e.store.len() as i64);
}

pub fn flushall(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if a.len() > 2 || (a.len() == 2 && !is(&a[1], "async") && !is(&a[1], "sync")) {
        return x.syntax();
    }
    if !x.admit_shrink() {
        return;
    }
    x.e.flush();
    x.ok();
}

pub fn type_(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let now = x.e.now_ms();
    let t: &[u8] = if x.e.store.contains(&a[1], now) {
        b"string"
    } else {
        b"none"
    };
    reply::simple(x.out, t);
}

fn ttl_common(x: &mut Ctx<'_>, key: &[u8], ms: bool) {
    let now = x.e.now_ms();
    let v = match x.e.store.get(key, now) {
        None => -2,
        Some(e) if e.expire_at_ms == 0 => -1,
        Some(e) => {
            let left = (e.expire_at_ms - now) as i64;
            if ms { left } else { (left + 500) / 1000 }
        }
    };
    reply::int(x.out, v);
}

pub fn ttl(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    ttl_common(x, &a[1], false);
}

pub fn pttl(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    ttl_common(x, &a[1], true);
}

pub fn persist(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if !x.admit_shrink() {
        return;
    }
    let now = x.e.now_ms();
    let has =
        x.e.store
            .get(&a[1], now)
            .is_some_and(|e| e.expire_at_ms != 0);
    if has {
        x.e.expire(&a[1], 0);
    }
    reply::int(x.out, i64::from(has));
}

pub fn expire(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    expire_generic(x, a, true, true, "expire");
}
pub fn pexpire(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    expire_generic(x, a, true, false, "pexpire");
}
pub fn expireat(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    expire_generic(x, a, false, true, "expireat");
}
pub fn pexpireat(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    expire_generic(x, a, false, false, "pexpireat");
}

fn expire_generic(x: &mut Ctx<'_>, a: &[Vec<u8>], relative: bool, secs: bool, name: &str) {
    let Some(v) = int_arg(x, &a[2]) else {
        return;
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        if is(o, "nx") {
            nx = true;
        } else if is(o, "xx") {
            xx = true;
        } else if is(o, "gt") {
            gt = true;
        } else if is(o, "lt") {
            lt = true;
        } else {
            let mut m = b"ERR Unsupported option ".to_vec();
            m.extend_from_slice(o);
            return reply::error(x.out, &m);
        }
    }
    if nx && (xx || gt || lt) {
        return x.err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return x.err("ERR GT and LT options at the same time are not compatible");
    }
    let now = x.e.now_ms();
    let when = (if secs { v.checked_mul(1000) } else { Some(v) }).and_then(|ms| {
        if relative {
            ms.checked_add(now as i64)
        } else {
            Some(ms)
        }
    });
    let Some(when) = when else {
        let mut m = b"ERR invalid expire time in '".to_vec();
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(b"' command");
        return reply::error(x.out, &m);
    };
    let Some(cur) = x.e.store.get(&a[1], now).map(|e| e.expire_at_ms) else {
        return reply::int(x.out, 0);
    };
    let new = when.max(0) as u64;
    let skip = (nx && cur != 0)
        || (xx && cur == 0)
        || (gt && (cur == 0 || new <= cur))
        || (lt && cur != 0 && new >= cur);
    if skip {
        return reply::int(x.out, 0);
    }
    if !x.admit_shrink() {
        return;
    }
    if new <= now {
        x.e.del(&a[1]);
    } else {
        x.e.expire(&a[1], new);
    }
    reply::int(x.out, 1);
}

pub fn keys(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let now = x.e.now_ms();
    let pat = &a[1];
    let all = pat.as_slice() == b"*";
    let found: Vec<&Vec<u8>> =
        x.e.store
            .iter()
            .filter(|(k, e)| !e.expired(now) && (all || glob_match(pat, k)))
            .map(|(k, _)| k)
            .collect();
    reply::array(x.out, found.len());
    for k in found {
        reply::bulk(x.out, k);
    }
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. Cursors name a
/// remembered position in key order, so keys present for the whole
/// iteration are returned exactly once even while others come and go.
pub fn scan(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let Some(cursor) = parse_usize(&a[1]) else {
        return x.err("ERR invalid cursor");
    };
    let mut count = 10usize;
    let mut pattern: Option<&[u8]> = None;
    let mut strings_only_match = true;
    let mut i = 2;
    while i < a.len() {
        if i + 1 >= a.len() {
            return x.syntax();
        }
        if is(&a[i], "count") {
            let Some(c) = int_arg(x, &a[i + 1]) else {
                return;
            };
            if c < 1 {
                return x.syntax();
            }
            count = c.min(1 << 20) as usize;
        } else if is(&a[i], "match") {
            pattern = Some(&a[i + 1]);
        } else if is(&a[i], "type") {
            strings_only_match = is(&a[i + 1], "string");
        } else {
            return x.syntax();
        }
        i += 2;
    }
    let start: Option<Vec<u8>> = if cursor == 0 {
        None
    } else {
        match x.e.cursor(cursor as u64) {
            Some(k) => Some(k.to_vec()),
            None => return x.err("ERR invalid cursor"),
        }
    };
    let now = x.e.now_ms();
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut seen = 0;
    for (k, e) in x.e.store.range_after(start.as_deref()) {
        if seen == count {
            break;
        }
        seen += 1;
        last = Some(k.clone());
        let ok = strings_only_match && !e.expired(now) && pattern.is_none_or(|p| glob_match(p, k));
        if ok {
            found.push(k.clone());
        }
    }
    let next = match last {
        Some(k) if seen == count => x.e.save_cursor(k),
        _ => 0,
    };
    reply::array(x.out, 2);
    let mut c = Vec::new();
    push_u64(&mut c, next);
    reply::bulk(x.out, &c);
    reply::array(x.out, found.len());
    for k in &found {
        reply::bulk(x.out, k);
    }
}
