//! The RESP command table and dispatcher. Replies and error texts follow
//! Redis 7 so that stock `redis-cli` and `redis-benchmark` work unmodified.

mod keys;
mod server;
mod strings;

#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use crate::engine::{Engine, Refusal};
use crate::resp::reply;

/// One connected client, as commands see it.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub id: u64,
    pub name: Option<Vec<u8>>,
    /// Peer address, `ip:port`.
    pub addr: Vec<u8>,
    /// Local address, `ip:port`.
    pub laddr: Vec<u8>,
    /// When the connection was accepted (Unix ms).
    pub created_ms: u64,
    /// Name of the last command (lowercase).
    pub last_cmd: Vec<u8>,
    /// Set by QUIT: close once the reply has been sent.
    pub close_after_reply: bool,
}

/// What a command runs with.
pub(crate) struct Ctx<'a> {
    pub e: &'a mut Engine,
    pub c: &'a mut Client,
    pub out: &'a mut Vec<u8>,
}

impl Ctx<'_> {
    pub fn err(&mut self, msg: &str) {
        reply::error(self.out, msg.as_bytes());
    }
    pub fn syntax(&mut self) {
        self.err("ERR syntax error");
    }
    pub fn not_int(&mut self) {
        self.err("ERR value is not an integer or out of range");
    }
    pub fn ok(&mut self) {
        self.out.extend_from_slice(reply::OK);
    }
    /// Checks that a write growing the data by `grow` bytes may run;
    /// replies with the refusal if not.
    pub fn admit(&mut self, grow: u64) -> bool {
        let r = self.e.admit(grow);
        self.admitted(r)
    }
    /// Like `admit` for writes that do not grow the data.
    pub fn admit_shrink(&mut self) -> bool {
        let r = self.e.admit_shrink();
        self.admitted(r)
    }
    /// Whether the engine admitted the write; replies with its refusal if not.
    fn admitted(&mut self, r: Result<(), Refusal>) -> bool {
        match r {
            Ok(()) => true,
            Err(r) => {
                reply::error(self.out, r.message().as_bytes());
                false
            }
        }
    }
}

type Handler = fn(&mut Ctx<'_>, &[Vec<u8>]);

/// A command: name, Redis arity (n = exactly n arguments including the
/// name, -n = at least n), flags, key positions, handler.
pub(crate) struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub keys: (i32, i32, i32),
    pub run: Handler,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WD: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const S: &[&str] = &["loading", "stale"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $run:path) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            run: $run,
        }
    };
}

/// The command table, sorted by name (binary search).
pub(crate) static TABLE: &[Spec] = &[
    spec!("append", 3, WF, (1, 1, 1), strings::append),
    spec!("client", -2, S, (0, 0, 0), server::client),
    spec!("command", -1, S, (0, 0, 0), server::command),
    spec!("config", -2, S, (0, 0, 0), server::config),
    spec!("dbsize", 1, RF, (0, 0, 0), keys::dbsize),
    spec!("decr", 2, WF, (1, 1, 1), strings::decr),
    spec!("decrby", 3, WF, (1, 1, 1), strings::decrby),
    spec!("del", -2, &["write"], (1, -1, 1), keys::del),
    spec!("echo", 2, F, (0, 0, 0), server::echo),
    spec!("exists", -2, RF, (1, -1, 1), keys::exists),
    spec!("expire", -3, WD, (1, 1, 1), keys::expire),
    spec!("expireat", -3, WD, (1, 1, 1), keys::expireat),
    spec!("flushall", -1, &["write"], (0, 0, 0), keys::flushall),
    spec!("flushdb", -1, &["write"], (0, 0, 0), keys::flushall),
    spec!("get", 2, RF, (1, 1, 1), strings::get),
    spec!("getdel", 2, WD, (1, 1, 1), strings::getdel),
    spec!(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        (0, 0, 0),
        server::hello
    ),
    spec!("incr", 2, WF, (1, 1, 1), strings::incr),
    spec!("incrby", 3, WF, (1, 1, 1), strings::incrby),
    spec!("info", -1, S, (0, 0, 0), server::info),
    spec!("keys", 2, R, (0, 0, 0), keys::keys),
    spec!("mget", -2, RF, (1, -1, 1), strings::mget),
    spec!("mset", -3, W, (1, -1, 2), strings::mset),
    spec!("persist", 2, WD, (1, 1, 1), keys::persist),
    spec!("pexpire", -3, WD, (1, 1, 1), keys::pexpire),
    spec!("pexpireat", -3, WD, (1, 1, 1), keys::pexpireat),
    spec!("ping", -1, F, (0, 0, 0), server::ping),
    spec!("pttl", 2, RF, (1, 1, 1), keys::pttl),
    spec!(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast"],
        (0, 0, 0),
        server::quit
    ),
    spec!("scan", -2, R, (0, 0, 0), keys::scan),
    spec!(
        "select",
        2,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        server::select
    ),
    spec!("set", -3, W, (1, 1, 1), strings::set),
    spec!("setnx", 3, WF, (1, 1, 1), strings::setnx),
    spec!("strlen", 2, RF, (1, 1, 1), strings::strlen),
    spec!(
        "time",
        1,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        server::time
    ),
    spec!("ttl", 2, RF, (1, 1, 1), keys::ttl),
    spec!("type", 2, RF, (1, 1, 1), keys::type_),
    spec!("unlink", -2, WD, (1, -1, 1), keys::del),
];

/// Case-insensitive ASCII comparison with a lowercase literal.
pub(crate) fn is(arg: &[u8], lower: &str) -> bool {
    arg.eq_ignore_ascii_case(lower.as_bytes())
}

pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > 32 {
        return None;
    }
    let mut buf = [0u8; 32];
    let low = &mut buf[..name.len()];
    low.copy_from_slice(name);
    low.make_ascii_lowercase();
    TABLE
        .binary_search_by(|s| s.name.as_bytes().cmp(low))
        .ok()
        .map(|i| &TABLE[i])
}

/// Executes one command, appending its reply to `out`.
pub fn execute(e: &mut Engine, c: &mut Client, argv: &[Vec<u8>], out: &mut Vec<u8>) {
    let Some(name) = argv.first() else {
        return;
    };
    e.stats.commands += 1;
    let mut x = Ctx { e, c, out };
    let Some(spec) = lookup(name) else {
        unknown_command(&mut x, argv);
        return;
    };
    x.c.last_cmd.clear();
    x.c.last_cmd.extend_from_slice(spec.name.as_bytes());
    let argc = argv.len() as i32;
    if (spec.arity > 0 && argc != spec.arity) || argc < -spec.arity {
        wrong_args(&mut x, spec.name);
        return;
    }
    (spec.run)(&mut x, argv);
}

pub(crate) fn wrong_args(x: &mut Ctx<'_>, name: &str) {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"ERR wrong number of arguments for '");
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(b"' command");
    reply::error(x.out, &m);
}

/// Redis 7: `unknown command 'foo', with args beginning with: 'a' 'b' `
/// (each argument and the preview capped at 128 bytes).
fn unknown_command(x: &mut Ctx<'_>, argv: &[Vec<u8>]) {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"ERR unknown command '");
    m.extend_from_slice(&argv[0][..argv[0].len().min(128)]);
    m.extend_from_slice(b"', with args beginning with: ");
    let mut args: Vec<u8> = Vec::new();
    for a in &argv[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push(b'\'');
        args.extend_from_slice(&a[..a.len().min(room)]);
        args.extend_from_slice(b"' ");
    }
    m.extend_from_slice(&args);
    reply::error(x.out, &m);
}

/// Parses an integer argument, replying with Redis's error if it is not one.
pub(crate) fn int_arg(x: &mut Ctx<'_>, a: &[u8]) -> Option<i64> {
    let v = crate::intfmt::parse_i64(a);
    if v.is_none() {
        x.not_int();
    }
    v
}
