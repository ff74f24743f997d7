//! The etcd operations the spares registry needs, over [`Gateway::call`]:
//! leases (grant, keep-alive, revoke), a put bound to a lease, a put only
//! if the key is absent, a range over a prefix, a delete. The arbiter's
//! transactions are its own (`arbiter/etcd.rs`).

use std::time::Duration;

use serde_json::{Value, json};

use super::{Gateway, GatewayError, b64, int64, prefix_end, unb64};

/// A lease etcd granted: its ID and the TTL it gave (which may be longer
/// than asked: etcd has a minimum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl_s: i64,
}

/// One key-value of a range answer, as etcd sent it (untrusted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is bound to (0: none).
    pub lease: i64,
}

impl KeyValue {
    /// `None` if the entry has no key or a field is malformed.
    fn from_json(kv: &Value) -> Option<KeyValue> {
        let num = |name: &str| kv.get(name).map_or(Some(0), int64);
        Some(KeyValue {
            key: unb64(kv.get("key")?)?,
            // proto3 JSON leaves empty fields out.
            value: match kv.get("value") {
                Some(v) => unb64(v)?,
                None => Vec::new(),
            },
            create_revision: num("create_revision")?,
            mod_revision: num("mod_revision")?,
            lease: num("lease")?,
        })
    }
}

/// A range answer: the key-values it held, how many entries it had that
/// were not key-values at all, and whether more keys matched than the
/// limit let through.
#[derive(Debug, Default)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    pub malformed: usize,
    pub more: bool,
}

impl Gateway {
    /// A lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<Lease, GatewayError> {
        let ttl_s = ttl.as_secs().max(1);
        let answer = self.call("lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        if let Some(error) = answer.get("error").and_then(Value::as_str) {
            return Err(self.protocol(format!("lease grant: {error}")));
        }
        let id = answer
            .get("ID")
            .and_then(int64)
            .filter(|&id| id != 0)
            .ok_or_else(|| self.protocol("lease grant without an ID"))?;
        let ttl_s = answer
            .get("TTL")
            .and_then(int64)
            .filter(|&t| t > 0)
            .ok_or_else(|| self.protocol("lease grant without a TTL"))?;
        Ok(Lease { id, ttl_s })
    }

    /// Renews lease `id` once: its TTL now, or `None` if the lease is gone
    /// (expired or revoked: etcd answers a keep-alive of an unknown lease
    /// with no TTL).
    pub fn keep_alive(&self, id: i64) -> Result<Option<i64>, GatewayError> {
        let answer = self.call("lease/keepalive", &json!({"ID": id.to_string()}))?;
        // A streaming call: each message is {"result": ...} or {"error": ...}.
        if let Some(error) = answer.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("?");
            return Err(self.protocol(format!("lease keep-alive: {message}")));
        }
        let result = answer
            .get("result")
            .ok_or_else(|| self.protocol("lease keep-alive without a result"))?;
        Ok(result.get("TTL").and_then(int64).filter(|&ttl| ttl > 0))
    }

    /// Revokes lease `id`, which deletes every key bound to it; a lease
    /// already gone counts as revoked.
    pub fn revoke(&self, id: i64) -> Result<(), GatewayError> {
        // `kv/lease/revoke` is the path etcd 3.3 to 3.5 all serve.
        match self.call("kv/lease/revoke", &json!({"ID": id.to_string()})) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts `key = value`, bound to `lease` if given.
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), GatewayError> {
        self.call("kv/put", &put_request(key, value, lease))
            .map(drop)
    }

    /// Puts `key = value` (bound to `lease`) only if `key` does not exist;
    /// otherwise returns the key-value that holds it.
    pub fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Option<KeyValue>, GatewayError> {
        let txn = json!({
            "compare": [{
                "target": "CREATE", "result": "EQUAL", "key": b64(key), "create_revision": "0",
            }],
            "success": [{"request_put": put_request(key, value, lease)}],
            "failure": [{"request_range": {"key": b64(key)}}],
        });
        let answer = self.call("kv/txn", &txn)?;
        // proto3 JSON leaves `succeeded` out when it is false.
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let holder = answer
            .get("responses")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(|r| r.get("response_range").or_else(|| r.get("responseRange")))
            .and_then(|r| r.get("kvs"))
            .and_then(Value::as_array)
            .and_then(|kvs| kvs.first())
            .and_then(KeyValue::from_json);
        match holder {
            Some(kv) => Ok(Some(kv)),
            // Deleted between the compare and the read cannot happen in one
            // transaction; an answer without it is not etcd's.
            None => Err(self.protocol("failed put-if-absent without the key that holds it")),
        }
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<(), GatewayError> {
        self.call("kv/deleterange", &json!({"key": b64(key)}))
            .map(drop)
    }

    /// The keys under `prefix`, oldest first (by create revision), at most
    /// `limit` of them.
    pub fn range_prefix(&self, prefix: &str, limit: u32) -> Result<Range, GatewayError> {
        let request = json!({
            "key": b64(prefix), "range_end": b64(prefix_end(prefix.as_bytes())),
            "sort_order": "ASCEND", "sort_target": "CREATE", "limit": limit.to_string(),
        });
        let answer = self.call("kv/range", &request)?;
        let mut range = Range {
            more: answer.get("more").and_then(Value::as_bool) == Some(true),
            ..Range::default()
        };
        let Some(kvs) = answer.get("kvs") else {
            return Ok(range);
        };
        let kvs = kvs
            .as_array()
            .ok_or_else(|| self.protocol("range answer whose kvs is not a list"))?;
        for kv in kvs
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            match KeyValue::from_json(kv) {
                Some(kv) if kv.key.starts_with(prefix.as_bytes()) => range.kvs.push(kv),
                _ => range.malformed += 1,
            }
        }
        Ok(range)
    }
}

fn put_request(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut put = json!({"key": b64(key), "value": b64(value)});
    if let Some(lease) = lease {
        put["lease"] = Value::from(lease.to_string());
    }
    put
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_from_untrusted_json() {
        let ok = json!({"key": b64("p/a"), "value": b64("1.2.3.4:5"), "create_revision": "7", "lease": "9"});
        let kv = KeyValue::from_json(&ok).expect("kv");
        assert_eq!(
            (kv.key.as_slice(), kv.create_revision, kv.lease),
            (&b"p/a"[..], 7, 9)
        );
        assert_eq!(kv.mod_revision, 0);
        let empty = KeyValue::from_json(&json!({"key": b64("p/b")})).expect("kv");
        assert!(empty.value.is_empty());
        for bad in [
            json!({}),
            json!({"key": "not base64!"}),
            json!({"key": b64("k"), "value": 5}),
            json!({"key": b64("k"), "lease": "x"}),
            json!("text"),
        ] {
            assert_eq!(KeyValue::from_json(&bad), None, "{bad}");
        }
    }
}
