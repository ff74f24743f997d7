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
//! The requests go through the shared gateway client ([`crate::etcd`]),
//! which also serves the spares registry.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Arbiter, ArbiterError, Claim, Claimant, check_epoch, record_name, superseded};
use crate::etcd::{Gateway, GatewayError, b64, unb64};

pub use crate::etcd::DEFAULT_TIMEOUT;

pub struct EtcdArbiter {
    gateway: Gateway,
    key: String,
}

impl From<GatewayError> for ArbiterError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Unreachable { endpoint, source } => {
                ArbiterError::Unreachable { endpoint, source }
            }
            GatewayError::Refused {
                endpoint,
                status,
                message,
                ..
            } => ArbiterError::Refused {
                endpoint,
                status,
                message,
            },
            GatewayError::Protocol { endpoint, why } => ArbiterError::Protocol { endpoint, why },
        }
    }
}

impl EtcdArbiter {
    /// `rest` is the URI after `etcd://`: `HOST:PORT[,HOST:PORT...]/KEY`.
    pub fn new(uri: &str, rest: &str) -> Result<Self, String> {
        let (gateway, key) = Gateway::parse(uri, rest, "KEY")?;
        Ok(EtcdArbiter { gateway, key })
    }

    /// Per-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.gateway = self.gateway.with_timeout(timeout);
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

    /// POSTs `body` to `/v3/kv/{op}`.
    fn call(&self, op: &str, body: &Value) -> Result<Value, ArbiterError> {
        Ok(self.gateway.call(&format!("kv/{op}"), body)?)
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
        let protocol = |why: &str| ArbiterError::from(self.gateway.protocol(why));
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
        self.gateway.uri().to_string()
    }

    fn latest_epoch(&self) -> Result<u64, ArbiterError> {
        let range = json!({
            "key": b64(self.prefix()), "range_end": b64(self.prefix_end()),
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
            .ok_or_else(|| {
                self.gateway
                    .protocol("range answer with a key outside the epoch prefix")
                    .into()
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
            TxnOutcome::NotBegun => {
                Err(self.gateway.protocol("a begin cannot need a begin").into())
            }
        }
    }

    fn begun_by(&self, epoch: u64) -> Result<Option<String>, ArbiterError> {
        check_epoch(epoch)?;
        let answer = self.call("range", &json!({"key": b64(self.begun_key(epoch))}))?;
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
}
