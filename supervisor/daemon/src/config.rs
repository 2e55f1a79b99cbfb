//! The daemon's configuration file (TOML; `--config FILE`, else `/etc/stockade/daemon.toml`
//! when it exists). Flags on the command line win over it; `plugins` and `allow_uids` add up.
//!
//! ```toml
//! socket = "/run/stockade/stockade.sock"
//! state_dir = "/var/lib/stockade"
//! plugins = ["/etc/stockade/plugins"]
//! allow_uids = [1000]
//! ```
//!
//! Every error names the file, line and column, and the daemon does not start.

use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, Value};

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/stockade/daemon.toml";
/// The largest configuration file read.
const MAX_BYTES: u64 = 1 << 20;
const KEYS: &str = "socket, state_dir, plugins, allow_uids";

#[derive(Debug, Default, PartialEq)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub plugins: Vec<PathBuf>,
    pub allow_uids: Vec<u32>,
}

/// Reads `path`; `Ok(None)` when it is the default path and does not exist.
pub fn read(path: Option<&Path>) -> anyhow::Result<Option<Config>> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!(
            "{}: {e}\n  hint: give an existing configuration file, or leave --config out",
            path.display()
        ),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES + 1), &mut text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_BYTES {
        anyhow::bail!("{}: larger than {MAX_BYTES} bytes", path.display());
    }
    parse(&text).map(Some).map_err(|(offset, message)| {
        let (line, column) = line_column(&text, offset);
        anyhow::anyhow!(
            "{}:{line}:{column}: {message}\n  hint: the keys are {KEYS} (see docs/plugins.md)",
            path.display()
        )
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Parses the configuration; an error is its byte offset and message.
pub fn parse(text: &str) -> Result<Config, (usize, String)> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        (offset, format!("invalid TOML: {}", e.message()))
    })?;
    let mut config = Config::default();
    for (key, item) in doc.as_table().iter() {
        let at = doc
            .as_table()
            .key(key)
            .and_then(|k| k.span())
            .map_or(0, |s| s.start);
        let value_at = item.span().map_or(at, |s| s.start);
        let string = |item: &Item| -> Result<PathBuf, (usize, String)> {
            match item.as_value() {
                Some(Value::String(s)) if !s.value().is_empty() => Ok(PathBuf::from(s.value())),
                _ => Err((
                    value_at,
                    format!("`{key}` must be a non-empty string (a path)"),
                )),
            }
        };
        match key {
            "socket" => config.socket = Some(string(item)?),
            "state_dir" => config.state_dir = Some(string(item)?),
            "plugins" => {
                let Some(Value::Array(array)) = item.as_value() else {
                    return Err((value_at, "`plugins` must be an array of directories".into()));
                };
                for v in array.iter() {
                    match v {
                        Value::String(s) if !s.value().is_empty() => {
                            config.plugins.push(PathBuf::from(s.value()))
                        }
                        _ => {
                            let at = v.span().map_or(value_at, |s| s.start);
                            return Err((at, "each of `plugins` must be a directory".into()));
                        }
                    }
                }
            }
            "allow_uids" => {
                let Some(Value::Array(array)) = item.as_value() else {
                    return Err((value_at, "`allow_uids` must be an array of uids".into()));
                };
                for v in array.iter() {
                    match v.as_integer().and_then(|n| u32::try_from(n).ok()) {
                        Some(uid) => config.allow_uids.push(uid),
                        None => {
                            let at = v.span().map_or(value_at, |s| s.start);
                            return Err((
                                at,
                                "each of `allow_uids` must be a uid (0 to 4294967295)".into(),
                            ));
                        }
                    }
                }
            }
            other => return Err((at, format!("unknown key `{other}`"))),
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_file() {
        let c = parse(
            "socket = \"/run/s.sock\"\nstate_dir = \"/var/lib/x\"\nplugins = [\"/a\", \"/b\"]\nallow_uids = [1000]\n",
        )
        .unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/run/s.sock")));
        assert_eq!(c.state_dir, Some(PathBuf::from("/var/lib/x")));
        assert_eq!(c.plugins, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.allow_uids, [1000]);
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_point_at_the_value() {
        let text = "socket = \"/s\"\nplugin = [\"/a\"]\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (2, 1));
        assert_eq!(message, "unknown key `plugin`");
        let text = "allow_uids = [1000, -1]\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (1, 21));
        assert!(message.contains("must be a uid"), "{message}");
        let (_, message) = parse("socket = 3\n").unwrap_err();
        assert!(message.contains("must be a non-empty string"), "{message}");
        let (_, message) = parse("socket = \n").unwrap_err();
        assert!(message.starts_with("invalid TOML"), "{message}");
    }
}
