//! What the daemon writes to the audit log, and when it waits for it. Lifecycle transitions,
//! violations, limits, trust decisions and upgrade stages are recorded as they happen (from the
//! event stream; they queue even when the log is full, up to its hard bound). An operator's
//! request (load, unload, reload, upgrade) and every call are recorded with who asked, and
//! their answer waits until that record is committed: nothing is acknowledged that the log
//! could lose. When the log cannot take more (the database is gone and the queue is full), new
//! requests and calls are refused before anything happens.

use serde_json::{json, Value};
use stockade::rpc::RpcError;
use stockade_state::audit::{AuditError, AuditLog};
use stockade_state::chain::Record;

/// The control error of a request refused (or not acknowledged) because the audit log cannot
/// record it.
pub const AUDIT_UNAVAILABLE: i64 = -32017;

/// Event types recorded as they happen.
/// (`report`: a run's end with every violation counted, by layer, and its auto-unload: what
/// `stockade report` counts from.)
const RECORDED: &[&str] = &[
    "lifecycle",
    "violation",
    "limit",
    "trust",
    "upgrade",
    "report",
];

pub fn refusal(e: &AuditError) -> RpcError {
    RpcError {
        code: AUDIT_UNAVAILABLE,
        message: e.to_string(),
        data: Some(json!({ "hint": e.hint() })),
    }
}

/// Queues `event` (from the daemon's event stream) when it is one the log keeps.
pub fn record_event(log: &AuditLog, event: &Value) {
    let Some(kind) = event["type"].as_str().filter(|t| RECORDED.contains(t)) else {
        return;
    };
    let mut detail = event.clone();
    if let Value::Object(m) = &mut detail {
        m.remove("type");
        m.remove("plugin");
        m.remove("at_ms");
    }
    let mut record = Record::new(kind, event["plugin"].as_str(), &detail);
    if let Some(at) = event["at_ms"].as_i64() {
        record.at_ms = at;
    }
    log.append_always(record);
}

/// Field names whose values are never recorded, whatever the manifest says.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "private",
    "apikey",
    "api_key",
    "auth",
    "cookie",
    "session",
];

/// The call's parameters as the audit log may keep them: none unless the method's
/// `audit_params` says so; then with the values of secret-looking fields (and of the method's
/// `redact` names) replaced by `"<redacted>"`, at any depth.
pub fn loggable_params(
    method: Option<&stockade_policy::manifest::Method>,
    params: &Value,
) -> Value {
    match method {
        Some(m) if m.audit_params => redact(params, &m.redact),
        _ => Value::Null,
    }
}

fn secret(name: &str, extra: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    extra.iter().any(|e| e.eq_ignore_ascii_case(name))
        || SECRET_WORDS.iter().any(|w| lower.contains(w))
}

fn redact(value: &Value, extra: &[String]) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if secret(k, extra) {
                        json!("<redacted>")
                    } else {
                        redact(v, extra)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| redact(v, extra)).collect()),
        other => other.clone(),
    }
}

/// The outcome of a request, as recorded: `ok`, or the error's code and message.
pub fn outcome(result: &Result<Value, RpcError>) -> Value {
    match result {
        Ok(_) => json!({ "outcome": "ok" }),
        Err(e) => json!({ "outcome": "error", "code": e.code, "error": e.message }),
    }
}

/// A call's record: serialized straight to the record's text (one per call: no map built
/// first). Its fields in the order a JSON map of them sorts, as the other records' details.
#[derive(serde::Serialize)]
pub struct CallDetail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    method: &'a str,
    outcome: &'static str,
    params: &'a Value,
}

impl<'a> CallDetail<'a> {
    pub fn new(
        method: &'a str,
        duration_ms: f64,
        params: &'a Value,
        result: &'a Result<Value, RpcError>,
    ) -> CallDetail<'a> {
        let (outcome, code, error) = match result {
            Ok(_) => ("ok", None, None),
            Err(e) => ("error", Some(e.code), Some(e.message.as_str())),
        };
        CallDetail {
            code,
            duration_ms,
            error,
            method,
            outcome,
            params,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_log() {
        let params = json!({
            "name": "requests",
            "index": { "url": "http://pypi", "Password": "hunter2", "api_key": "k" },
            "items": [{ "token": "t", "n": 1 }],
            "note": "x",
        });
        let method = |audit_params, redact: &[&str]| stockade_policy::manifest::Method {
            params: json!({}),
            result: None,
            timeout: std::time::Duration::from_secs(1),
            max_in_flight: 1,
            audit_params,
            redact: redact.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            loggable_params(Some(&method(false, &[])), &params),
            Value::Null
        );
        assert_eq!(loggable_params(None, &params), Value::Null);
        let kept = loggable_params(Some(&method(true, &["note"])), &params);
        assert_eq!(
            kept,
            json!({
                "name": "requests",
                "index": { "url": "http://pypi", "Password": "<redacted>", "api_key": "<redacted>" },
                "items": [{ "token": "<redacted>", "n": 1 }],
                "note": "<redacted>",
            })
        );
    }

    /// A call's record is the text a JSON map of its fields gives (what `stockade audit`
    /// readers and the records written before it was a struct have).
    #[test]
    fn a_calls_detail_is_the_maps_text() {
        let params = json!({ "text": "hi" });
        let failed = Err(RpcError {
            code: -32001,
            message: "no \"echo\"".into(),
            data: None,
        });
        for (result, logged) in [(Ok(json!("hi")), &params), (failed, &Value::Null)] {
            let mut map = json!({ "method": "echo", "duration_ms": 1.25, "params": logged });
            if let (Value::Object(m), Value::Object(o)) = (&mut map, outcome(&result)) {
                m.extend(o);
            }
            let text = serde_json::to_string(&CallDetail::new("echo", 1.25, logged, &result));
            assert_eq!(text.unwrap(), map.to_string());
        }
    }
}
