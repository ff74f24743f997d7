//! Connection and server commands: PING ECHO SELECT QUIT TIME HELLO CLIENT
//! CONFIG COMMAND INFO.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Ctx, TABLE, int_arg, is, lookup, wrong_args};
use crate::engine::DurabilityMode;
use crate::glob::glob_match;
use crate::intfmt::push_u64;
use crate::limits::{MAX_BULK, MAX_RESP_CLIENTS, RESP_PORT};
use crate::resp::reply;

/// The Redis version this server answers like.
pub const REDIS_VERSION: &str = "7.0.0";

pub fn ping(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    match a.len() {
        1 => reply::simple(x.out, b"PONG"),
        2 => reply::bulk(x.out, &a[1]),
        _ => wrong_args(x, "ping"),
    }
}

pub fn echo(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    reply::bulk(x.out, &a[1]);
}

pub fn select(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    match int_arg(x, &a[1]) {
        Some(0) => x.ok(),
        Some(_) => x.err("ERR DB index is out of range"),
        None => {}
    }
}

pub fn quit(x: &mut Ctx<'_>, _a: &[Vec<u8>]) {
    x.c.close_after_reply = true;
    x.ok();
}

pub fn time(x: &mut Ctx<'_>, _a: &[Vec<u8>]) {
    let ns = x.e.now_ns();
    let mut s = Vec::new();
    let mut us = Vec::new();
    push_u64(&mut s, ns / 1_000_000_000);
    push_u64(&mut us, ns % 1_000_000_000 / 1000);
    reply::array(x.out, 2);
    reply::bulk(x.out, &s);
    reply::bulk(x.out, &us);
}

pub fn hello(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let mut i = 1;
    if a.len() >= 2 {
        match crate::intfmt::parse_i64(&a[1]) {
            Some(2) => {}
            Some(_) => return x.err("NOPROTO sorry, this protocol version is not supported."),
            None => return x.err("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut name = None;
    while i < a.len() {
        if is(&a[i], "auth") && i + 2 < a.len() {
            // No passwords are configured: the default user accepts any.
            i += 3;
        } else if is(&a[i], "setname") && i + 1 < a.len() {
            name = Some(a[i + 1].clone());
            i += 2;
        } else {
            let mut m = b"ERR Syntax error in HELLO option '".to_vec();
            m.extend_from_slice(&a[i]);
            m.push(b'\'');
            return reply::error(x.out, &m);
        }
    }
    if let Some(n) = name {
        if !valid_name(&n) {
            return bad_name(x);
        }
        x.c.name = (!n.is_empty()).then_some(n);
    }
    reply::array(x.out, 14);
    reply::bulk(x.out, b"server");
    reply::bulk(x.out, b"redis");
    reply::bulk(x.out, b"version");
    reply::bulk(x.out, REDIS_VERSION.as_bytes());
    reply::bulk(x.out, b"proto");
    reply::int(x.out, 2);
    reply::bulk(x.out, b"id");
    reply::int(x.out, x.c.id as i64);
    reply::bulk(x.out, b"mode");
    reply::bulk(x.out, b"standalone");
    reply::bulk(x.out, b"role");
    reply::bulk(x.out, b"master");
    reply::bulk(x.out, b"modules");
    reply::array(x.out, 0);
}

fn valid_name(n: &[u8]) -> bool {
    n.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn bad_name(x: &mut Ctx<'_>) {
    x.err("ERR Client names cannot contain spaces, newlines or special characters.");
}

fn sub_wrong_args(x: &mut Ctx<'_>, cmd: &str, sub: &[u8]) {
    let mut m = b"ERR wrong number of arguments for '".to_vec();
    m.extend_from_slice(cmd.as_bytes());
    m.push(b'|');
    m.extend(sub.iter().map(|b| b.to_ascii_lowercase()));
    m.extend_from_slice(b"' command");
    reply::error(x.out, &m);
}

fn unknown_sub(x: &mut Ctx<'_>, cmd: &str, sub: &[u8]) {
    let mut m = b"ERR unknown subcommand '".to_vec();
    m.extend_from_slice(&sub[..sub.len().min(128)]);
    m.extend_from_slice(b"'. Try ");
    m.extend(cmd.bytes().map(|b| b.to_ascii_uppercase()));
    m.extend_from_slice(b" HELP.");
    reply::error(x.out, &m);
}

fn client_line(x: &Ctx<'_>) -> Vec<u8> {
    let mut s = String::new();
    let now = x.e.now_ms();
    let _ = writeln!(
        s,
        "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 multi=-1 cmd={} user=default resp=2",
        x.c.id,
        String::from_utf8_lossy(&x.c.addr),
        String::from_utf8_lossy(&x.c.laddr),
        String::from_utf8_lossy(x.c.name.as_deref().unwrap_or(b"")),
        now.saturating_sub(x.c.created_ms) / 1000,
        String::from_utf8_lossy(&x.c.last_cmd),
    );
    s.into_bytes()
}

pub fn client(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let sub = &a[1];
    let n = a.len();
    if is(sub, "setname") {
        if n != 3 {
            return sub_wrong_args(x, "client", sub);
        }
        if !valid_name(&a[2]) {
            return bad_name(x);
        }
        x.c.name = (!a[2].is_empty()).then(|| a[2].clone());
        x.ok();
    } else if is(sub, "getname") {
        if n != 2 {
            return sub_wrong_args(x, "client", sub);
        }
        let name = x.c.name.clone();
        reply::opt_bulk(x.out, name.as_deref());
    } else if is(sub, "id") {
        if n != 2 {
            return sub_wrong_args(x, "client", sub);
        }
        reply::int(x.out, x.c.id as i64);
    } else if is(sub, "info") || is(sub, "list") {
        x.c.last_cmd = if is(sub, "info") {
            b"client|info".to_vec()
        } else {
            b"client|list".to_vec()
        };
        let line = client_line(x);
        reply::bulk(x.out, &line);
    } else if is(sub, "setinfo") {
        if n != 4 {
            return sub_wrong_args(x, "client", sub);
        }
        x.ok();
    } else if is(sub, "no-evict") || is(sub, "no-touch") || is(sub, "reply") {
        if n != 3 {
            return sub_wrong_args(x, "client", sub);
        }
        x.ok();
    } else if is(sub, "help") {
        let lines: [&[u8]; 5] = [
            b"CLIENT <subcommand> [<arg> ...]. Subcommands are:",
            b"GETNAME, SETNAME <name>, ID, INFO, LIST",
            b"SETINFO <attr> <value>, NO-EVICT, NO-TOUCH, REPLY (accepted, no effect)",
            b"HELP",
            b"(lockstep guest: a subset of Redis's CLIENT)",
        ];
        reply::array(x.out, lines.len());
        for l in lines {
            reply::simple(x.out, l);
        }
    } else {
        unknown_sub(x, "client", sub);
    }
}

/// The parameters CONFIG GET knows (redis-benchmark asks for `save` and
/// `appendonly` when it starts).
fn config_params(x: &Ctx<'_>) -> [(&'static str, Vec<u8>); 10] {
    let durable = x.e.durability() == DurabilityMode::Journal;
    let num = |v: u64| {
        let mut b = Vec::new();
        push_u64(&mut b, v);
        b
    };
    [
        ("appendfsync", b"always".to_vec()),
        (
            "appendonly",
            if durable {
                b"yes".to_vec()
            } else {
                b"no".to_vec()
            },
        ),
        ("databases", b"1".to_vec()),
        ("maxclients", num(MAX_RESP_CLIENTS as u64)),
        ("maxmemory", num(x.e.memory_limit())),
        ("port", num(u64::from(RESP_PORT))),
        ("proto-max-bulk-len", num(MAX_BULK as u64)),
        ("save", Vec::new()),
        ("timeout", b"0".to_vec()),
        ("tcp-keepalive", b"0".to_vec()),
    ]
}

pub fn config(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let sub = &a[1];
    if is(sub, "get") {
        if a.len() < 3 {
            return sub_wrong_args(x, "config", sub);
        }
        let params = config_params(x);
        let pats: Vec<Vec<u8>> = a[2..].iter().map(|p| p.to_ascii_lowercase()).collect();
        let hits: Vec<&(&str, Vec<u8>)> = params
            .iter()
            .filter(|(name, _)| pats.iter().any(|p| glob_match(p, name.as_bytes())))
            .collect();
        reply::array(x.out, hits.len() * 2);
        for (name, v) in hits {
            reply::bulk(x.out, name.as_bytes());
            reply::bulk(x.out, v);
        }
    } else if is(sub, "resetstat") {
        let keep = (x.e.stats.connected_clients, x.e.stats.http_clients);
        x.e.stats = Default::default();
        (x.e.stats.connected_clients, x.e.stats.http_clients) = keep;
        x.ok();
    } else if is(sub, "set") {
        x.err("ERR CONFIG SET is not supported by the lockstep guest");
    } else {
        unknown_sub(x, "config", sub);
    }
}

fn command_info(x: &mut Ctx<'_>, s: &super::Spec) {
    reply::array(x.out, 10);
    reply::bulk(x.out, s.name.as_bytes());
    reply::int(x.out, i64::from(s.arity));
    reply::array(x.out, s.flags.len());
    for f in s.flags {
        reply::simple(x.out, f.as_bytes());
    }
    reply::int(x.out, i64::from(s.keys.0));
    reply::int(x.out, i64::from(s.keys.1));
    reply::int(x.out, i64::from(s.keys.2));
    for _ in 0..4 {
        reply::array(x.out, 0); // ACL categories, tips, key specs, subcommands
    }
}

pub fn command(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    if a.len() == 1 {
        reply::array(x.out, TABLE.len());
        for s in TABLE {
            command_info(x, s);
        }
        return;
    }
    let sub = &a[1];
    if is(sub, "count") {
        reply::int(x.out, TABLE.len() as i64);
    } else if is(sub, "docs") {
        // An empty map: clients (redis-cli 7) then fall back to no hints.
        reply::array(x.out, 0);
    } else if is(sub, "info") {
        reply::array(x.out, a.len() - 2);
        for name in &a[2..] {
            match lookup(name) {
                Some(s) => command_info(x, s),
                None => x.out.extend_from_slice(b"*-1\r\n"),
            }
        }
    } else if is(sub, "list") {
        reply::array(x.out, TABLE.len());
        for s in TABLE {
            reply::bulk(x.out, s.name.as_bytes());
        }
    } else {
        unknown_sub(x, "command", sub);
    }
}

pub fn info(x: &mut Ctx<'_>, a: &[Vec<u8>]) {
    let want = |name: &str| {
        a.len() == 1
            || a[1..]
                .iter()
                .any(|s| is(s, name) || is(s, "all") || is(s, "everything") || is(s, "default"))
    };
    let mut s = String::new();
    let e = &*x.e;
    let st = &e.stats;
    if want("server") {
        let up = e.uptime_ms() / 1000;
        let _ = write!(
            s,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nlockstep_guest_version:{}\r\n\
             redis_mode:standalone\r\nos:lockstep-guest x86_64\r\narch_bits:64\r\n\
             process_id:1\r\ntcp_port:{RESP_PORT}\r\nuptime_in_seconds:{up}\r\n\
             uptime_in_days:{}\r\nexecutable:/lockstep-guest\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            up / 86400,
        );
    }
    if want("clients") {
        let _ = write!(
            s,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{MAX_RESP_CLIENTS}\r\n\
             blocked_clients:0\r\nhttp_clients:{}\r\n\r\n",
            st.connected_clients, st.http_clients,
        );
    }
    if want("stats") {
        let _ = write!(
            s,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             rejected_connections:{}\r\nexpired_keys:{}\r\nkeyspace_hits:{}\r\n\
             keyspace_misses:{}\r\nhttp_requests:{}\r\nprotocol_errors:{}\r\n\
             refused_writes:{}\r\n\r\n",
            st.total_connections,
            st.commands,
            st.rejected_connections,
            e.store.expired_keys,
            st.keyspace_hits,
            st.keyspace_misses,
            st.http_requests,
            st.protocol_errors,
            st.refused_writes,
        );
    }
    if want("persistence") {
        let mode = match e.durability() {
            DurabilityMode::Journal => "journal",
            DurabilityMode::ReadOnly => "read-only",
            DurabilityMode::Volatile => "none",
        };
        let _ = write!(
            s,
            "# Persistence\r\nloading:0\r\naof_enabled:{}\r\nrdb_bgsave_in_progress:0\r\n\
             aof_rewrite_in_progress:0\r\ndurability:{mode}\r\ndurable_batch:{}\r\n\
             pending_batch:{}\r\n",
            u8::from(e.durability() == DurabilityMode::Journal),
            e.durable(),
            e.open_batch(),
        );
        if let Some(j) = e.journal() {
            let _ = write!(
                s,
                "log_generation:{}\r\nlog_used_bytes:{}\r\nlog_capacity_bytes:{}\r\n\
                 log_live_bytes:{}\r\nlog_live_limit:{}\r\nlog_commits:{}\r\n\
                 log_bytes_written:{}\r\nlog_compactions:{}\r\nlog_failed:{}\r\n",
                j.generation(),
                j.used_bytes(),
                j.capacity_bytes(),
                e.store.snapshot_bytes(),
                j.live_limit(),
                j.stats.commits,
                j.stats.bytes_written,
                j.stats.compactions,
                u8::from(j.failed()),
            );
        }
        if let Some(r) = &e.recovery {
            let _ = write!(
                s,
                "recovered_keys:{}\r\nrecovered_records:{}\r\nrecovered_commits:{}\r\n\
                 recovery_tail:{}\r\n",
                r.keys, r.records, r.commits, r.tail,
            );
        }
        s.push_str("\r\n");
    }
    if want("keyspace") {
        s.push_str("# Keyspace\r\n");
        if !e.store.is_empty() {
            let _ = write!(
                s,
                "db0:keys={},expires={},avg_ttl=0\r\n",
                e.store.len(),
                e.store.with_expiry()
            );
        }
        s.push_str("\r\n");
    }
    // No trailing blank line, like Redis.
    while s.ends_with("\r\n\r\n") {
        s.truncate(s.len() - 2);
    }
    reply::bulk(x.out, s.as_bytes());
}
