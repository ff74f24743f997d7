//! The iperf3 server driven through whole conversations, byte for byte as
//! iperf3 3.12's client speaks them.

use alloc::vec::Vec;

use super::state::*;
use super::*;

const COOKIE: &[u8; COOKIE_LEN] = b"abcdefghijklmnopqrstuvwxyz0123456789\0";

fn json_msg(doc: &str) -> Vec<u8> {
    let mut m = (doc.len() as u32).to_be_bytes().to_vec();
    m.extend_from_slice(doc.as_bytes());
    m
}

/// Takes everything the server queued for `id`.
fn drain(s: &mut Server, id: ConnId) -> Vec<u8> {
    let out = s.output(id).to_vec();
    s.consume(id, out.len());
    out
}

const PARAMS: &str = r#"{"tcp":true,"omit":0,"time":10,"num":0,"blockcount":0,"parallel":1,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;

/// Control connection 1 through CREATE_STREAMS with `params`.
fn negotiate(s: &mut Server, params: &str) {
    s.open(1);
    // The cookie may arrive in pieces.
    s.input(1, &COOKIE[..10], 0);
    assert!(s.output(1).is_empty());
    s.input(1, &COOKIE[10..], 0);
    assert_eq!(drain(s, 1), [PARAM_EXCHANGE]);
    let msg = json_msg(params);
    s.input(1, &msg[..3], 0);
    s.input(1, &msg[3..], 0);
}

/// The end of a test: TEST_END at `end_ns`, results both ways, done.
fn finish(s: &mut Server, end_ns: u64) -> Vec<u8> {
    s.input(1, &[TEST_END], end_ns);
    finish_after_end(s, end_ns)
}

/// [`finish`] once TEST_END was sent.
fn finish_after_end(s: &mut Server, end_ns: u64) -> Vec<u8> {
    assert_eq!(drain(s, 1), [EXCHANGE_RESULTS]);
    s.input(
        1,
        &json_msg(r#"{"cpu_util_total":1.5,"streams":[{"id":1,"bytes":5}]}"#),
        end_ns,
    );
    let out = drain(s, 1);
    assert_eq!(out.last(), Some(&DISPLAY_RESULTS));
    let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
    assert_eq!(out.len(), len + 5);
    s.input(1, &[IPERF_DONE], end_ns);
    out[4..4 + len].to_vec()
}

#[test]
fn a_forward_test_counts_received_bytes_and_reports_them() {
    let mut s = Server::new();
    negotiate(&mut s, PARAMS);
    assert_eq!(drain(&mut s, 1), [CREATE_STREAMS]);
    s.open(2);
    s.input(2, COOKIE, 1_000_000_000);
    assert_eq!(drain(&mut s, 1), [TEST_START, TEST_RUNNING]);
    assert_eq!(s.payload_room(2), 0, "the guest receives in a forward test");
    for _ in 0..10 {
        s.input(2, &[0u8; 1000], 1_500_000_000);
    }
    let doc = finish(&mut s, 3_500_000_000);
    let doc = core::str::from_utf8(&doc).unwrap();
    assert!(
        doc.contains(r#""streams":[{"id":1,"bytes":10000,"retransmits":-1,"#),
        "{doc}"
    );
    assert!(doc.contains(r#""end_time":2.500000}"#), "{doc}");
    assert!(doc.contains(r#""sender_has_retransmits":0"#));
    assert_eq!(
        s.take_report(),
        Some(Report {
            reverse: false,
            streams: 1,
            bytes: 10_000,
            duration_ns: 2_500_000_000
        })
    );
    assert!(s.should_close(1) && s.should_close(2));
    s.closed(2);
    s.closed(1);
    assert_eq!(s.connections(), 0);
}

#[test]
fn a_reverse_test_with_parallel_streams_sends_and_numbers_them_like_iperf3() {
    let mut s = Server::new();
    let params = PARAMS
        .replace(r#""parallel":1"#, r#""parallel":3"#)
        .replace(r#""tcp":true"#, r#""tcp":true,"reverse":true"#);
    negotiate(&mut s, &params);
    assert_eq!(drain(&mut s, 1), [CREATE_STREAMS]);
    for id in [2, 3, 4] {
        s.open(id);
        s.input(id, COOKIE, 0);
    }
    assert_eq!(drain(&mut s, 1), [TEST_START, TEST_RUNNING]);
    assert_eq!(s.payload_room(2), usize::MAX);
    assert_eq!(s.payload_room(1), 0, "no payload on control");
    s.sent(2, 100);
    s.sent(3, 200);
    s.sent(4, 300);
    s.input(1, &[TEST_END], 1_000_000);
    // The streams stop and close at TEST_END (the client's blocking reads
    // of whole blocks end at the end of the stream).
    assert_eq!(s.payload_room(2), 0);
    assert!(s.should_close(2) && s.should_close(3) && s.should_close(4));
    assert!(!s.should_close(1), "control stays for the results");
    let doc = finish_after_end(&mut s, 1_000_000);
    let doc = core::str::from_utf8(&doc).unwrap();
    for part in [
        r#"{"id":1,"bytes":100,"#,
        r#"{"id":3,"bytes":200,"#,
        r#"{"id":4,"bytes":300,"#,
    ] {
        assert!(doc.contains(part), "{part} in {doc}");
    }
    assert_eq!(s.payload_room(2), 0, "sending is over");
    assert_eq!(
        s.take_report().map(|r| (r.reverse, r.bytes)),
        Some((true, 600))
    );
    let mut buf = [0u8; 4];
    Server::fill(&mut buf);
    assert_eq!(buf, *b"9999");
}

#[test]
fn a_second_client_is_refused_while_a_test_runs_and_served_after() {
    let mut s = Server::new();
    negotiate(&mut s, PARAMS);
    drain(&mut s, 1);
    s.open(7);
    s.input(7, b"another-client-cookie-0123456789abcd\0", 0);
    assert_eq!(drain(&mut s, 7), [ACCESS_DENIED]);
    assert!(s.should_close(7));
    s.closed(7);
    // The first client goes away mid-test: its test ends, a new one starts.
    s.closed(1);
    s.open(8);
    s.input(8, COOKIE, 0);
    assert_eq!(drain(&mut s, 8), [PARAM_EXCHANGE]);
}

#[test]
fn tests_it_does_not_run_are_refused() {
    for params in [
        PARAMS.replace(r#""tcp":true"#, r#""udp":true"#),
        PARAMS.replace(r#""parallel":1"#, r#""parallel":9"#),
        PARAMS.replace(r#""tcp":true"#, r#""bidirectional":true"#),
        PARAMS.replace(r#""num":0"#, r#""num":1000,"reverse":true"#),
    ] {
        let mut s = Server::new();
        negotiate(&mut s, &params);
        assert_eq!(drain(&mut s, 1), [ACCESS_DENIED], "{params}");
        assert!(s.should_close(1));
    }
}

#[test]
fn oversized_or_out_of_turn_control_messages_end_the_test() {
    let mut s = Server::new();
    s.open(1);
    s.input(1, COOKIE, 0);
    drain(&mut s, 1);
    s.input(1, &(MAX_JSON as u32 + 1).to_be_bytes(), 0);
    assert!(s.should_close(1));

    let mut s = Server::new();
    negotiate(&mut s, PARAMS);
    drain(&mut s, 1);
    s.input(1, &[IPERF_DONE], 0);
    assert!(s.should_close(1), "IPERF_DONE before the test ran");
}

#[test]
fn json_fields_are_read_at_the_top_level_only() {
    let doc = br#"{"s":"\"reverse\":true","nested":{"reverse":true},"arr":[1,{"a":[2]}],"reverse":false,"n":-3,"f":1.5}"#;
    assert_eq!(field(doc, "reverse"), Some(Value::Bool(false)));
    assert_eq!(field(doc, "n"), Some(Value::Int(-3)));
    assert_eq!(field(doc, "f"), Some(Value::Other));
    assert_eq!(field(doc, "missing"), None);
    assert_eq!(field(b"", "n"), None);
    assert_eq!(field(b"{\"n\":", "n"), None);
    assert_eq!(field(b"{\"a\":1 \"n\":2}", "n"), None, "no comma");
    let deep = [b'['; 64];
    let mut d = b"{\"a\":".to_vec();
    d.extend_from_slice(&deep);
    assert_eq!(field(&d, "a"), None, "nesting is bounded");
}
