//! Write a Stockade plugin in Rust.
//!
//! A plugin is a program the daemon starts in its sandbox with one socket, whose descriptor
//! number is in `STOCKADE_RPC_FD`, speaking newline-delimited JSON-RPC 2.0 (docs/plugins.md).
//! This crate is that loop: declare the methods of your `plugin.toml` with typed parameters and
//! results, and call [`Plugin::serve`].
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use stockade_plugin::{Context, Error, Plugin};
//!
//! #[derive(Deserialize)]
//! struct Echo { text: String }
//! #[derive(Serialize)]
//! struct Echoed { text: String }
//!
//! fn main() -> std::io::Result<()> {
//!     Plugin::new()
//!         .method("echo", |p: Echo, cx: &mut Context| {
//!             cx.log("info", &format!("echoing {} bytes", p.text.len()));
//!             Ok::<_, Error>(Echoed { text: p.text })
//!         })
//!         .serve()
//! }
//! ```
//!
//! The host checks parameters against the manifest's schema before a call arrives; the types here
//! are the plugin's own second check (a mismatch answers `-32602`). One call is handled at a time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// The largest line either side may send (the host's limit too).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// A JSON-RPC error a method answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl Error {
    /// An application error (codes from -32000 down are the host's; use your own, positive ones).
    pub fn new(code: i64, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Error {
        Error::new(-32602, message)
    }

    fn json(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            e["data"] = data.clone();
        }
        e
    }
}

/// What a method can do besides answering: log, and publish events to the host's subscribers.
pub struct Context<'a> {
    out: &'a mut dyn Write,
    /// The configuration `initialize` carried.
    pub config: &'a Value,
}

impl Context<'_> {
    /// A log line the host keeps with the plugin's (and attaches to the call in progress).
    pub fn log(&mut self, level: &str, message: &str) {
        self.notify("log", json!({ "level": level, "message": message }));
    }

    /// An event for the host's subscribers (`stockade events`).
    pub fn publish(&mut self, topic: &str, data: Value) {
        self.notify("event.publish", json!({ "topic": topic, "data": data }));
    }

    /// Adds `value` to the counter `name`, which the manifest's `counters` must declare (an
    /// undeclared one is a protocol violation); the host exports it to Prometheus.
    pub fn count(&mut self, name: &str, value: u64) {
        self.notify("metrics.add", json!({ "name": name, "value": value }));
    }

    fn notify(&mut self, method: &str, params: Value) {
        let _ = send(
            self.out,
            &json!({ "jsonrpc": "2.0", "method": method, "params": params }),
        );
    }
}

type Handler = Box<dyn FnMut(Value, &mut Context<'_>) -> Result<Value, Error>>;
type InitHook = Box<dyn FnMut(&Value) -> Result<(), Error>>;
type EventHook = Box<dyn FnMut(&Event, &mut Context<'_>)>;

/// An event another plugin published, delivered because the manifest's `subscribe` names its
/// topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The plugin that published it.
    pub plugin: String,
    pub topic: String,
    pub data: Value,
}

/// What the plugin says it is ([`Plugin::describe`], the `make_plugin!` macro's `name`,
/// `version`, `author`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub author: String,
}

/// A plugin's methods, and the loop that serves them.
#[derive(Default)]
pub struct Plugin {
    methods: HashMap<String, Handler>,
    on_initialize: Option<InitHook>,
    on_shutdown: Option<Box<dyn FnMut()>>,
    hooks: Vec<(String, EventHook)>,
    info: Option<Info>,
}

/// Whether `topic` matches a hook's pattern: the topic itself, or a prefix ending in `*`.
fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// Declares a plugin in one place, in the manner of the UPM seeds' `make_plugin!`: its name,
/// version and author, `init` and `shutdown`, its methods, and its hooks (event subscriptions:
/// each topic must also be in the manifest's `subscribe`). Expands to a `main` that serves the
/// plugin's socket.
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
/// use stockade_plugin::{make_plugin, Context, Error, Event};
///
/// #[derive(Deserialize)]
/// struct Echo { text: String }
/// #[derive(Serialize)]
/// struct Echoed { text: String }
///
/// fn echo(p: Echo, cx: &mut Context) -> Result<Echoed, Error> {
///     cx.publish("echoed", serde_json::json!({ "len": p.text.len() }));
///     Ok(Echoed { text: p.text })
/// }
///
/// fn installed(event: &Event, cx: &mut Context) {
///     cx.log("info", &format!("{} installed {}", event.plugin, event.data));
/// }
///
/// make_plugin! {
///     name: "echo",
///     version: "0.1.0",
///     author: "Stockade",
///     init: |_config| Ok(()),
///     shutdown: || {},
///     methods: { "echo" => echo },
///     hooks: { "pip.installed" => installed },
/// }
/// ```
#[macro_export]
macro_rules! make_plugin {
    ($($declaration:tt)*) => {
        fn main() -> ::std::io::Result<()> {
            $crate::plugin!($($declaration)*).serve()
        }
    };
}

/// The plugin [`make_plugin!`] declares, without its `main`: for tests, or to serve another
/// socket.
#[macro_export]
macro_rules! plugin {
    (
        name: $name:expr,
        version: $version:expr,
        author: $author:expr
        $(, init: $init:expr)?
        $(, shutdown: $shutdown:expr)?
        $(, methods: { $($method:expr => $handler:expr),* $(,)? })?
        $(, hooks: { $($topic:expr => $hook:expr),* $(,)? })?
        $(,)?
    ) => {{
        #[allow(unused_mut)]
        let mut plugin = $crate::Plugin::new().describe($name, $version, $author);
        $( plugin = plugin.on_initialize($init); )?
        $( plugin = plugin.on_shutdown($shutdown); )?
        $( $( plugin = plugin.method($method, $handler); )* )?
        $( $( plugin = plugin.on_event($topic, $hook); )* )?
        plugin
    }};
}

impl Plugin {
    pub fn new() -> Plugin {
        Plugin::default()
    }

    /// Declares `name`: its parameters are deserialized into `P` and its result serialized from
    /// `R`.
    pub fn method<P, R, F>(mut self, name: &str, mut f: F) -> Plugin
    where
        P: DeserializeOwned,
        R: Serialize,
        F: FnMut(P, &mut Context<'_>) -> Result<R, Error> + 'static,
    {
        let handler = move |params: Value, cx: &mut Context<'_>| {
            let params: P = serde_json::from_value(params)
                .map_err(|e| Error::invalid_params(format!("invalid params: {e}")))?;
            let result = f(params, cx)?;
            serde_json::to_value(result)
                .map_err(|e| Error::new(-32603, format!("the result does not serialize: {e}")))
        };
        self.methods.insert(name.to_string(), Box::new(handler));
        self
    }

    /// Runs once, at `initialize`, with the plugin's configuration; an error fails the start.
    pub fn on_initialize(mut self, f: impl FnMut(&Value) -> Result<(), Error> + 'static) -> Plugin {
        self.on_initialize = Some(Box::new(f));
        self
    }

    /// Runs once, at `shutdown`, before the answer.
    pub fn on_shutdown(mut self, f: impl FnMut() + 'static) -> Plugin {
        self.on_shutdown = Some(Box::new(f));
        self
    }

    /// Runs for each event whose topic matches `topic` (a topic, or a prefix ending in `*`). The
    /// host delivers only the topics the manifest's `subscribe` names.
    pub fn on_event(
        mut self,
        topic: &str,
        f: impl FnMut(&Event, &mut Context<'_>) + 'static,
    ) -> Plugin {
        self.hooks.push((topic.to_string(), Box::new(f)));
        self
    }

    /// The plugin's name, version and author. At `initialize`, a version that differs from the
    /// manifest's (which the host sends) is logged as a warning: the binary and its package
    /// disagree.
    pub fn describe(mut self, name: &str, version: &str, author: &str) -> Plugin {
        self.info = Some(Info {
            name: name.to_string(),
            version: version.to_string(),
            author: author.to_string(),
        });
        self
    }

    pub fn info(&self) -> Option<&Info> {
        self.info.as_ref()
    }

    /// Serves the socket the host handed over (`STOCKADE_RPC_FD`) until `shutdown` or until the
    /// host closes it.
    pub fn serve(self) -> std::io::Result<()> {
        let fd: i32 = std::env::var("STOCKADE_RPC_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "STOCKADE_RPC_FD is not set: this program is a Stockade plugin, started by \
                     the daemon",
                )
            })?;
        // SAFETY: the descriptor the host handed over for this purpose, used only here.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        self.serve_on(stream)
    }

    /// Serves `stream` (the plugin's socket) until `shutdown` or its end.
    pub fn serve_on(mut self, stream: UnixStream) -> std::io::Result<()> {
        let mut out = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut config = Value::Null;
        let mut line = Vec::new();
        // Answers wait here while more requests are already read: one write for a batch of
        // pipelined calls.
        let mut answers: Vec<u8> = Vec::new();
        loop {
            // Nothing more read ahead: the answers so far go out before the next read blocks.
            if reader.buffer().is_empty() && !answers.is_empty() {
                out.write_all(&answers)?;
                answers.clear();
            }
            line.clear();
            let n = (&mut reader)
                .take(MAX_MESSAGE_BYTES as u64 + 2)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(()); // the host closed the socket
            }
            if line.strip_suffix(b"\n").unwrap_or(&line).len() > MAX_MESSAGE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the host sent a message over the size limit",
                ));
            }
            let Ok(request) = serde_json::from_slice::<Value>(&line) else {
                continue; // not ours to judge: the host only sends valid JSON
            };
            let Some(method) = request.get("method").and_then(Value::as_str) else {
                continue; // a response to one of our notifications' kind: none are expected
            };
            let id = request.get("id").cloned();
            let params = request.get("params").cloned().unwrap_or(Value::Null);
            let outcome = match method {
                "initialize" => {
                    config = params.get("config").cloned().unwrap_or(Value::Null);
                    let manifest_version =
                        params.pointer("/plugin/version").and_then(Value::as_str);
                    if let (Some(info), Some(v)) = (&self.info, manifest_version) {
                        if info.version != v {
                            let mut cx = Context {
                                out: &mut out,
                                config: &config,
                            };
                            cx.log(
                                "warning",
                                &format!(
                                    "{} says it is version {}, its manifest {v}",
                                    info.name, info.version
                                ),
                            );
                        }
                    }
                    match self.on_initialize.as_mut() {
                        Some(f) => f(&config).map(|()| json!({})),
                        None => Ok(json!({})),
                    }
                }
                "event" => {
                    let event = Event {
                        plugin: params["plugin"].as_str().unwrap_or_default().to_string(),
                        topic: params["topic"].as_str().unwrap_or_default().to_string(),
                        data: params.get("data").cloned().unwrap_or(Value::Null),
                    };
                    let mut cx = Context {
                        out: &mut out,
                        config: &config,
                    };
                    for (pattern, hook) in &mut self.hooks {
                        if topic_matches(pattern, &event.topic) {
                            hook(&event, &mut cx);
                        }
                    }
                    Ok(json!({}))
                }
                "shutdown" => {
                    if let Some(f) = self.on_shutdown.as_mut() {
                        f();
                    }
                    Ok(json!({}))
                }
                "ping" => Ok(json!({})),
                other => match self.methods.get_mut(other) {
                    Some(handler) => {
                        let mut cx = Context {
                            out: &mut out,
                            config: &config,
                        };
                        handler(params, &mut cx)
                    }
                    None => Err(Error::new(-32601, format!("no method `{other}`"))),
                },
            };
            if let Some(id) = id {
                let reply = match outcome {
                    Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
                    Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.json() }),
                };
                if serde_json::to_vec(&reply).map_or(0, |b| b.len()) > MAX_MESSAGE_BYTES {
                    // The host would count an oversized line as a violation of the plugin.
                    let e = Error::new(-32603, "the result is larger than a message may be");
                    send(
                        &mut answers,
                        &json!({ "jsonrpc": "2.0", "id": id, "error": e.json() }),
                    )?;
                } else {
                    send(&mut answers, &reply)?;
                }
            }
            if answers.len() >= 256 << 10 || method == "shutdown" {
                out.write_all(&answers)?;
                answers.clear();
            }
            if method == "shutdown" {
                return Ok(());
            }
        }
    }
}

fn send(out: &mut dyn Write, value: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Echo {
        text: String,
    }

    /// The host's side: write one line, read lines until the reply to `id`.
    struct Host {
        out: UnixStream,
        input: BufReader<UnixStream>,
    }

    impl Host {
        fn call(&mut self, id: u64, method: &str, params: Value) -> (Vec<Value>, Value) {
            send(
                &mut self.out,
                &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }),
            )
            .unwrap();
            let mut notes = Vec::new();
            loop {
                let mut line = String::new();
                assert!(self.input.read_line(&mut line).unwrap() > 0, "closed");
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["jsonrpc"], "2.0");
                if v["id"] == json!(id) {
                    return (notes, v);
                }
                notes.push(v);
            }
        }
    }

    #[test]
    fn a_plugin_answers_what_it_declares_and_refuses_the_rest() {
        let (host_end, plugin_end) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            Plugin::new()
                .on_initialize(|config| {
                    if config["fail"] == true {
                        Err(Error::new(1, "told to fail"))
                    } else {
                        Ok(())
                    }
                })
                .method("big", |_: Value, _: &mut Context<'_>| {
                    Ok::<_, Error>("x".repeat(MAX_MESSAGE_BYTES))
                })
                .method("echo", |p: Echo, cx: &mut Context<'_>| {
                    cx.log("info", "echoing");
                    cx.publish("echoed", json!({ "len": p.text.len() }));
                    Ok::<_, Error>(json!({ "text": p.text, "config": cx.config }))
                })
                .serve_on(plugin_end)
        });
        let mut host = Host {
            out: host_end.try_clone().unwrap(),
            input: BufReader::new(host_end),
        };
        let (_, r) = host.call(1, "initialize", json!({ "config": { "greeting": "hi" } }));
        assert_eq!(r["result"], json!({}));
        let (notes, r) = host.call(2, "echo", json!({ "text": "abc" }));
        assert_eq!(
            r["result"],
            json!({ "text": "abc", "config": { "greeting": "hi" } })
        );
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0]["method"], "log");
        assert_eq!(notes[0]["params"]["message"], "echoing");
        assert!(notes[0].get("id").is_none(), "a notification has no id");
        assert_eq!(notes[1]["method"], "event.publish");
        assert_eq!(
            notes[1]["params"],
            json!({ "topic": "echoed", "data": { "len": 3 } })
        );
        let (_, r) = host.call(3, "echo", json!({ "txt": "abc" }));
        assert_eq!(r["error"]["code"], -32602);
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing field `text`"),
            "{r}"
        );
        let (_, r) = host.call(4, "shout", json!({}));
        assert_eq!(r["error"]["code"], -32601);
        let (_, r) = host.call(41, "big", Value::Null);
        assert_eq!(r["error"]["code"], -32603, "{r}");
        let (_, r) = host.call(5, "ping", Value::Null);
        assert_eq!(r["result"], json!({}));
        let (_, r) = host.call(6, "shutdown", Value::Null);
        assert_eq!(r["result"], json!({}));
        server.join().unwrap().unwrap();
    }

    #[test]
    fn initialize_can_fail_and_a_closed_socket_ends_the_loop() {
        let (host_end, plugin_end) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            Plugin::new()
                .on_initialize(|_| Err(Error::new(7, "no config")))
                .serve_on(plugin_end)
        });
        let mut host = Host {
            out: host_end.try_clone().unwrap(),
            input: BufReader::new(host_end),
        };
        let (_, r) = host.call(1, "initialize", json!({}));
        assert_eq!(r["error"], json!({ "code": 7, "message": "no config" }));
        drop(host);
        server.join().unwrap().unwrap();
    }

    fn shout(p: Echo, cx: &mut Context<'_>) -> Result<Value, Error> {
        cx.publish("shouted", json!({ "len": p.text.len() }));
        Ok(json!({ "text": p.text.to_uppercase() }))
    }

    #[test]
    fn the_macro_declares_info_init_shutdown_methods_and_hooks() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let shutdowns = Arc::new(AtomicU32::new(0));
        let seen = shutdowns.clone();
        let (host_end, plugin_end) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let plugin = crate::plugin! {
                name: "shouter",
                version: "1.0.0",
                author: "Stockade",
                init: |config: &Value| if config["ok"] == false { Err(Error::new(9, "no")) } else { Ok(()) },
                shutdown: move || { seen.fetch_add(1, Ordering::SeqCst); },
                methods: { "shout" => shout },
                hooks: {
                    "pip.installed" => |e: &Event, cx: &mut Context<'_>| cx.log("info", &format!("{} installed {}", e.plugin, e.data["package"])),
                    "pip.*" => |e: &Event, cx: &mut Context<'_>| cx.log("debug", &format!("pip event {}", e.topic)),
                },
            };
            assert_eq!(
                plugin.info(),
                Some(&Info {
                    name: "shouter".into(),
                    version: "1.0.0".into(),
                    author: "Stockade".into()
                })
            );
            plugin.serve_on(plugin_end)
        });
        let mut host = Host {
            out: host_end.try_clone().unwrap(),
            input: BufReader::new(host_end),
        };
        // The manifest says another version: a warning, not a failure.
        let (notes, r) = host.call(
            1,
            "initialize",
            json!({ "config": {}, "plugin": { "id": "shouter", "version": "1.0.1" } }),
        );
        assert_eq!(r["result"], json!({}));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0]["params"]["level"], "warning");
        assert_eq!(
            notes[0]["params"]["message"],
            "shouter says it is version 1.0.0, its manifest 1.0.1"
        );
        let (notes, r) = host.call(2, "shout", json!({ "text": "hi" }));
        assert_eq!(r["result"], json!({ "text": "HI" }));
        assert_eq!(notes[0]["params"]["topic"], "shouted");
        // An event notification: no answer; each matching hook runs, in order.
        send(
            &mut host.out,
            &json!({ "jsonrpc": "2.0", "method": "event", "params": { "plugin": "pip", "topic": "pip.installed", "data": { "package": "requests" } } }),
        )
        .unwrap();
        send(
            &mut host.out,
            &json!({ "jsonrpc": "2.0", "method": "event", "params": { "plugin": "npm", "topic": "npm.installed", "data": {} } }),
        )
        .unwrap();
        let (notes, r) = host.call(3, "ping", Value::Null);
        assert_eq!(r["result"], json!({}));
        let messages: Vec<&str> = notes
            .iter()
            .map(|n| n["params"]["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            messages,
            ["pip installed \"requests\"", "pip event pip.installed"]
        );
        // The macro's `init` answers `initialize`: its error is the host's.
        let (_, r) = host.call(31, "initialize", json!({ "config": { "ok": false } }));
        assert_eq!(r["error"], json!({ "code": 9, "message": "no" }), "{r}");
        let (_, r) = host.call(4, "shutdown", Value::Null);
        assert_eq!(r["result"], json!({}));
        server.join().unwrap().unwrap();
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_its_socket_the_program_says_what_it_is() {
        std::env::remove_var("STOCKADE_RPC_FD");
        let err = Plugin::new().serve().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains("STOCKADE_RPC_FD"));
    }
}
