//! String commands: GET SET SETNX GETDEL INCR* DECR* APPEND STRLEN MGET MSET.

use alloc::vec::Vec;

use super::{Ctx, int_arg, is, wrong_args};
use crate::intfmt::{parse_i64, push_i64};
use crate::journal::format::set_record_len;
use crate::resp::reply;

pub fn get(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let v = x.e.get(&a[1]);
    reply::opt_bulk(x.out, v);
}

pub fn strlen(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let n = x.e.get(&a[1]).map_or(0, |v| v.len());
    reply::int(x.out, n as i64);
}

pub fn mget(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    reply::array(x.out, a.len() - 1);
    for k in &a[1..] {
        let v = x.e.get(k);
        reply::opt_bulk(x.out, v);
    }
}

/// Live-data growth of replacing `key`'s value by one of `new_len` bytes.
fn growth(x: &mut Ctx<'_>, key: &[u8], new_len: usize) -> u64 {
    let now = x.e.now_ms();
    let old = x.e.store.get(key, now).map(|e| e.value.len());
    let new = set_record_len(key.len(), new_len) as u64;
    new.saturating_sub(old.map_or(0, |l| set_record_len(key.len(), l) as u64))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expiry {
    None,
    Keep,
    /// Relative (true) or absolute, in ms after conversion.
    At {
        value: i64,
        relative: bool,
        secs: bool,
    },
}

pub fn set(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut exp = Expiry::None;
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        let has_next = i + 1 < a.len();
        if is(o, "nx") && !xx {
            nx = true;
        } else if is(o, "xx") && !nx {
            xx = true;
        } else if is(o, "get") {
            get = true;
        } else if is(o, "keepttl") && exp == Expiry::None {
            exp = Expiry::Keep;
        } else if (is(o, "ex") || is(o, "px") || is(o, "exat") || is(o, "pxat"))
            && exp == Expiry::None
            && has_next
        {
            let Some(v) = int_arg(x, &a[i + 1]) else {
                return;
            };
            exp = Expiry::At {
                value: v,
                relative: is(o, "ex") || is(o, "px"),
                secs: is(o, "ex") || is(o, "exat"),
            };
            i += 1;
        } else {
            x.syntax();
            return;
        }
        i += 1;
    }
    let now = x.e.now_ms();
    let expire_at = match exp {
        Expiry::At {
            value,
            relative,
            secs,
        } => match expire_ms(value, relative, secs, now) {
            Some(t) => Some(t),
            None => {
                x.err("ERR invalid expire time in 'set' command");
                return;
            }
        },
        _ => None,
    };
    let key = &a[1];
    let grow = growth(x, key, a[2].len());
    if !x.admit(grow) {
        return;
    }
    let old =
        x.e.store
            .get(key, now)
            .map(|e| (e.value.clone(), e.expire_at_ms));
    if (nx && old.is_some()) || (xx && old.is_none()) {
        if get {
            reply::opt_bulk(x.out, old.as_ref().map(|o| &o.0[..]));
        } else {
            x.out.extend_from_slice(reply::NIL);
        }
        return;
    }
    let at = match (exp, expire_at) {
        (Expiry::Keep, _) => old.as_ref().map_or(0, |o| o.1),
        (_, Some(t)) => t,
        _ => 0,
    };
    x.e.set(key, a[2].clone(), at);
    if get {
        reply::opt_bulk(x.out, old.as_ref().map(|o| &o.0[..]));
    } else {
        x.ok();
    }
}

/// Converts an expire argument to an absolute Unix ms time, with Redis's
/// validity rules (positive, no overflow); `None` if invalid.
pub(super) fn expire_ms(value: i64, relative: bool, secs: bool, now_ms: u64) -> Option<u64> {
    if value <= 0 {
        return None;
    }
    let ms = if secs {
        value.checked_mul(1000)?
    } else {
        value
    };
    let at = if relative {
        ms.checked_add(i64::try_from(now_ms).ok()?)?
    } else {
        ms
    };
    u64::try_from(at).ok()
}

pub fn setnx(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let grow = growth(x, &a[1], a[2].len());
    if !x.admit(grow) {
        return;
    }
    let now = x.e.now_ms();
    if x.e.store.contains(&a[1], now) {
        reply::int(x.out, 0);
    } else {
        x.e.set(&a[1], a[2].clone(), 0);
        reply::int(x.out, 1);
    }
}

pub fn getdel(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if !x.admit_shrink() {
        return;
    }
    let v = x.e.get(&a[1]).map(|v| v.to_vec());
    if v.is_some() {
        x.e.del(&a[1]);
    }
    reply::opt_bulk(x.out, v.as_deref());
}

fn incr_by(x: &mut Ctx<'_>, key: &[u8], delta: i64) {
    if !x.admit(set_record_len(key.len(), 20) as u64) {
        return;
    }
    let now = x.e.now_ms();
    let (cur, at) = match x.e.store.get(key, now) {
        Some(e) => match parse_i64(&e.value) {
            Some(v) => (v, e.expire_at_ms),
            None => return x.not_int(),
        },
        None => (0, 0),
    };
    let Some(new) = cur.checked_add(delta) else {
        return x.err("ERR increment or decrement would overflow");
    };
    let mut v = Vec::with_capacity(20);
    push_i64(&mut v, new);
    x.e.set(key, v, at);
    reply::int(x.out, new);
}

pub fn incr(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    incr_by(x, &a[1], 1);
}

pub fn decr(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    incr_by(x, &a[1], -1);
}

pub fn incrby(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if let Some(d) = int_arg(x, &a[2]) {
        incr_by(x, &a[1], d);
    }
}

pub fn decrby(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let Some(d) = int_arg(x, &a[2]) else {
        return;
    };
    match d.checked_neg() {
        Some(n) => incr_by(x, &a[1], n),
        None => x.err("ERR decrement would overflow"),
    }
}

pub fn append(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let now = x.e.now_ms();
    let live = x.e.store.contains(&a[1], now);
    let grow = if live {
        a[2].len()
    } else {
        set_record_len(a[1].len(), a[2].len())
    };
    if !x.admit(grow as u64) {
        return;
    }
    let n = x.e.append(&a[1], &a[2]);
    reply::int(x.out, n as i64);
}

pub fn mset(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if a.len().is_multiple_of(2) {
        return wrong_args(x, "mset");
    }
    let grow: u64 = a[1..]
        .chunks(2)
        .map(|kv| set_record_len(kv[0].len(), kv[1].len()) as u64)
        .sum();
    if !x.admit(grow) {
        return;
    }
    for kv in a[1..].chunks(2) {
        x.e.set(&kv[0], kv[1].clone(), 0);
    }
    x.ok();
}
