//! The Rust example plugin: `echo` answers with the text it is given, `count` with the number
//! of echoes so far. Built with the `stockade-plugin` SDK (sdk/rust); its manifest is plugin.toml.

use std::cell::Cell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use stockade_plugin::{Context, Error, Plugin};

#[derive(Deserialize)]
struct Echo {
    text: String,
}

#[derive(Serialize)]
struct Echoed {
    text: String,
}

#[derive(Deserialize)]
struct Nothing {}

#[derive(Serialize)]
struct Count {
    echoes: u64,
}

fn main() -> std::io::Result<()> {
    let echoes = Rc::new(Cell::new(0u64));
    let counted = echoes.clone();
    Plugin::new()
        .method("echo", move |p: Echo, _cx: &mut Context| {
            echoes.set(echoes.get() + 1);
            Ok::<_, Error>(Echoed { text: p.text })
        })
        .method("count", move |_: Nothing, cx: &mut Context| {
            cx.log("info", &format!("{} echoes so far", counted.get()));
            Ok::<_, Error>(Count {
                echoes: counted.get(),
            })
        })
        .serve()
}
