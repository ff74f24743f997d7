//! `etcd://HOST:PORT[,HOST:PORT...]/KEY`: the test-and-set is an etcd
//! transaction through etcd's v3 JSON gateway, for pairs whose hosts share
//! no file system.
//!
//! Keys (`N` zero-padded to 20 digits, so key order is epoch order):
//! * `KEY/epoch/N` — the claim: put only if its create revision is 0
//!   (absent); the value is the winner's `NAME TOKEN`;
//! * `KEY/epoch/N/begun` — who began run N.
//!
//! Both transactions also require that no key of a later epoch exists (a
//! `CREATE == 0` compare over the key range of every epoch above N), so the
//! stale check and the put are one atomic step; a claim also requires that
//! run N was begun. The failure branch reads back the claim, the latest
//! later key and the begun key, so a loser learns the winner in the same
//! round trip. A claim that finds its own token counts as won, which makes
//! retrying after a timeout (the put may have landed) safe.
//!
//! An etcd *lease* would not add to the pair's safety: what fences a
//! primary is the lease its backup's acks give it (`output_rule`), which
//! the backup waits out before it goes live; the arbiter only has to say,
//! once and atomically, who may serve an epoch.
//!
//! etcd 3.4 (Debian bookworm's `etcd-server`) serves the gateway at `/v3/`
//! and `/v3beta/`; 3.3 only at `/v3beta/`, 3.5+ only at `/v3/`. `/v3/` is
//! tried first and a 404 switches to `/v3beta/` for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Arbiter, ArbiterError, Claim, Claimant, check_epoch, record_name, superseded};
use lockstep_status::http::{self, HttpError};

/// One request to one endpoint must finish within this; the caller retries
/// the whole operation within its own failover deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct EtcdArbiter {
    uri: String,
    /// `HOST:PORT` of each cluster member given, tried in order.
    endpoints: Vec<String>,
    key: String,
    timeout: Duration,
    /// Set once `/v3/` answered 404 (etcd 3.3).
    beta: AtomicBool,
}

impl EtcdArbiter {
    /// `rest` is the URI after `etcd://`: `HOST:PORT[,HOST:PORT...]/KEY`.
    pub fn new(uri: &str, rest: &str) -> Result<Self, String> {
        let (authority, key) = rest
            .split_once('/')
            .ok_or("KEY is missing (e.g. etcd://10.0.0.1:2379/lockstep/vm1)")?;
        let key = key.trim_end_matches('/');
        if key.is_empty() {
            return Err("KEY is missing (e.g. etcd://10.0.0.1:2379/lockstep/vm1)".into());
        }
        if key.contains(['?', '#']) || key.chars().any(char::is_control) {
            return Err(format!(
                "KEY {key:?} has characters a key may not have here"
            ));
        }
        if authority.contains('@') {
            return Err("user names and passwords are not supported".into());
        }
        let mut endpoints = Vec::new();
        for endpoint in authority.split(',') {
            let (host, port) = endpoint
                .rsplit_once(':')
                .ok_or_else(|| format!("{endpoint:?} is not HOST:PORT"))?;
            let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
            if host.is_empty() || !port_ok {
                return Err(format!("{endpoint:?} is not HOST:PORT"));
            }
            endpoints.push(endpoint.to_string());
        }
        Ok(EtcdArbiter {
            uri: uri.to_string(),
            endpoints,
            key: key.to_string(),
            timeout: DEFAULT_TIMEOUT,
            beta: AtomicBool::new(false),
        })
    }

    /// Per-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn prefix(&self) -> String {
        format!("{}/epoch/", self.key)
    }

    /// The end of the prefix range: `KEY/epoch0` (`'/' + 1 == '0'`).
    fn prefix_end(&self) -> String {
        format!("{}/epoch0", self.key)
    }

    pub fn claim_key(&self, epoch: u64) -> String {
        format!("{}{epoch:020}", self.prefix())
    }

    pub fn begun_key(&self, epoch: u64) -> String {
        format!("{}/begun", self.claim_key(epoch))
    }

    /// The key range of every epoch after `epoch`, if one can exist.
    fn later_range(&self, epoch: u64) -> Option<(String, String)> {
        let next = epoch.checked_add(1)?;
        Some((self.claim_key(next), self.prefix_end()))
    }

    /// The epoch a key under the prefix belongs to.
    fn epoch_of(&self, key: &[u8]) -> Option<u64> {
        let rest = key.strip_prefix(self.prefix().as_bytes())?;
        let digits = rest.get(..20)?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// POSTs `body` to `/v3/kv/{op}` on the first endpoint that answers.
    fn call(&self, op: &str, body: &Value) -> Result<Value, ArbiterError> {
        let payload = body.to_string();
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.call_one(endpoint, op, payload.as_bytes()) {
                Ok(v) => return Ok(v),
                // Another member may have a leader or be reachable.
                Err(
                    e @ (ArbiterError::Unreachable { .. }
                    | ArbiterError::Refused { status: 500.., .. }),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ArbiterError::Protocol {
            endpoint: self.uri.clone(),
            why: "no endpoint".into(),
        }))
    }

    fn call_one(&self, endpoint: &str, op: &str, payload: &[u8]) -> Result<Value, ArbiterError> {
        let unreachable = |source: HttpError| ArbiterError::Unreachable {
            endpoint: endpoint.to_string(),
            source,
        };
        let post = |api: &str| {
            http::request(
                endpoint,
                "POST",
                &format!("/{api}/kv/{op}"),
                Some(("application/json", payload)),
                self.timeout,
            )
        };
        let mut resp = if self.beta.load(Ordering::Relaxed) {
            post("v3beta").map_err(unreachable)?
        } else {
            let resp = post("v3").map_err(unreachable)?;
            if resp.status == 404 {
                let beta = post("v3beta").map_err(unreachable)?;
                if beta.status != 404 {
                    self.beta.store(true, Ordering::Relaxed);
                }
                beta
            } else {
                resp
            }
        };
        let text = std::mem::take(&mut resp.body);
        let value: Option<Value> = serde_json::from_slice(&text).ok();
        if resp.status != 200 {
            // The gateway's errors are {"error": ..., "message": ..., "code": N}.
            let message = value
                .as_ref()
                .and_then(|v| v.get("message").or_else(|| v.get("error")))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&text).chars().take(200).collect());
            return Err(ArbiterError::Refused {
                endpoint: endpoint.to_string(),
                status: resp.status,
                message,
            });
        }
        value.ok_or_else(|| ArbiterError::Protocol {
            endpoint: endpoint.to_string(),
            why: format!("answer to kv/{op} is not JSON"),
        })
    }

    /// A transaction: put `key = who` if `key` is absent, no later epoch
    /// exists and (`needs_begun`) run `epoch` was begun; otherwise read
    /// `key`, the latest later key and the begun key.
    fn test_and_set(
        &self,
        key: &str,
        epoch: u64,
        who: &str,
        needs_begun: bool,
    ) -> Result<TxnOutcome, ArbiterError> {
        let mut compare = vec![json!({
            "target": "CREATE", "result": "EQUAL", "key": b64(key), "create_revision": "0",
        })];
        let mut failure = vec![json!({"request_range": {"key": b64(key)}})];
        let begun = self.begun_key(epoch);
        if needs_begun {
            compare.push(json!({
                "target": "CREATE", "result": "GREATER", "key": b64(&begun), "create_revision": "0",
            }));
        }
        if let Some((lo, hi)) = self.later_range(epoch) {
            compare.push(json!({
                "target": "CREATE", "result": "EQUAL",
                "key": b64(&lo), "range_end": b64(&hi), "create_revision": "0",
            }));
            failure.push(json!({"request_range": {
                "key": b64(&lo), "range_end": b64(&hi),
                "sort_order": "DESCEND", "sort_target": "KEY", "limit": "1",
            }}));
        } else {
            // Keep the begun read at index 2.
            failure.push(json!({"request_range": {"key": b64(key)}}));
        }
        failure.push(json!({"request_range": {"key": b64(&begun)}}));
        let txn = json!({
            "compare": compare,
            "success": [{"request_put": {"key": b64(key), "value": b64(who)}}],
            "failure": failure,
        });
        let answer = self.call("txn", &txn)?;
        // proto3 JSON leaves `succeeded` out when it is false.
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(TxnOutcome::Put);
        }
        let protocol = |why: &str| ArbiterError::Protocol {
            endpoint: self.uri.clone(),
            why: why.to_string(),
        };
        let responses = answer
            .get("responses")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("failed txn without responses"))?;
        let first_kv = |i: usize| -> Option<(Vec<u8>, String)> {
            let r = responses.get(i)?;
            let range = r.get("response_range").or_else(|| r.get("responseRange"))?;
            let kv = range.get("kvs")?.as_array()?.first()?;
            let key = unb64(kv.get("key")?)?;
            let value = kv.get("value").and_then(unb64).unwrap_or_default();
            Some((key, String::from_utf8_lossy(&value).into_owned()))
        };
        if let Some((_, holder)) = first_kv(0) {
            return Ok(TxnOutcome::Held(holder));
        }
        if let Some((later_key, holder)) = first_kv(1)
            && later_key != key.as_bytes()
        {
            let latest = self
                .epoch_of(&later_key)
                .ok_or_else(|| protocol("later key outside the epoch prefix"))?;
            return Ok(TxnOutcome::Superseded { latest, holder });
        }
        if needs_begun && first_kv(2).is_none() {
            return Ok(TxnOutcome::NotBegun);
        }
        Err(protocol(
            "txn failed, but neither the key nor a later epoch exists",
        ))
    }
}

enum TxnOutcome {
    /// This transaction put the key.
    Put,
    /// The key exists; its value.
    Held(String),
    /// A later epoch exists; its number and the record in its latest key.
    Superseded { latest: u64, holder: String },
    /// The epoch was never begun.
    NotBegun,
}

impl Arbiter for EtcdArbiter {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn latest_epoch(&self) -> Result<u64, ArbiterError> {
        let range = json!({
            "key": b64(&self.prefix()), "range_end": b64(&self.prefix_end()),
            "sort_order": "DESCEND", "sort_target": "KEY", "limit": "1", "keys_only": true,
        });
        let answer = self.call("range", &range)?;
        let Some(kv) = answer
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|k| k.first())
        else {
            return Ok(0);
        };
        kv.get("key")
            .and_then(unb64)
            .and_then(|k| self.epoch_of(&k))
            .ok_or_else(|| ArbiterError::Protocol {
                endpoint: self.uri.clone(),
                why: "range answer with a key outside the epoch prefix".into(),
            })
    }

    fn begin(&self, epoch: u64, who: &Claimant) -> Result<(), ArbiterError> {
        check_epoch(epoch)?;
        match self.test_and_set(&self.begun_key(epoch), epoch, &who.record(), false)? {
            TxnOutcome::Put => Ok(()),
            TxnOutcome::Held(by) if who.owns(&by) => Ok(()),
            TxnOutcome::Held(by) => Err(ArbiterError::EpochTaken {
                epoch,
                by: record_name(&by),
            }),
            TxnOutcome::Superseded { latest, .. } => Err(ArbiterError::Stale { epoch, latest }),
            TxnOutcome::NotBegun => Err(ArbiterError::Protocol {
                endpoint: self.uri.clone(),
                why: "a begin cannot need a begin".into(),
            }),
        }
    }

    fn begun_by(&self, epoch: u64) -> Result<Option<String>, ArbiterError> {
        check_epoch(epoch)?;
        let answer = self.call("range", &json!({"key": b64(&self.begun_key(epoch))}))?;
        Ok(answer
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|k| k.first())
            .map(|kv| {
                let value = kv.get("value").and_then(unb64).unwrap_or_default();
                record_name(&String::from_utf8_lossy(&value))
            }))
    }

    fn claim(&self, epoch: u64, who: &Claimant) -> Result<Claim, ArbiterError> {
        check_epoch(epoch)?;
        Ok(
            match self.test_and_set(&self.claim_key(epoch), epoch, &who.record(), true)? {
                TxnOutcome::Put => Claim::Won,
                TxnOutcome::Held(winner) if who.owns(&winner) => Claim::Won,
                TxnOutcome::Held(winner) => Claim::Lost {
                    winner: record_name(&winner),
                },
                TxnOutcome::Superseded { latest, holder } => Claim::Lost {
                    winner: superseded(&record_name(&holder), latest),
                },
                TxnOutcome::NotBegun => return Err(ArbiterError::NotBegun { epoch }),
            },
        )
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_epoch() {
        let a = EtcdArbiter::new("etcd://h:1/k", "h:1/k").expect("parse");
        assert_eq!(a.claim_key(5), "k/epoch/00000000000000000005");
        assert_eq!(a.begun_key(5), "k/epoch/00000000000000000005/begun");
        let (lo, hi) = a.later_range(5).expect("range");
        // Epoch 5's own keys are below the later range, epoch 6's inside.
        assert!(a.begun_key(5) < lo && a.claim_key(6) >= lo && a.begun_key(6) < hi);
        assert!(a.claim_key(u64::MAX) < hi);
        assert_eq!(a.later_range(u64::MAX), None);
        assert_eq!(a.epoch_of(a.begun_key(42).as_bytes()), Some(42));
        assert_eq!(a.epoch_of(b"other/epoch/00000000000000000001"), None);
    }

    /// etcd 3.3 serves the gateway only under /v3beta/: a 404 on /v3/
    /// switches for good. (Debian's 3.4 serves both, so the real-etcd
    /// tests cannot show this.)
    #[test]
    fn falls_back_to_v3beta_once() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let mut paths = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers and the small JSON body arrive together or in two
                // reads; the body ends with '}'.
                while !buf.ends_with(b"}") {
                    let n = s.read(&mut chunk).expect("read");
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let path = text.split(' ').nth(1).unwrap_or_default().to_string();
                let answer: &[u8] = if path.starts_with("/v3/") {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"header\":{}}"
                };
                s.write_all(answer).expect("answer");
                paths.push(path);
            }
            paths
        });
        let rest = format!("{addr}/k");
        let a = EtcdArbiter::new(&format!("etcd://{rest}"), &rest).expect("parse");
        assert_eq!(a.latest_epoch().expect("first"), 0);
        assert_eq!(a.latest_epoch().expect("second"), 0);
        let paths = server.join().expect("server");
        assert_eq!(
            paths,
            ["/v3/kv/range", "/v3beta/kv/range", "/v3beta/kv/range"]
        );
    }
}
