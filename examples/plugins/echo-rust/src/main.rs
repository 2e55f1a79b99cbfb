//! The Rust example plugin, declared with the SDK's `make_plugin!` (sdk/rust): `echo` answers
//! with the text it is given, `announce` publishes an event, `count` says how many echoes it
//! answered and how many events it heard. It subscribes to `greetings.*` (its manifest's
//! `subscribe`): other plugins' events of those topics reach its hook. Its manifest is plugin.toml.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stockade_plugin::{make_plugin, Context, Error, Event};

static ECHOES: AtomicU64 = AtomicU64::new(0);
static HEARD: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
struct Echo {
    text: String,
}

#[derive(Serialize)]
struct Echoed {
    text: String,
}

#[derive(Deserialize)]
struct Announce {
    topic: String,
    data: Value,
}

#[derive(Deserialize)]
struct Nothing {}

#[derive(Serialize)]
struct Count {
    echoes: u64,
    heard: u64,
}

fn echo(p: Echo, _cx: &mut Context) -> Result<Echoed, Error> {
    ECHOES.fetch_add(1, Ordering::Relaxed);
    Ok(Echoed { text: p.text })
}

fn announce(p: Announce, cx: &mut Context) -> Result<Value, Error> {
    cx.publish(&p.topic, p.data);
    Ok(serde_json::json!({}))
}

fn count(_: Nothing, cx: &mut Context) -> Result<Count, Error> {
    let (echoes, heard) = (
        ECHOES.load(Ordering::Relaxed),
        HEARD.load(Ordering::Relaxed),
    );
    cx.log("info", &format!("{echoes} echoes, {heard} events heard"));
    Ok(Count { echoes, heard })
}

fn greeted(event: &Event, cx: &mut Context) {
    HEARD.fetch_add(1, Ordering::Relaxed);
    cx.log(
        "info",
        &format!(
            "heard {} from {}: {}",
            event.topic, event.plugin, event.data
        ),
    );
}

make_plugin! {
    name: "echo-rust",
    version: "0.1.0",
    author: "Stockade",
    init: |_config: &Value| Ok(()),
    shutdown: || {},
    methods: { "echo" => echo, "announce" => announce, "count" => count },
    hooks: { "greetings.*" => greeted },
}
