//! Errors in a policy file, reported the way a compiler reports them: `FILE:LINE:COL: error: …`
//! with a hint on the next line.
//!
//! Why a list: a security engineer fixing a policy should see every mistake of the file in one run,
//! not one per run. The parser therefore collects [`Diagnostic`]s and returns them together as
//! [`Diagnostics`]; only a TOML syntax error stops it, because nothing after it can be trusted.

use std::fmt;
use std::path::PathBuf;

/// One error in a policy file. `line` and `column` are 1-based; the column counts characters, not
/// bytes, so it matches what an editor shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to do about it, when there is something more specific to say than the message.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every error found in one policy file, in the order they appear in the file. Never empty when
/// returned as an error. At most [`MAX_DIAGNOSTICS`] errors, then, when the file had more, one last
/// entry at the first error left out, whose message says how many were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most this many errors of one file are reported, the first ones by position; when there are
/// more, one last diagnostic says how many were left out. A policy written to produce errors
/// (every entry a typo) would otherwise print hundreds of megabytes.
pub const MAX_DIAGNOSTICS: usize = 100;

/// The largest policy file, in bytes. Real policies are a few kilobytes; a generated one granting
/// 10,000 paths is about 220 KB. Policies come from plugin authors, so what the supervisor reads
/// and checks must stay bounded: [`crate::load_policy`] reads at most this much and
/// [`crate::parse_policy`] refuses longer text.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Why [`crate::load_policy`] failed. `Display` is the cause alone; [`LoadError::hint`] says what
/// to do about it, so a caller can print the two as it prints every other error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory, FIFO, device or socket: reading one could block forever (a FIFO) or never end
    /// (`/dev/zero`).
    #[error("policy {} is {kind}, not a regular file", path.display())]
    NotRegularFile {
        path: PathBuf,
        /// What it is instead, in words: "a FIFO", "a character device".
        kind: &'static str,
    },
    #[error("policy {} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: usize },
    /// Each diagnostic carries its own hint.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

impl LoadError {
    /// What to do about it; `None` for [`LoadError::Invalid`], whose diagnostics carry their own.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LoadError::Io { .. } => Some("check the path and permissions"),
            LoadError::NotRegularFile { .. } => Some(
                "a policy is read from a regular file; save it to one and pass that file's path",
            ),
            LoadError::TooLarge { .. } => Some(
                "a policy may be at most 1 MiB; grant common parent directories rather than \
                 every path below them",
            ),
            LoadError::Invalid(_) => None,
        }
    }
}

/// The candidate closest to `word`, if it is close enough to be the likely intent of a typo.
///
/// Two measures, because they catch different typos: Damerau-Levenshtein handles transpositions and
/// dropped letters in short words (`pdis` → `pids`), Jaro-Winkler favours a shared prefix in long
/// ones (`plugin` → `plugin_dir`). The thresholds are above the suggested 0.6 / 0.8 because over
/// the ~460 syscall names those let noise through (`frobnicate` → `ftruncate` scores 0.60 / 0.84,
/// while real typos score at least 0.75 / 0.92). Below both a suggestion would mislead, and the
/// caller lists the valid choices instead.
///
/// Both measures cost the product of the two lengths, and `word` comes from the policy: a
/// 100 KB syscall name took 3 s against every name. A word more than twice as long as a
/// candidate cannot reach either threshold (Damerau-Levenshtein needs at most 1.43 times;
/// Jaro-Winkler needs a Jaro score of 5/6, and the matching characters are at most the
/// candidate's, so at most half the word), so such candidates are skipped before either is
/// computed: the same suggestions, at a cost bounded by the candidates' lengths.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let word_chars = word.chars().count();
    candidates
        .into_iter()
        .filter(|candidate| word_chars <= 2 * candidate.chars().count())
        .map(|candidate| {
            let lower = candidate.to_ascii_lowercase();
            let dl = strsim::normalized_damerau_levenshtein(&word, &lower);
            let jw = strsim::jaro_winkler(&word, &lower);
            (candidate, dl, jw)
        })
        .filter(|&(_, dl, jw)| dl >= 0.7 || jw >= 0.9)
        .max_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)))
        .map(|(candidate, _, _)| candidate)
}

/// `a`, `a or b`, `a, b or c`: how a message lists the valid choices.
pub(crate) fn one_of(choices: &[String]) -> String {
    join_words(choices, "or")
}

/// `a, b and c`: how a hint lists every valid key.
pub(crate) fn all_of(items: &[String]) -> String {
    join_words(items, "and")
}

fn join_words(items: &[String], conjunction: &str) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} {conjunction} {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(hint: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: "p.toml".into(),
            line: 3,
            column: 7,
            message: "unknown key `pdis` in [resources]".into(),
            hint: hint.map(Into::into),
        }
    }

    #[test]
    fn display_has_compiler_shape() {
        assert_eq!(
            diagnostic(None).to_string(),
            "p.toml:3:7: error: unknown key `pdis` in [resources]"
        );
        assert_eq!(
            diagnostic(Some("did you mean `pids`?")).to_string(),
            "p.toml:3:7: error: unknown key `pdis` in [resources]\n  hint: did you mean `pids`?"
        );
    }

    #[test]
    fn diagnostics_display_every_error() {
        let all = Diagnostics(vec![diagnostic(None), diagnostic(Some("h"))]);
        assert_eq!(all.to_string().lines().count(), 3);
    }

    #[test]
    fn load_errors_name_the_file_and_carry_the_hint_apart() {
        let err = LoadError::Io {
            path: "/etc/stockade/x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = err.to_string();
        assert!(text.starts_with("cannot read policy /etc/stockade/x.toml: "));
        assert!(!text.contains("hint"), "{text}");
        assert_eq!(err.hint(), Some("check the path and permissions"));
        let err = LoadError::NotRegularFile {
            path: "/dev/zero".into(),
            kind: "a character device",
        };
        assert_eq!(
            err.to_string(),
            "policy /dev/zero is a character device, not a regular file"
        );
        assert!(err.hint().is_some());
        let err = LoadError::TooLarge {
            path: "big.toml".into(),
            limit: MAX_POLICY_BYTES,
        };
        assert_eq!(
            err.to_string(),
            "policy big.toml is larger than 1048576 bytes"
        );
        assert!(err.hint().is_some_and(|h| h.contains("1 MiB")));
        assert_eq!(LoadError::Invalid(Diagnostics(Vec::new())).hint(), None);
    }

    #[test]
    fn nearest_suggests_only_close_words() {
        let keys = [
            "memory", "pids", "cpu", "nofile", "fsize", "tmp_size", "timeout",
        ];
        assert_eq!(nearest("pdis", keys), Some("pids"));
        assert_eq!(nearest("memroy", keys), Some("memory"));
        assert_eq!(nearest("tmpsize", keys), Some("tmp_size"));
        assert_eq!(nearest("banana", keys), None);
        assert_eq!(nearest("frobnicate", ["ftruncate", "create_module"]), None);
        assert_eq!(
            nearest("plugin", ["PLUGIN_DIR", "STATE_DIR", "TMP"]),
            Some("PLUGIN_DIR")
        );
    }

    /// The length bound skips only candidates that could not have been suggested: over every
    /// syscall name and words up to three times as long, the bounded search and the full one
    /// agree, including at the boundary of twice the length.
    #[test]
    fn nearest_skips_only_hopeless_candidates() {
        let full = |word: &str, candidates: &[&'static str]| {
            let word = word.to_ascii_lowercase();
            candidates
                .iter()
                .map(|c| {
                    let lower = c.to_ascii_lowercase();
                    let dl = strsim::normalized_damerau_levenshtein(&word, &lower);
                    let jw = strsim::jaro_winkler(&word, &lower);
                    (*c, dl, jw)
                })
                .filter(|&(_, dl, jw)| dl >= 0.7 || jw >= 0.9)
                .max_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)))
                .map(|(c, _, _)| c)
        };
        let names: Vec<&'static str> = crate::syscalls::ALL.iter().map(|(n, _)| *n).collect();
        for name in names.iter().step_by(41) {
            let n = name.len();
            for extra in [0, 1, 2, n - 1, n, n + 1, n + 2] {
                // The name with a tail: a shared prefix is what Jaro-Winkler rewards most.
                let word = format!("{name}{}", "x".repeat(extra));
                assert_eq!(nearest(&word, names.iter().copied()), full(&word, &names));
            }
        }
    }

    #[test]
    fn one_of_reads_like_prose() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(one_of(&s(&["a"])), "a");
        assert_eq!(one_of(&s(&["a", "b"])), "a or b");
        assert_eq!(one_of(&s(&["a", "b", "c"])), "a, b or c");
        assert_eq!(all_of(&s(&["a", "b", "c"])), "a, b and c");
    }
}
