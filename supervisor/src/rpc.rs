//! The plugin protocol's wire format (docs/plugins.md): newline-delimited JSON-RPC 2.0 on the
//! plugin's socket, one UTF-8 JSON object per line, each at most a bounded size.
//!
//! This module holds what does not depend on how the bytes move (the daemon's event loop):
//! - [`LineDecoder`], an incremental splitter that never buffers more than the limit: an oversized
//!   line is skipped to its end and reported once, whatever its length;
//! - [`parse`], which classifies a line as a request, a notification or a response, or names the
//!   protocol violation it is;
//! - [`Methods`], the manifest's methods with their schemas compiled: a call to an undeclared
//!   method is `-32601`, parameters that fail the schema are `-32602` with the failing path, both
//!   before the plugin sees anything.
//!
//! The violations are the `rpc` layer's: they count toward the policy's threshold like any other.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use stockade_policy::manifest::Manifest;

/// The largest message either side may send: 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// JSON-RPC 2.0's error codes, and Stockade's in the implementation-defined range.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The call's timeout passed; the call is abandoned.
    pub const TIMEOUT: i64 = -32000;
    /// The plugin is not running (stopped, restarting, quarantined).
    pub const UNAVAILABLE: i64 = -32001;
    /// The result did not match the method's `result` schema.
    pub const INVALID_RESULT: i64 = -32002;
    /// A per-call plugin exited non-zero: its error, with the seed's output structure as `data`.
    pub const PLUGIN_FAILED: i64 = -32003;
}

/// The methods a plugin may call on the host; anything else is a protocol violation.
pub const PLUGIN_TO_HOST: [&str; 3] = ["log", "event.publish", "metrics.add"];

/// One line, or what stood in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Line(Vec<u8>),
    /// A line longer than the limit: `bytes` is how long it was (to its newline, or so far when
    /// the peer closed first). Its content is gone.
    Oversized {
        bytes: usize,
    },
}

/// Splits a byte stream into lines of at most `limit` bytes (the newline excluded).
#[derive(Debug)]
pub struct LineDecoder {
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of an oversized line skipped so far; `Some` while skipping to its end.
    skipping: Option<usize>,
}

impl LineDecoder {
    pub fn new(limit: usize) -> LineDecoder {
        LineDecoder {
            limit,
            buf: Vec::new(),
            skipping: None,
        }
    }

    /// Feeds bytes read from the peer; the complete frames they finish, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let chunk = &bytes[..newline.unwrap_or(bytes.len())];
            bytes = newline.map_or(&[][..], |n| &bytes[n + 1..]);
            if let Some(skipped) = self.skipping.as_mut() {
                *skipped += chunk.len();
            } else if self.buf.len() + chunk.len() > self.limit {
                self.skipping = Some(self.buf.len() + chunk.len());
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            if newline.is_some() {
                frames.push(match self.skipping.take() {
                    Some(bytes) => Frame::Oversized { bytes },
                    None => Frame::Line(std::mem::take(&mut self.buf)),
                });
            }
        }
        frames
    }

    /// The peer closed: what an unfinished last line amounts to.
    pub fn finish(&mut self) -> Option<Frame> {
        if let Some(bytes) = self.skipping.take() {
            return Some(Frame::Oversized { bytes });
        }
        if self.buf.is_empty() {
            return None;
        }
        Some(Frame::Line(std::mem::take(&mut self.buf)))
    }
}

/// A message's `id`: a number or a string (JSON-RPC 2.0; null is for errors without one).
pub type Id = Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Id,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    Response {
        id: Id,
        outcome: Result<Value, RpcError>,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// What makes a line a protocol violation (the `rpc` layer's events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a message of {bytes} bytes (at most {MAX_MESSAGE_BYTES})")]
    Oversized { bytes: usize },
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("not JSON: {0}")]
    Malformed(String),
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
    #[error("a response to no call in flight (id {0})")]
    UnknownId(String),
    #[error("`{0}` is not a method the plugin may call (log, event.publish, metrics.add)")]
    UndeclaredMethod(String),
}

impl Violation {
    /// The `action` of the violation event.
    pub fn action(&self) -> &'static str {
        match self {
            Violation::Oversized { .. } => "oversized",
            Violation::NotUtf8 | Violation::Malformed(_) => "malformed",
            Violation::NotJsonRpc(_) => "not-jsonrpc",
            Violation::UnknownId(_) => "unknown-id",
            Violation::UndeclaredMethod(_) => "undeclared-method",
        }
    }
}

/// Classifies one frame from the plugin.
pub fn parse(frame: &Frame) -> Result<Incoming, Violation> {
    let line = match frame {
        Frame::Oversized { bytes } => return Err(Violation::Oversized { bytes: *bytes }),
        Frame::Line(line) => line,
    };
    let text = std::str::from_utf8(line).map_err(|_| Violation::NotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| Violation::Malformed(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(Violation::NotJsonRpc(
            "not an object (batches are not used)",
        ));
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(Violation::NotJsonRpc("no \"jsonrpc\": \"2.0\""));
    }
    let id = obj.remove("id");
    if let Some(id) = &id {
        if !(id.is_string() || id.is_number() || id.is_null()) {
            return Err(Violation::NotJsonRpc(
                "an id that is not a string or a number",
            ));
        }
    }
    if let Some(method) = obj.remove("method") {
        let Value::String(method) = method else {
            return Err(Violation::NotJsonRpc("a method that is not a string"));
        };
        if id.as_ref().is_some_and(Value::is_null) {
            return Err(Violation::NotJsonRpc("a request whose id is null"));
        }
        let params = obj.remove("params").unwrap_or(Value::Null);
        if !(params.is_object() || params.is_array() || params.is_null()) {
            return Err(Violation::NotJsonRpc(
                "params that are not an object or an array",
            ));
        }
        return Ok(match id {
            Some(id) => Incoming::Request { id, method, params },
            None => Incoming::Notification { method, params },
        });
    }
    let Some(id) = id else {
        return Err(Violation::NotJsonRpc("neither a method nor an id"));
    };
    match (obj.remove("result"), obj.remove("error")) {
        (Some(result), None) => Ok(Incoming::Response {
            id,
            outcome: Ok(result),
        }),
        (None, Some(error)) => {
            let code = error.get("code").and_then(Value::as_i64);
            let message = error.get("message").and_then(Value::as_str);
            match (code, message) {
                (Some(code), Some(message)) => Ok(Incoming::Response {
                    id,
                    outcome: Err(RpcError {
                        code,
                        message: message.to_string(),
                        data: error.get("data").cloned(),
                    }),
                }),
                _ => Err(Violation::NotJsonRpc(
                    "an error without an integer code and a message",
                )),
            }
        }
        _ => Err(Violation::NotJsonRpc(
            "a response with neither or both of result and error",
        )),
    }
}

/// A request line for the plugin (`params` left out when null: JSON-RPC 2.0 allows only a
/// structured value there).
pub fn request(id: &Id, method: &str, params: &Value) -> Vec<u8> {
    let mut request = json!({ "jsonrpc": "2.0", "id": id, "method": method });
    if !params.is_null() {
        request["params"] = params.clone();
    }
    line(request)
}

/// A notification line for the plugin (no id: nothing is answered), such as `event`.
pub fn notification(method: &str, params: &Value) -> Vec<u8> {
    line(json!({ "jsonrpc": "2.0", "method": method, "params": params }))
}

/// A response line for the plugin (to its `log` or `event.publish` request).
pub fn response(id: &Id, outcome: &Result<Value, RpcError>) -> Vec<u8> {
    line(match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
    })
}

fn line(value: Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The manifest's methods with their schemas compiled, checked before a call reaches the plugin
/// and when its answer comes back.
pub struct Methods {
    methods: BTreeMap<String, Compiled>,
}

struct Compiled {
    params: jsonschema::Validator,
    result: Option<jsonschema::Validator>,
}

impl Methods {
    /// Compiles every schema (`package::load` has checked them already; an error here names the
    /// method).
    pub fn compile(manifest: &Manifest) -> Result<Methods, String> {
        let mut methods = BTreeMap::new();
        for (name, m) in &manifest.methods {
            let compile = |schema: &Value| {
                jsonschema::validator_for(schema).map_err(|e| format!("method `{name}`: {e}"))
            };
            methods.insert(
                name.clone(),
                Compiled {
                    params: compile(&m.params)?,
                    result: m.result.as_ref().map(compile).transpose()?,
                },
            );
        }
        Ok(Methods { methods })
    }

    /// Whether the host may forward a call of `method` with `params` to the plugin.
    pub fn check_call(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        let Some(m) = self.methods.get(method) else {
            return Err(RpcError {
                code: code::METHOD_NOT_FOUND,
                message: format!("the plugin declares no method `{method}`"),
                data: None,
            });
        };
        schema_error(&m.params, params, code::INVALID_PARAMS, "invalid params")
    }

    /// Whether the plugin's result for `method` matches its `result` schema (when it has one).
    pub fn check_result(&self, method: &str, result: &Value) -> Result<(), RpcError> {
        match self.methods.get(method).and_then(|m| m.result.as_ref()) {
            Some(v) => schema_error(v, result, code::INVALID_RESULT, "invalid result"),
            None => Ok(()),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }
}

/// The longest schema error text passed on: the validator quotes the failing value, which may be
/// as large as a message.
const MAX_ERROR_TEXT: usize = 1024;

fn shortened(text: String) -> String {
    cut_to(text, MAX_ERROR_TEXT)
}

/// `text` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
pub fn cut_to(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The first schema error as a JSON-RPC error: where in the value, what was wrong.
fn schema_error(
    validator: &jsonschema::Validator,
    value: &Value,
    code: i64,
    what: &str,
) -> Result<(), RpcError> {
    let Some(e) = validator.iter_errors(value).next() else {
        return Ok(());
    };
    let path = shortened(e.instance_path().to_string());
    let error = shortened(e.to_string());
    let mut data = Map::new();
    data.insert("path".into(), Value::String(path.clone()));
    data.insert("error".into(), Value::String(error.clone()));
    Err(RpcError {
        code,
        message: format!(
            "{what}: {error} (at {})",
            if path.is_empty() { "the top" } else { &path }
        ),
        data: Some(Value::Object(data)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(frames: Vec<Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Line(l) => String::from_utf8(l).unwrap(),
                Frame::Oversized { bytes } => format!("<{bytes} bytes>"),
            })
            .collect()
    }

    #[test]
    fn lines_split_across_reads_and_oversized_ones_are_skipped_whole() {
        let mut d = LineDecoder::new(8);
        assert_eq!(lines(d.feed(b"{\"a\"")), Vec::<String>::new());
        assert_eq!(lines(d.feed(b":1}\n{}\n{")), ["{\"a\":1}", "{}"]);
        // "{" held, then 20 more bytes without a newline: over the limit, skipped as they come,
        // never buffered.
        assert!(d.feed(&[b'x'; 20]).is_empty());
        assert!(d.buf.is_empty());
        assert_eq!(lines(d.feed(b"yy\nok\n")), ["<23 bytes>", "ok"]);
        // Exactly the limit is fine; one more is not.
        assert_eq!(
            lines(d.feed(b"12345678\n123456789\n")),
            ["12345678", "<9 bytes>"]
        );
        // An unfinished last line at the peer's close.
        assert!(d.feed(b"tail").is_empty());
        assert_eq!(d.finish(), Some(Frame::Line(b"tail".to_vec())));
        assert_eq!(d.finish(), None);
        // A 100 MiB message costs no more than the limit in memory.
        let mut d = LineDecoder::new(MAX_MESSAGE_BYTES);
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            assert!(d.feed(&chunk).is_empty());
            assert!(d.buf.capacity() <= MAX_MESSAGE_BYTES);
        }
        assert_eq!(d.feed(b"\n"), vec![Frame::Oversized { bytes: 100 << 20 }]);
    }

    fn parsed(text: &str) -> Result<Incoming, Violation> {
        parse(&Frame::Line(text.as_bytes().to_vec()))
    }

    #[test]
    fn messages_are_classified_and_violations_named() {
        assert_eq!(
            parsed(r#"{"jsonrpc":"2.0","id":7,"result":{"text":"hi"}}"#),
            Ok(Incoming::Response {
                id: json!(7),
                outcome: Ok(json!({"text":"hi"}))
            })
        );
        assert_eq!(
            parsed(r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"no"}}"#),
            Ok(Incoming::Response {
                id: json!("a"),
                outcome: Err(RpcError {
                    code: -32601,
                    message: "no".into(),
                    data: None
                })
            })
        );
        assert_eq!(
            parsed(r#"{"jsonrpc":"2.0","method":"log","params":{"msg":"x"}}"#),
            Ok(Incoming::Notification {
                method: "log".into(),
                params: json!({"msg":"x"})
            })
        );
        assert_eq!(
            parsed(r#"{"jsonrpc":"2.0","id":1,"method":"event.publish"}"#),
            Ok(Incoming::Request {
                id: json!(1),
                method: "event.publish".into(),
                params: Value::Null
            })
        );
        for (text, action) in [
            ("{", "malformed"),
            ("[1]", "not-jsonrpc"),
            (r#"{"id":1,"result":1}"#, "not-jsonrpc"),
            (r#"{"jsonrpc":"2.0","id":[1],"result":1}"#, "not-jsonrpc"),
            (r#"{"jsonrpc":"2.0","id":1}"#, "not-jsonrpc"),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
                "not-jsonrpc",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x"}}"#,
                "not-jsonrpc",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"log","params":3}"#,
                "not-jsonrpc",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"log"}"#,
                "not-jsonrpc",
            ),
        ] {
            assert_eq!(parsed(text).unwrap_err().action(), action, "{text}");
        }
        assert_eq!(
            parse(&Frame::Line(vec![b'"', 0xff, b'"'])),
            Err(Violation::NotUtf8)
        );
        assert_eq!(
            parse(&Frame::Oversized { bytes: 5 }).unwrap_err().action(),
            "oversized"
        );
    }

    #[test]
    fn lines_written_are_one_json_object_each() {
        let r = request(&json!(3), "echo", &json!({"text":"a\nb"}));
        assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(r.ends_with(b"\n"));
        let back = parse(&Frame::Line(r[..r.len() - 1].to_vec())).unwrap();
        assert_eq!(
            back,
            Incoming::Request {
                id: json!(3),
                method: "echo".into(),
                params: json!({"text":"a\nb"})
            }
        );
        let e = response(
            &json!("x"),
            &Err(RpcError {
                code: code::METHOD_NOT_FOUND,
                message: "no".into(),
                data: None,
            }),
        );
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "{\"error\":{\"code\":-32601,\"message\":\"no\"},\"id\":\"x\",\"jsonrpc\":\"2.0\"}\n"
        );
    }

    #[test]
    fn calls_are_checked_against_the_manifest_before_the_plugin_sees_them() {
        let manifest = stockade_policy::parse_manifest(
            r#"
id = "p"
name = "p"
version = "1.0.0"
entry = ["run"]
policy = "policy.toml"
[methods.echo]
params = { type = "object", properties = { text = { type = "string", maxLength = 5 } }, required = ["text"] }
result = { type = "object", required = ["text"] }
"#,
            "plugin.toml",
        )
        .unwrap();
        let m = Methods::compile(&manifest).unwrap();
        assert_eq!(m.names().collect::<Vec<_>>(), ["echo"]);
        assert_eq!(m.check_call("echo", &json!({"text": "hi"})), Ok(()));
        let e = m.check_call("shout", &json!({})).unwrap_err();
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
        let e = m
            .check_call("echo", &json!({"text": "too long"}))
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert_eq!(e.data.as_ref().unwrap()["path"], "/text");
        assert!(e.message.starts_with("invalid params: "), "{}", e.message);
        // A huge failing value is not echoed back whole.
        let e = m
            .check_call("echo", &json!({ "text": "x".repeat(100_000) }))
            .unwrap_err();
        assert!(e.message.len() < 1200, "{}", e.message.len());
        assert_eq!(
            request(&json!(1), "ping", &Value::Null),
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n"
        );
        let e = m.check_call("echo", &json!({})).unwrap_err();
        assert_eq!(e.data.as_ref().unwrap()["path"], "");
        assert!(e.message.ends_with("(at the top)"), "{}", e.message);
        assert_eq!(m.check_result("echo", &json!({"text": "x"})), Ok(()));
        assert_eq!(
            m.check_result("echo", &json!("x")).unwrap_err().code,
            code::INVALID_RESULT
        );
    }
}
