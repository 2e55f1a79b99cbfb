//! The policy parser, and the plugin manifest parser built on the same machinery, on any text:
//! each must return, never panic, and report errors within its bounds (at most MAX_DIAGNOSTICS,
//! plus one line counting the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stockade_policy::diagnostics::MAX_DIAGNOSTICS;
use stockade_policy::{parse_manifest, parse_policy, Diagnostics};

fuzz_target!(|data: &[u8]| {
    // load_policy turns invalid UTF-8 into one diagnostic before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(diagnostics) = parse_policy(text, "fuzz.toml") {
        bounded(diagnostics);
    }
    if let Err(diagnostics) = parse_manifest(text, "plugin.toml") {
        bounded(diagnostics);
    }
});

fn bounded(diagnostics: Diagnostics) {
    assert!(!diagnostics.is_empty(), "an error without a diagnostic");
    assert!(
        diagnostics.len() <= MAX_DIAGNOSTICS + 1,
        "{} diagnostics",
        diagnostics.len()
    );
    for d in &diagnostics {
        assert!(
            d.line >= 1 && d.column >= 1,
            "position {}:{}",
            d.line,
            d.column
        );
    }
    // Rendering walks every diagnostic too.
    let _ = diagnostics.to_string();
}
