//! Policies come from plugin authors, so checking one must be bounded work: a large valid policy
//! parses and compiles, and every limit of the language (file size, list lengths, path length,
//! errors reported) is refused or applied with a message and a hint.

use stockade_policy::diagnostics::{MAX_DIAGNOSTICS, MAX_POLICY_BYTES};
use stockade_policy::parse::{MAX_PATHS_PER_LIST, MAX_PATH_BYTES, MAX_SYSCALLS_PER_LIST};
use stockade_policy::{parse_policy, Access, Diagnostic, LaunchContext};

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse_policy(src, "policy.toml") {
        Ok(_) => panic!("policy accepted"),
        Err(d) => d.0,
    }
}

fn quoted(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(",\n")
}

/// 10,000 paths over the three lists, none inside another of a conflicting list, the size of a
/// generated policy an author might really ship (about 220 KB). Checking it once compared every
/// path with every other (seconds); now each check looks up a path's ancestors.
#[test]
fn ten_thousand_paths_parse_and_compile() {
    let (mut read, mut exec, mut write) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..10_000 {
        match i % 3 {
            0 => read.push(format!("/srv/data/r{i:05}/f")),
            1 => exec.push(format!("/opt/tools/x{i:05}/bin")),
            _ => write.push(format!("/var/spool/w{i:05}")),
        }
    }
    // A few that nest within their own list, which is allowed.
    read.push("/srv/data".into());
    exec.push("/opt/tools".into());
    let text = format!(
        "version = 1\n[filesystem]\nread = [\n{}\n]\nexec = [\n{}\n]\nwrite = [\n{}\n]\n",
        quoted(&read),
        quoted(&exec),
        quoted(&write)
    );
    assert!(text.len() < MAX_POLICY_BYTES);
    let policy = parse_policy(&text, "big.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(policy.filesystem.read.len(), read.len());
    let ctx = LaunchContext {
        argv: vec!["/opt/tools/x00001/bin/run".into()],
        hostname: "plugin".into(),
        ..Default::default()
    };
    let spec = policy.compile(&ctx).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.mounts.len(), read.len() + exec.len() + write.len());
    assert_eq!(
        spec.mounts
            .iter()
            .filter(|m| m.access == Access::Write)
            .count(),
        write.len()
    );
}

#[test]
fn errors_are_capped_with_a_count_of_the_rest() {
    // 250 unknown system calls, one per line: the first MAX_DIAGNOSTICS are reported, then one
    // line at the next error says how many more there were.
    let names: Vec<String> = (0..250).map(|i| format!("nosuch{i}")).collect();
    let text = format!("[syscalls]\nallow = [\n{}\n]\n", quoted(&names));
    let all = errors(&text);
    assert_eq!(all.len(), MAX_DIAGNOSTICS + 1);
    assert!(all[..MAX_DIAGNOSTICS]
        .iter()
        .all(|d| d.message.starts_with("unknown system call")));
    assert_eq!(all[MAX_DIAGNOSTICS - 1].line, MAX_DIAGNOSTICS + 2);
    let last = &all[MAX_DIAGNOSTICS];
    assert_eq!(
        last.message,
        "150 more errors from here on not shown: at most 100 are reported"
    );
    assert_eq!(
        last.hint.as_deref(),
        Some("fix the errors above and check the policy again to see the rest")
    );
    assert_eq!((last.line, last.column), (MAX_DIAGNOSTICS + 3, 1));

    // Exactly the cap: no summary.
    let names: Vec<String> = (0..MAX_DIAGNOSTICS).map(|i| format!("nosuch{i}")).collect();
    let text = format!("[syscalls]\nallow = [\n{}\n]\n", quoted(&names));
    assert_eq!(errors(&text).len(), MAX_DIAGNOSTICS);
}

#[test]
fn many_errors_on_one_line_stay_cheap() {
    // 100,000 errors on one 1 MB line: each position used to be counted from the line's start.
    let names: Vec<String> = (0..100_000).map(|i| format!("\"{i}\"")).collect();
    let text = format!("[syscalls]\nallow = [{}]\n", names.join(","));
    assert!(text.len() < MAX_POLICY_BYTES);
    // Over the list limit: one error, the entries unchecked.
    let all = errors(&text);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].message,
        format!("100000 system calls in `allow`: at most {MAX_SYSCALLS_PER_LIST} per list")
    );
    // Paths have a higher limit: 10,000 duplicates on one line, every one an error.
    let paths = vec!["\"/a\""; MAX_PATHS_PER_LIST];
    let text = format!("[filesystem]\nread = [{}]\n", paths.join(","));
    let all = errors(&text);
    assert_eq!(all.len(), MAX_DIAGNOSTICS + 1);
    assert_eq!(all[0].message, "`/a` is listed twice in `read`");
    assert_eq!((all[0].line, all[0].column), (2, 14));
    assert_eq!(
        all[MAX_DIAGNOSTICS].message,
        format!(
            "{} more errors from here on not shown: at most 100 are reported",
            MAX_PATHS_PER_LIST - 1 - MAX_DIAGNOSTICS
        )
    );
}

#[test]
fn lists_longer_than_their_limit_are_refused() {
    let paths: Vec<String> = (0..=MAX_PATHS_PER_LIST)
        .map(|i| format!("/p/{i}"))
        .collect();
    let text = format!("[filesystem]\nread = [{}]\n", quoted(&paths));
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0].message,
        "10001 paths in `read`: at most 10000 per list"
    );
    assert_eq!(
        all[0].hint.as_deref(),
        Some("grant a directory above the paths rather than each of them")
    );
    assert_eq!((all[0].line, all[0].column), (2, 8));

    let names = vec!["read".to_string(); MAX_SYSCALLS_PER_LIST + 1];
    let text = format!("[syscalls]\ndeny = [{}]\n", quoted(&names));
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0].message,
        "1025 system calls in `deny`: at most 1024 per list"
    );
    assert_eq!(all[0].hint.as_deref(), Some("list each system call once"));
}

#[test]
fn paths_longer_than_path_max_are_refused() {
    let at_limit = format!("/{}", "a/".repeat((MAX_PATH_BYTES - 1) / 2));
    assert!(at_limit.len() <= MAX_PATH_BYTES);
    let text = format!("[filesystem]\nread = [\"{at_limit}\"]\n");
    assert!(parse_policy(&text, "p.toml").is_ok());

    let long = format!("/{}", "b".repeat(MAX_PATH_BYTES));
    let text = format!("[filesystem]\nread = [\"{long}\"]\n");
    let all = errors(&text);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].message,
        format!(
            "path `/{}…` is 4096 bytes long: at most 4095",
            "b".repeat(31)
        )
    );
    assert_eq!(
        all[0].hint.as_deref(),
        Some("the kernel refuses longer paths (PATH_MAX is 4096 bytes with the final NUL)")
    );
}

#[test]
fn a_long_unknown_syscall_name_gets_no_suggestion() {
    // Suggestions cost the product of the lengths; a name far longer than every system call's
    // cannot be a typo of one, and is not compared.
    let text = format!("[syscalls]\nallow = [\"{}\"]\n", "q".repeat(200_000));
    let all = errors(&text);
    assert_eq!(all.len(), 1);
    assert!(all[0].message.starts_with("unknown system call `qqq"));
    assert_eq!(
        all[0].hint.as_deref(),
        Some("names are those of x86_64 (`man 2 syscalls`), as listed in policies/src/syscalls.rs")
    );
    // A short typo still gets one.
    let all = errors("[syscalls]\nallow = [\"ptrcae\"]\n");
    assert_eq!(all[0].hint.as_deref(), Some("did you mean `ptrace`?"));
}

#[test]
fn text_longer_than_the_file_limit_is_refused_unread() {
    let text = format!("# {}\n", "x".repeat(MAX_POLICY_BYTES));
    let all = errors(&text);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].message,
        format!(
            "the policy is {} bytes: at most 1048576 (1 MiB)",
            MAX_POLICY_BYTES + 3
        )
    );
    assert_eq!((all[0].line, all[0].column), (1, 1));
}
