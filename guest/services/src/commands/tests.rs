//! Command tests: every command's replies and errors, as redis-cli and
//! redis-benchmark see them.

extern crate std;

use alloc::string::String;
use alloc::vec::Vec;

use super::{Client, execute};
use crate::engine::Engine;
use crate::resp::inline::split_args;

const T0: u64 = 1_700_000_000_000_000_000;

struct H {
    e: Engine,
    c: Client,
}

impl H {
    fn new() -> Self {
        let mut e = Engine::volatile(T0);
        let c = Client {
            id: e.new_client_id(),
            addr: b"10.77.0.1:40000".to_vec(),
            laddr: b"10.77.0.2:6379".to_vec(),
            ..Client::default()
        };
        H { e, c }
    }
    /// Runs an inline command line; returns the raw reply.
    fn run(&mut self, line: &str) -> String {
        let argv = split_args(line.as_bytes()).expect("balanced");
        self.argv(&argv)
    }
    fn argv(&mut self, argv: &[Vec<u8>]) -> String {
        let mut out = Vec::new();
        execute(&mut self.e, &mut self.c, argv, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
    fn advance_ms(&mut self, ms: u64) {
        let now = self.e.now_ns() + ms * 1_000_000;
        self.e.tick(now);
    }
}

#[test]
fn ping_echo_select_quit() {
    let mut h = H::new();
    assert_eq!(h.run("PING"), "+PONG\r\n");
    assert_eq!(h.run("ping hello"), "$5\r\nhello\r\n");
    assert_eq!(
        h.run("ping a b"),
        "-ERR wrong number of arguments for 'ping' command\r\n"
    );
    assert_eq!(h.run("ECHO \"a b\""), "$3\r\na b\r\n");
    assert_eq!(
        h.run("echo"),
        "-ERR wrong number of arguments for 'echo' command\r\n"
    );
    assert_eq!(h.run("SELECT 0"), "+OK\r\n");
    assert_eq!(h.run("SELECT 1"), "-ERR DB index is out of range\r\n");
    assert_eq!(
        h.run("SELECT x"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert!(!h.c.close_after_reply);
    assert_eq!(h.run("QUIT"), "+OK\r\n");
    assert!(h.c.close_after_reply);
}

#[test]
fn unknown_command_preview() {
    let mut h = H::new();
    assert_eq!(
        h.run("FOO bar baz"),
        "-ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' \r\n"
    );
    assert_eq!(
        h.run("nope"),
        "-ERR unknown command 'nope', with args beginning with: \r\n"
    );
    let long = "x".repeat(300);
    let r = h.run(&std::format!("foo {long}"));
    assert!(r.len() < 300, "preview is capped: {}", r.len());
    // CR/LF inside an argument never split the error line.
    let r = h.argv(&[b"a\r\nb".to_vec()]);
    assert_eq!(r.matches("\r\n").count(), 1);
}

#[test]
fn set_get_and_options() {
    let mut h = H::new();
    assert_eq!(h.run("GET k"), "$-1\r\n");
    assert_eq!(h.run("SET k v"), "+OK\r\n");
    assert_eq!(h.run("GET k"), "$1\r\nv\r\n");
    assert_eq!(h.run("SET k v2 NX"), "$-1\r\n");
    assert_eq!(h.run("SET k2 v XX"), "$-1\r\n");
    assert_eq!(h.run("SET k v3 XX GET"), "$1\r\nv\r\n");
    assert_eq!(h.run("SET new v GET"), "$-1\r\n");
    assert_eq!(h.run("SET k v NX XX"), "-ERR syntax error\r\n");
    assert_eq!(h.run("SET k v EX"), "-ERR syntax error\r\n");
    assert_eq!(h.run("SET k v EX 1 PX 1"), "-ERR syntax error\r\n");
    assert_eq!(h.run("SET k v KEEPTTL EX 1"), "-ERR syntax error\r\n");
    assert_eq!(h.run("SET k v BOGUS"), "-ERR syntax error\r\n");
    assert_eq!(
        h.run("SET k v EX x"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(
        h.run("SET k v EX 0"),
        "-ERR invalid expire time in 'set' command\r\n"
    );
    assert_eq!(
        h.run("SET k v EX 9223372036854775807"),
        "-ERR invalid expire time in 'set' command\r\n"
    );
    assert_eq!(
        h.run("SET k"),
        "-ERR wrong number of arguments for 'set' command\r\n"
    );
    assert_eq!(h.run("SET t v EX 10"), "+OK\r\n");
    assert_eq!(h.run("TTL t"), ":10\r\n");
    assert_eq!(h.run("SET t v2 KEEPTTL"), "+OK\r\n");
    assert_eq!(h.run("PTTL t"), ":10000\r\n");
    assert_eq!(h.run("SET t v3"), "+OK\r\n");
    assert_eq!(h.run("TTL t"), ":-1\r\n");
    assert_eq!(h.run("set p v px 1500"), "+OK\r\n");
    h.advance_ms(1499);
    assert_eq!(h.run("get p"), "$1\r\nv\r\n");
    h.advance_ms(1);
    assert_eq!(h.run("get p"), "$-1\r\n");
    let at = h.e.now_ms() / 1000 + 100;
    assert_eq!(h.run(&std::format!("SET a v EXAT {at}")), "+OK\r\n");
    assert!(h.run("TTL a").starts_with(":10"));
    assert_eq!(h.run("SETNX a x"), ":0\r\n");
    assert_eq!(h.run("SETNX b x"), ":1\r\n");
    assert_eq!(h.run("GETDEL b"), "$1\r\nx\r\n");
    assert_eq!(h.run("GETDEL b"), "$-1\r\n");
}

#[test]
fn counters() {
    let mut h = H::new();
    assert_eq!(h.run("INCR c"), ":1\r\n");
    assert_eq!(h.run("INCRBY c 10"), ":11\r\n");
    assert_eq!(h.run("DECR c"), ":10\r\n");
    assert_eq!(h.run("DECRBY c 20"), ":-10\r\n");
    assert_eq!(
        h.run("INCRBY c x"),
        "-ERR value is not an integer or out of range\r\n"
    );
    h.run("SET s abc");
    assert_eq!(
        h.run("INCR s"),
        "-ERR value is not an integer or out of range\r\n"
    );
    h.run("SET s \" 1\"");
    assert_eq!(
        h.run("INCR s"),
        "-ERR value is not an integer or out of range\r\n"
    );
    h.run("SET m 9223372036854775807");
    assert_eq!(
        h.run("INCR m"),
        "-ERR increment or decrement would overflow\r\n"
    );
    assert_eq!(
        h.run("DECRBY m -9223372036854775808"),
        "-ERR decrement would overflow\r\n"
    );
    h.run("SET e 5 EX 100");
    h.run("INCR e");
    assert_eq!(h.run("TTL e"), ":100\r\n", "INCR keeps the TTL");
}

#[test]
fn append_strlen_mset_mget() {
    let mut h = H::new();
    assert_eq!(h.run("APPEND a hello"), ":5\r\n");
    assert_eq!(h.run("APPEND a \" world\""), ":11\r\n");
    assert_eq!(h.run("STRLEN a"), ":11\r\n");
    assert_eq!(h.run("STRLEN none"), ":0\r\n");
    assert_eq!(h.run("MSET x 1 y 2"), "+OK\r\n");
    assert_eq!(
        h.run("MSET x 1 y"),
        "-ERR wrong number of arguments for 'mset' command\r\n"
    );
    assert_eq!(
        h.run("MGET x nope y"),
        "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
    );
}

#[test]
fn keyspace_commands() {
    let mut h = H::new();
    h.run("MSET user:1 a user:2 b other c");
    assert_eq!(h.run("EXISTS user:1 user:1 nope"), ":2\r\n");
    assert_eq!(h.run("DBSIZE"), ":3\r\n");
    assert_eq!(
        h.run("KEYS user:*"),
        "*2\r\n$6\r\nuser:1\r\n$6\r\nuser:2\r\n"
    );
    assert_eq!(h.run("KEYS user:[2]"), "*1\r\n$6\r\nuser:2\r\n");
    assert_eq!(h.run("TYPE other"), "+string\r\n");
    assert_eq!(h.run("TYPE nope"), "+none\r\n");
    assert_eq!(h.run("DEL user:1 nope"), ":1\r\n");
    assert_eq!(h.run("UNLINK user:2"), ":1\r\n");
    assert_eq!(h.run("TTL nope"), ":-2\r\n");
    assert_eq!(h.run("EXPIRE other 100"), ":1\r\n");
    assert_eq!(h.run("EXPIRE nope 100"), ":0\r\n");
    assert_eq!(h.run("EXPIRE other 50 NX"), ":0\r\n");
    assert_eq!(h.run("EXPIRE other 50 GT"), ":0\r\n");
    assert_eq!(h.run("EXPIRE other 50 LT"), ":1\r\n");
    assert_eq!(h.run("EXPIRE other 500 XX"), ":1\r\n");
    assert_eq!(
        h.run("EXPIRE other 5 NX XX"),
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    );
    assert_eq!(
        h.run("EXPIRE other 5 GT LT"),
        "-ERR GT and LT options at the same time are not compatible\r\n"
    );
    assert_eq!(
        h.run("EXPIRE other 5 FOO"),
        "-ERR Unsupported option FOO\r\n"
    );
    assert_eq!(
        h.run("EXPIRE other 9223372036854775807"),
        "-ERR invalid expire time in 'expire' command\r\n"
    );
    assert_eq!(h.run("PERSIST other"), ":1\r\n");
    assert_eq!(h.run("PERSIST other"), ":0\r\n");
    assert_eq!(h.run("PEXPIRE other 1500"), ":1\r\n");
    assert_eq!(h.run("TTL other"), ":2\r\n");
    assert_eq!(h.run("EXPIRE other 0"), ":1\r\n");
    assert_eq!(h.run("EXISTS other"), ":0\r\n", "non-positive TTL deletes");
    assert_eq!(h.run("FLUSHALL"), "+OK\r\n");
    assert_eq!(h.run("FLUSHALL BOGUS"), "-ERR syntax error\r\n");
    assert_eq!(h.run("DBSIZE"), ":0\r\n");
}

#[test]
fn scan_walks_every_key_once() {
    let mut h = H::new();
    for i in 0..95 {
        h.run(&std::format!("SET key:{i:03} v"));
    }
    h.run("SET other v");
    let mut cursor = String::from("0");
    let mut seen = Vec::new();
    let mut rounds = 0;
    loop {
        let r = h.run(&std::format!("SCAN {cursor} MATCH key:* COUNT 10"));
        let lines: Vec<&str> = r.split("\r\n").collect();
        assert_eq!(lines[0], "*2");
        cursor = String::from(lines[2]);
        for l in lines.iter().skip(4) {
            if l.starts_with("key:") {
                seen.push(String::from(*l));
            }
        }
        // Deleting and adding keys mid-scan does not disturb the others.
        if rounds == 3 {
            h.run("SET aaa v");
            h.run("DEL key:090");
        }
        rounds += 1;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 94);
    assert!(rounds >= 10);
    assert_eq!(h.run("SCAN 12345"), "-ERR invalid cursor\r\n");
    assert_eq!(h.run("SCAN x"), "-ERR invalid cursor\r\n");
    assert_eq!(h.run("SCAN 0 COUNT 0"), "-ERR syntax error\r\n");
    assert_eq!(h.run("SCAN 0 COUNT"), "-ERR syntax error\r\n");
    assert_eq!(
        h.run("SCAN 0 TYPE hash COUNT 1000"),
        "*2\r\n$1\r\n0\r\n*0\r\n"
    );
}

#[test]
fn server_commands() {
    let mut h = H::new();
    assert_eq!(h.run("CONFIG GET save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    assert_eq!(
        h.run("CONFIG GET appendonly"),
        "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    );
    assert!(h.run("CONFIG GET *").starts_with("*20\r\n"));
    assert_eq!(h.run("CONFIG GET nothing"), "*0\r\n");
    assert_eq!(
        h.run("CONFIG FOO"),
        "-ERR unknown subcommand 'FOO'. Try CONFIG HELP.\r\n"
    );
    assert_eq!(
        h.run("CONFIG GET"),
        "-ERR wrong number of arguments for 'config|get' command\r\n"
    );
    assert_eq!(h.run("CLIENT GETNAME"), "$-1\r\n");
    assert_eq!(h.run("CLIENT SETNAME bench"), "+OK\r\n");
    assert_eq!(h.run("CLIENT GETNAME"), "$5\r\nbench\r\n");
    assert_eq!(
        h.run("CLIENT SETNAME \"a b\""),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(h.run("CLIENT ID"), ":1\r\n");
    let info = h.run("CLIENT INFO");
    assert!(info.contains("id=1 addr=10.77.0.1:40000 laddr=10.77.0.2:6379"));
    assert!(info.contains("name=bench"));
    assert_eq!(h.run("COMMAND DOCS"), "*0\r\n");
    let n = super::TABLE.len();
    assert_eq!(h.run("COMMAND COUNT"), std::format!(":{n}\r\n"));
    assert!(
        h.run("COMMAND")
            .starts_with(&std::format!("*{n}\r\n*10\r\n$6\r\nappend\r\n:3\r\n"))
    );
    assert!(h.run("COMMAND INFO get nope").ends_with("*-1\r\n"));
    let hello = h.run("HELLO 2");
    assert!(hello.starts_with("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"));
    assert_eq!(
        h.run("HELLO 3"),
        "-NOPROTO sorry, this protocol version is not supported.\r\n"
    );
    assert!(h.run("HELLO 2 SETNAME x").starts_with("*14"));
    assert_eq!(h.c.name.as_deref(), Some(&b"x"[..]));
    assert!(h.run("TIME").starts_with("*2\r\n$10\r\n1700000000\r\n"));
}

#[test]
fn info_sections() {
    let mut h = H::new();
    h.run("SET a 1");
    h.run("SET b 2 EX 100");
    h.run("GET a");
    h.run("GET zz");
    let all = h.run("INFO");
    for s in [
        "# Server",
        "# Clients",
        "# Stats",
        "# Persistence",
        "# Keyspace",
    ] {
        assert!(all.contains(s), "{s}");
    }
    assert!(all.contains("db0:keys=2,expires=1,avg_ttl=0"));
    assert!(all.contains("keyspace_hits:1\r\nkeyspace_misses:1"));
    let ks = h.run("INFO keyspace");
    assert!(!ks.contains("# Server"));
    assert!(ks.contains("# Keyspace"));
    let body_len: usize = ks[1..ks.find('\r').unwrap_or(1)].parse().unwrap_or(0);
    let body_start = ks.find("\r\n").map_or(0, |p| p + 2);
    assert_eq!(body_len, ks.len() - body_start - 2, "bulk length is exact");
}

#[test]
fn memory_limit_refuses_growth_only() {
    let mut h = H::new();
    h.e.set_memory_limit(200);
    assert_eq!(h.run("SET a 1"), "+OK\r\n");
    let big = "x".repeat(300);
    assert_eq!(
        h.run(&std::format!("SET b {big}")),
        "-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    );
    assert_eq!(h.run("DEL a"), ":1\r\n");
    assert_eq!(
        h.run("CONFIG GET maxmemory"),
        "*2\r\n$9\r\nmaxmemory\r\n$3\r\n200\r\n"
    );
}

#[test]
fn hostile_arguments_never_panic() {
    let mut h = H::new();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let words: [&[u8]; 24] = [
        b"set",
        b"get",
        b"incr",
        b"expire",
        b"scan",
        b"keys",
        b"config",
        b"client",
        b"mset",
        b"ex",
        b"px",
        b"nx",
        b"get",
        b"0",
        b"-1",
        b"9223372036854775807",
        b"*",
        b"[",
        b"\\",
        b"info",
        b"command",
        b"hello",
        b"append",
        b"setname",
    ];
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % 6) as usize;
        let argv: Vec<Vec<u8>> = (0..n)
            .map(|i| words[((seed >> (i * 5)) % words.len() as u64) as usize].to_vec())
            .collect();
        let r = h.argv(&argv);
        if n > 0 {
            assert!(r.ends_with("\r\n"), "{argv:?}");
        }
    }
}
