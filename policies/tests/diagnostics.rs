//! Every error that docs/policy.md documents: a minimal policy, and the exact message, hint, line
//! and column it produces. Columns are 1-based and point at the start of the offending key or value.

use stockade_policy::parse_policy;

mod common;
use common::{diagnostics, error};

// ---- syntax and the top level ----

#[test]
fn toml_syntax_error() {
    error(
        "[filesystem]\nread = [\"/usr\"\nwrite = []\n",
        3,
        1,
        "invalid TOML: invalid array: expected `]`",
        Some("fix the syntax first; nothing else in the file was checked"),
    );
    error(
        "[resources]\npids = 1\npids = 2\n",
        3,
        1,
        "invalid TOML: duplicate key `pids` in table `resources`",
        Some("fix the syntax first; nothing else in the file was checked"),
    );
}

#[test]
fn version() {
    error(
        "version = 2\n",
        1,
        11,
        "unsupported policy version 2",
        Some("this stockade understands version 1"),
    );
    error(
        "version = \"1\"\n",
        1,
        11,
        "`version` must be an integer, found a string",
        None,
    );
}

#[test]
fn unknown_keys() {
    error(
        "descripton = \"x\"\n",
        1,
        1,
        "unknown key `descripton`",
        Some("did you mean `description`?"),
    );
    error(
        "memory = \"1G\"\n",
        1,
        1,
        "unknown key `memory`",
        Some("`memory` belongs in [resources]"),
    );
    error(
        "[resources]\nbananas = 1\n",
        2,
        1,
        "unknown key `bananas` in [resources]",
        Some("the keys of [resources] are memory, pids, cpu, nofile, fsize, tmp_size and timeout"),
    );
    error(
        "[filesystme]\n",
        1,
        2,
        "unknown key `filesystme`",
        Some("did you mean `filesystem`?"),
    );
    error(
        "[network]\nmode = \"allow\"\nconnect = [{ address = \"::/0\", port = 443, protcol = \"udp\" }]\n",
        3,
        44,
        "unknown key `protcol` in a network rule",
        Some("did you mean `protocol`?"),
    );
}

#[test]
fn wrong_types() {
    error(
        "filesystem = 3\n",
        1,
        14,
        "`filesystem` must be a table, found an integer",
        None,
    );
    error(
        "description = [\"x\"]\n",
        1,
        15,
        "`description` must be a string, found an array",
        None,
    );
    error(
        "[resources]\npids = \"64\"\n",
        2,
        8,
        "`pids` must be an integer, found a string",
        None,
    );
    error(
        "[resources]\nmemory = true\n",
        2,
        10,
        "`memory` must be a size (bytes, or a string like \"256M\"), found a boolean",
        None,
    );
    error(
        "[resources]\ntimeout = 1.5\n",
        2,
        11,
        "`timeout` must be a duration (seconds, or a string like \"30s\"), found a float",
        None,
    );
    error(
        "[syscalls]\ndeny_action = 1\n",
        2,
        15,
        "`deny_action` must be a string (\"eperm\" or \"kill\"), found an integer",
        None,
    );
}

#[test]
fn wrong_enum_values() {
    error(
        "[network]\nmode = \"alow\"\n",
        2,
        8,
        "`mode` must be \"none\" or \"allow\", found \"alow\"",
        Some("did you mean \"allow\"?"),
    );
    error(
        "[syscalls]\nprofile = \"paranoid\"\n",
        2,
        11,
        "`profile` must be \"default\" or \"strict\", found \"paranoid\"",
        None,
    );
    error(
        "[enforcement]\naction = \"kil\"\n",
        2,
        10,
        "`action` must be \"kill\" or \"report\", found \"kil\"",
        Some("did you mean \"kill\"?"),
    );
}

// ---- [filesystem] ----

#[test]
fn path_lists_must_be_arrays_of_strings() {
    error(
        "[filesystem]\nread = \"/usr\"\n",
        2,
        8,
        "`read` must be an array of strings, found a string",
        None,
    );
    error(
        "[filesystem]\nread = [\"/usr\", 3]\n",
        2,
        17,
        "entries of `read` must be strings, found an integer",
        None,
    );
}

#[test]
fn bad_paths() {
    error(
        "[filesystem]\nread = [\"\"]\n",
        2,
        9,
        "empty path",
        Some("write an absolute path like \"/usr/lib\" or a variable like \"$PLUGIN_DIR\""),
    );
    error(
        "[filesystem]\nread = [\"usr/lib\"]\n",
        2,
        9,
        "path `usr/lib` is relative: paths must be absolute or start with $PLUGIN_DIR, $STATE_DIR or $TMP",
        Some("write `/usr/lib` for a host path, or `$PLUGIN_DIR/usr/lib` for one in the plugin's directory"),
    );
    error(
        "[filesystem]\nread = [\"~/.config\"]\n",
        2,
        9,
        "path `~/.config` is relative: paths must be absolute or start with $PLUGIN_DIR, $STATE_DIR or $TMP",
        Some("`~` is not expanded; write the full path"),
    );
    error(
        "[filesystem]\nexec = [\"$PLUGINDIR\"]\n",
        2,
        9,
        "unknown variable `$PLUGINDIR`",
        Some("did you mean `$PLUGIN_DIR`?"),
    );
    error(
        "[filesystem]\nread = [\"$HOME/.config\"]\n",
        2,
        9,
        "unknown variable `$HOME` in `$HOME/.config`",
        Some("the variables are $PLUGIN_DIR, $STATE_DIR and $TMP"),
    );
    error(
        "[filesystem]\nexec = [\"$PLUGIN_DIRbin\"]\n",
        2,
        9,
        "unexpected `bin` after `$PLUGIN_DIR` in `$PLUGIN_DIRbin`",
        Some("separate the rest of the path with `/`: `$PLUGIN_DIR/bin`"),
    );
    error(
        "[filesystem]\nread = [\"/srv/$STATE_DIR\"]\n",
        2,
        9,
        "`$` inside `/srv/$STATE_DIR`: a variable may only start a path",
        Some("the variables are $PLUGIN_DIR, $STATE_DIR and $TMP, at the start of a path"),
    );
    error(
        "[filesystem]\nread = [\"$PLUGIN_DIR/../etc\"]\n",
        2,
        9,
        "path `$PLUGIN_DIR/../etc` contains `..`",
        Some("`..` is not resolved (a symlink on the host would change its meaning); write the path it leads to"),
    );
    error(
        "[filesystem]\nread = [\"/a\\u0000\"]\n",
        2,
        9,
        "path `/a\\u{0}` contains a NUL byte",
        None,
    );
}

#[test]
fn duplicate_paths() {
    error(
        "[filesystem]\nread = [\"/etc/hosts\",\n  \"/etc//hosts/\"]\n",
        3,
        3,
        "`/etc/hosts` is listed twice in `read`",
        Some("first listed at line 2, column 9"),
    );
}

#[test]
fn tmp_only_in_write() {
    error(
        "[filesystem]\nexec = [\"$TMP\"]\n",
        2,
        9,
        "`$TMP` is only allowed in `write`, not in `exec`",
        Some("$TMP is the sandbox's private tmpfs at /tmp: always writable, executable only with `tmp_exec = true`"),
    );
}

#[test]
fn reserved_directories() {
    error(
        "[filesystem]\nread = [\"/proc/cpuinfo\"]\n",
        2,
        9,
        "`/proc/cpuinfo` is inside /proc, which the sandbox builds itself",
        Some("/proc is always present with a fixed content; see docs/policy.md"),
    );
    error(
        "[filesystem]\nwrite = [\"$TMP\"]\nread = [\"/tmp/cache\"]\n",
        3,
        9,
        "`/tmp/cache` in `read` is ambiguous: with `$TMP`, /tmp in the sandbox is its own private tmpfs",
        Some("name host directories outside /tmp, or pass them as $PLUGIN_DIR or $STATE_DIR"),
    );
}

#[test]
fn write_xor_exec() {
    error(
        "[filesystem]\nwrite = [\"$STATE_DIR\"]\nexec = [\"$STATE_DIR\"]\n",
        3,
        9,
        "`$STATE_DIR` is in both `write` and `exec`",
        Some("W^X: a path may be writable or executable, not both; first listed at line 2, column 10"),
    );
    let nested =
        "W^X: Landlock rights reach everything below a path, so the plugin could write a file \
                  there and execute it; separate the two trees";
    error(
        "[filesystem]\nexec = [\"/opt/app\"]\nwrite = [\"/opt/app/data\"]\n",
        3,
        10,
        "writable path `/opt/app/data` is inside executable path `/opt/app`",
        Some(nested),
    );
    error(
        "[filesystem]\nwrite = [\"$STATE_DIR\"]\nexec = [\"$STATE_DIR/bin\"]\n",
        3,
        9,
        "executable path `$STATE_DIR/bin` is inside writable path `$STATE_DIR`",
        Some(nested),
    );
    error(
        "[filesystem]\nexec = [\"/\"]\nwrite = [\"$TMP\"]\n",
        3,
        10,
        "writable path `$TMP` is inside executable path `/`",
        Some(nested),
    );
}

#[test]
fn read_and_exec_together_are_fine() {
    let src =
        "[filesystem]\nread = [\"/usr/lib\"]\nexec = [\"/usr/lib\"]\nwrite = [\"$STATE_DIR\"]\n";
    assert!(parse_policy(src, "p").is_ok());
}

#[test]
fn tmp_size_needs_tmp() {
    error(
        "[resources]\ntmp_size = \"16M\"\n",
        2,
        1,
        "`tmp_size` is set but the policy grants no private /tmp",
        Some("add \"$TMP\" to `write` in [filesystem], or remove `tmp_size`"),
    );
}

#[test]
fn tmp_exec_needs_tmp_and_a_boolean() {
    error(
        "[filesystem]\ntmp_exec = true\n",
        2,
        1,
        "`tmp_exec = true` but the policy grants no private /tmp",
        Some("add \"$TMP\" to `write` in [filesystem], or remove `tmp_exec`"),
    );
    error(
        "[filesystem]\nwrite = [\"$TMP\"]\ntmp_exec = \"yes\"\n",
        3,
        12,
        "`tmp_exec` must be a boolean (true or false), found a string",
        None,
    );
    // false without $TMP says nothing; true with it compiles to an executable /tmp.
    assert!(parse_policy("[filesystem]\ntmp_exec = false\n", "p").is_ok());
    let p = parse_policy("[filesystem]\nwrite = [\"$TMP\"]\ntmp_exec = true\n", "p").unwrap();
    assert!(p.filesystem.tmp_exec);
}

// ---- [network] ----

const ALLOW: &str = "[network]\nmode = \"allow\"\n";

fn rule(body: &str) -> String {
    format!("{ALLOW}connect = [{body}]\n")
}

#[test]
fn rules_need_mode_allow() {
    let hint = Some("set mode = \"allow\" in [network]");
    error(
        "[network]\nmode = \"none\"\nconnect = [{ address = \"::/0\", port = 443 }]\n",
        3,
        1,
        "`connect` rules contradict `mode = \"none\"`: the sandbox has no network",
        hint,
    );
    // mode defaults to "none".
    error(
        "[network]\nbind = [{ address = \"127.0.0.1\", port = 8080 }]\n",
        2,
        1,
        "`bind` rules contradict `mode = \"none\"`: the sandbox has no network",
        hint,
    );
}

#[test]
fn rules_must_be_tables() {
    let hint = Some("write rules like { protocol = \"tcp\", address = \"0.0.0.0/0\", port = 443 }");
    error(
        &format!("{ALLOW}connect = \"0.0.0.0/0:443\"\n"),
        3,
        11,
        "`connect` must be an array of tables, found a string",
        hint,
    );
    error(
        &rule("\"0.0.0.0/0:443\""),
        3,
        12,
        "entries of `connect` must be tables, found a string",
        hint,
    );
}

#[test]
fn rule_fields() {
    error(
        &rule("{ port = 443 }"),
        3,
        12,
        "network rule has no `address`",
        Some("add address = \"0.0.0.0/0\" (or \"::/0\") to match any address"),
    );
    error(
        &rule("{ address = \"::/0\" }"),
        3,
        12,
        "network rule has neither `port` nor `ports`",
        Some("add port = 443 for one port, or ports = \"8000-8080\" for a range"),
    );
    error(
        &rule("{ address = \"::/0\", port = 443, ports = \"8000-8080\" }"),
        3,
        44,
        "a rule takes `port` or `ports`, not both (remove `ports`)",
        Some("`port = 443` for one port, `ports = \"8000-8080\"` for a range"),
    );
    error(
        &rule("{ protocol = \"sctp\", address = \"::/0\", port = 443 }"),
        3,
        25,
        "`protocol` must be \"tcp\" or \"udp\", found \"sctp\"",
        None,
    );
}

#[test]
fn addresses() {
    error(
        &rule("{ address = \"example.com\", port = 443 }"),
        3,
        24,
        "invalid address \"example.com\"",
        Some("host names are not resolved; write an IP address or a CIDR network like \"10.0.0.0/8\""),
    );
    error(
        &rule("{ address = \"10.0.0\", port = 443 }"),
        3,
        24,
        "invalid address \"10.0.0\"",
        Some("write an IPv4 or IPv6 address, optionally with a prefix length: \"10.0.0.0/8\", \"::/0\""),
    );
    error(
        &rule("{ address = \"10.0.0.0/33\", port = 443 }"),
        3,
        24,
        "prefix length 33 is too long for an IPv4 address (at most 32)",
        None,
    );
    error(
        &rule("{ address = \"::/129\", port = 443 }"),
        3,
        24,
        "prefix length 129 is too long for an IPv6 address (at most 128)",
        None,
    );
    error(
        &rule("{ address = \"10.0.0.0/x\", port = 443 }"),
        3,
        24,
        "invalid prefix length \"x\" in \"10.0.0.0/x\"",
        Some("a prefix length is a number from 0 to 32"),
    );
    error(
        &rule("{ address = \"10.1.2.3/8\", port = 443 }"),
        3,
        24,
        "\"10.1.2.3/8\" has host bits set",
        Some("did you mean \"10.0.0.0/8\"?"),
    );
}

/// The column of `needle` in the `connect` line that [`rule`] writes around `body`.
fn column_in_rule(body: &str, needle: &str) -> usize {
    "connect = [".len() + body.find(needle).expect("needle in body") + 1
}

#[test]
fn exclusions() {
    let check = |body: &str, needle: &str, message: &str, hint: Option<&str>| {
        error(&rule(body), 3, column_in_rule(body, needle), message, hint);
    };
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = [\"loopbak\"] }";
    check(
        body,
        "\"loopbak\"",
        "unknown address set \"loopbak\"",
        Some("did you mean \"loopback\"?"),
    );
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = [\"internet\"] }";
    check(
        body,
        "\"internet\"",
        "unknown address set \"internet\"",
        Some(
            "the sets are \"loopback\", \"link-local\", \"private\", \"unspecified\", \
             \"multicast\" and \"broadcast\"; or write an address or CIDR network like \"10.0.0.0/8\"",
        ),
    );
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = [\"10.1.2.3/8\"] }";
    check(
        body,
        "\"10.1.2.3/8\"",
        "\"10.1.2.3/8\" has host bits set",
        Some("did you mean \"10.0.0.0/8\"?"),
    );
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = [\"private\", \"private\"] }";
    check(
        body,
        "\"private\"]",
        "`private` is listed twice in `except`",
        Some("first listed at line 3, column 59"),
    );
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = [\"::1\"] }";
    check(
        body,
        "\"::1\"",
        "\"::1/128\" is IPv6 but the rule's address \"0.0.0.0/0\" is IPv4: it excludes nothing",
        Some("put it on a rule of its own family"),
    );
    let body = "{ address = \"10.0.0.0/8\", port = 443, except = [\"192.168.0.0/16\"] }";
    check(
        body,
        "\"192.168.0.0/16\"",
        "\"192.168.0.0/16\" lies outside the rule's address \"10.0.0.0/8\": it excludes nothing",
        Some("remove it, or correct the rule's address"),
    );
    let body = "{ address = \"10.1.0.0/16\", port = 443, except = [\"private\"] }";
    check(
        body,
        "\"private\"",
        "the set \"private\" (10.0.0.0/8) covers the rule's whole address \"10.1.0.0/16\": the rule \
         would allow nothing",
        Some("remove the rule, or exclude a smaller network"),
    );
    let body = "{ address = \"::/0\", port = 443, except = [\"::ffff:127.0.0.0/104\"] }";
    check(
        body,
        "\"::ffff:",
        "\"::ffff:127.0.0.0/104\" is a v4-mapped IPv6 address: such destinations are judged by the \
         IPv4 rules",
        Some("exclude \"127.0.0.0/8\" on the IPv4 rule"),
    );
    let body = "{ address = \"0.0.0.0/0\", port = 443, except = \"loopback\" }";
    check(
        body,
        "\"loopback\"",
        "`except` must be an array of strings, found a string",
        None,
    );
}

#[test]
fn exclusion_lists_are_bounded() {
    // 33 entries in one rule: one error at the list, the entries unchecked.
    let many: Vec<String> = (0..33).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let body = format!(
        "{{ address = \"0.0.0.0/0\", port = 443, except = [{}] }}",
        many.join(", ")
    );
    error(
        &rule(&body),
        3,
        column_in_rule(&body, "["),
        "33 entries in `except`: at most 32 per list",
        Some("exclude wider networks, or name a set (\"private\" is five networks)"),
    );
    // 33 different networks over two rules of one list: one error at the list.
    let first: Vec<String> = (0..17).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let second: Vec<String> = (17..33).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let body = format!(
        "{{ address = \"0.0.0.0/0\", port = 443, except = [{}] }}, \
         {{ address = \"0.0.0.0/0\", port = 80, except = [{}] }}",
        first.join(", "),
        second.join(", ")
    );
    error(
        &rule(&body),
        3,
        11,
        "the `connect` rules exclude 33 different networks: at most 32 fit the kernel's exclusion \
         list",
        Some("a network that several rules exclude counts once; exclude wider networks"),
    );
    // The same networks on every rule count once.
    let sets = "[\"loopback\", \"link-local\", \"private\", \"unspecified\", \"multicast\", \"broadcast\"]";
    let rules: Vec<String> = (1..=30)
        .map(|p| format!("{{ address = \"0.0.0.0/0\", port = {p}, except = {sets} }}"))
        .collect();
    assert!(parse_policy(&rule(&rules.join(", ")), "policy.toml").is_ok());
}

#[test]
fn ports() {
    error(
        &rule("{ address = \"::/0\", port = 0 }"),
        3,
        39,
        "`port` must be between 1 and 65535, found 0",
        None,
    );
    error(
        &rule("{ address = \"::/0\", port = 65536 }"),
        3,
        39,
        "`port` must be between 1 and 65535, found 65536",
        None,
    );
    error(
        &rule("{ address = \"::/0\", port = \"443\" }"),
        3,
        39,
        "`port` must be an integer, found a string",
        Some("write a range as ports = \"8000-8080\", a single port as a number"),
    );
    error(
        &rule("{ address = \"::/0\", ports = 443 }"),
        3,
        40,
        "`ports` must be a string like \"8000-8080\", found an integer",
        Some("use `port = N` for a single port"),
    );
    error(
        &rule("{ address = \"::/0\", ports = \"8000:8080\" }"),
        3,
        40,
        "invalid port range \"8000:8080\"",
        Some("write two ports separated by `-`, like \"8000-8080\""),
    );
    error(
        &rule("{ address = \"::/0\", ports = \"8080-8000\" }"),
        3,
        40,
        "port range \"8080-8000\" is reversed",
        Some("write \"8000-8080\""),
    );
    error(
        &rule("{ address = \"::/0\", ports = \"0-10\" }"),
        3,
        40,
        "a port must be between 1 and 65535, found 0",
        None,
    );
}

// ---- [syscalls] ----

#[test]
fn syscall_names() {
    error(
        "[syscalls]\nallow = [\"ptrce\"]\n",
        2,
        10,
        "unknown system call `ptrce`",
        Some("did you mean `ptrace`?"),
    );
    error(
        "[syscalls]\ndeny = [\"frobnicate\"]\n",
        2,
        9,
        "unknown system call `frobnicate`",
        Some("names are those of x86_64 (`man 2 syscalls`), as listed in policies/src/syscalls.rs"),
    );
    error(
        "[syscalls]\ndeny = [\"kill\", \"kill\"]\n",
        2,
        17,
        "`kill` is listed twice in `deny`",
        Some("first listed at line 2, column 9"),
    );
    error(
        "[syscalls]\nallow = [\"ptrace\"]\ndeny = [\"ptrace\"]\n",
        3,
        9,
        "`ptrace` is in both `allow` and `deny`",
        Some("remove it from one of them; first listed at line 2, column 10"),
    );
}

// ---- [resources] ----

#[test]
fn sizes() {
    let size_hint = Some(
        "write bytes as an integer, or a whole number with a unit: \"512K\", \"256M\", \"1G\" (powers of 1024)",
    );
    error(
        "[resources]\nmemory = \"256X\"\n",
        2,
        10,
        "invalid size \"256X\"",
        size_hint,
    );
    error(
        "[resources]\nmemory = \"1.5G\"\n",
        2,
        10,
        "invalid size \"1.5G\": fractions are not supported",
        Some("use a smaller unit: \"1536M\" rather than \"1.5G\""),
    );
    error(
        "[resources]\nfsize = \"20000000T\"\n",
        2,
        9,
        "size \"20000000T\" is too large",
        None,
    );
    error(
        "[resources]\nmemory = 0\n",
        2,
        10,
        "`memory` must be greater than 0, found 0",
        None,
    );
    error(
        "[resources]\nmemory = \"0M\"\n",
        2,
        10,
        "`memory` must be greater than 0",
        None,
    );
}

#[test]
fn counts() {
    error(
        "[resources]\npids = 0\n",
        2,
        8,
        "`pids` must be at least 1, found 0",
        None,
    );
    error(
        "[resources]\nnofile = 8\n",
        2,
        10,
        "`nofile` must be at least 16, found 8",
        Some("with fewer open files ordinary programs fail before `main` (stdio, the dynamic loader and libc need several)"),
    );
    error(
        "[resources]\nnofile = 2000000\n",
        2,
        10,
        "`nofile` must be at most 1048576, found 2000000",
        Some("with fewer open files ordinary programs fail before `main` (stdio, the dynamic loader and libc need several)"),
    );
}

#[test]
fn cpu() {
    let hint = Some("cpu is a share of one core; the kernel's smallest quota is 1% of a core");
    error(
        "[resources]\ncpu = 0\n",
        2,
        7,
        "`cpu` must be between 0.01 and 1024, found 0",
        hint,
    );
    error(
        "[resources]\ncpu = 2048.0\n",
        2,
        7,
        "`cpu` must be between 0.01 and 1024, found 2048",
        hint,
    );
    error(
        "[resources]\ncpu = \"1\"\n",
        2,
        7,
        "`cpu` must be a number (share of one core), found a string",
        Some("cpu = 0.5 is half a core, cpu = 2 is two cores"),
    );
}

#[test]
fn durations() {
    error(
        "[resources]\ntimeout = \"30\"\n",
        2,
        11,
        "duration \"30\" has no unit",
        Some("write \"30s\" for seconds, or an integer without quotes"),
    );
    error(
        "[resources]\ntimeout = \"2d\"\n",
        2,
        11,
        "invalid duration \"2d\"",
        Some("write a whole number with a unit: \"250ms\", \"30s\", \"5m\", \"1h\", or an integer of seconds"),
    );
    error(
        "[enforcement]\nwindow = \"1.5s\"\n",
        2,
        10,
        "invalid duration \"1.5s\": fractions are not supported",
        Some("use a smaller unit: \"1500ms\" rather than \"1.5s\""),
    );
    error(
        "[resources]\ntimeout = \"0s\"\n",
        2,
        11,
        "`timeout` must be longer than 0",
        None,
    );
    error(
        "[resources]\ntimeout = -5\n",
        2,
        11,
        "`timeout` must be greater than 0, found -5",
        None,
    );
}

// ---- [enforcement] ----

#[test]
fn enforcement() {
    error(
        "[enforcement]\nthreshold = 0\n",
        2,
        13,
        "`threshold` must be at least 1, found 0",
        None,
    );
    error(
        "[enforcement]\nmode = \"monitor\"\naction = \"kill\"\n",
        3,
        1,
        "`action = \"kill\"` contradicts `mode = \"monitor\"`: monitor mode never kills",
        Some("set mode = \"enforce\", or action = \"report\""),
    );
}

// ---- all at once ----

#[test]
fn every_error_of_the_file_is_reported() {
    let src = "\
[filesystem]
read = [\"lib\"]

[resources]
pdis = 64

[syscalls]
deny = [\"ptrace\", \"opne\"]
";
    let all = diagnostics(src);
    let found: Vec<(usize, usize, &str)> = all
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                2,
                9,
                "path `lib` is relative: paths must be absolute or start with $PLUGIN_DIR, $STATE_DIR or $TMP"
            ),
            (5, 1, "unknown key `pdis` in [resources]"),
            (8, 19, "unknown system call `opne`"),
        ]
    );
}

#[test]
fn errors_are_sorted_by_position_and_display_like_a_compiler() {
    // The contradiction is found after the tables are walked, but is reported in file order.
    let src = "[resources]\ntmp_size = \"1M\"\npids = 0\n";
    let all = diagnostics(src);
    let text: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "policy.toml:2:1: error: `tmp_size` is set but the policy grants no private /tmp\n  hint: add \"$TMP\" to `write` in [filesystem], or remove `tmp_size`",
            "policy.toml:3:8: error: `pids` must be at least 1, found 0",
        ]
    );
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes in UTF-8 but one column.
    error(
        "description = \"é\" \n[resources]\nmemory = \"é\"\n",
        3,
        10,
        "invalid size \"é\"",
        Some("write bytes as an integer, or a whole number with a unit: \"512K\", \"256M\", \"1G\" (powers of 1024)"),
    );
    let all = diagnostics("description = \"é\"; pids = 1\n");
    assert_eq!((all[0].line, all[0].column), (1, 18));
}

#[test]
fn read_path_inside_a_writable_path() {
    error(
        "[filesystem]\nwrite = [\"$STATE_DIR\"]\nread = [\"$STATE_DIR/cache/passwd\"]\n",
        3,
        9,
        "`$STATE_DIR/cache/passwd` in `read` lies inside the writable path `$STATE_DIR`",
        Some("the plugin could replace a directory on its path with a symlink before the next launch; grant the writable directory alone"),
    );
}

// ---- [filesystem] absent ----

#[test]
fn absent_takes_host_paths_only() {
    error(
        "[filesystem]\nabsent = [\"$PLUGIN_DIR/x\"]\n",
        2,
        11,
        "`$PLUGIN_DIR/x` in `absent` is not a host path",
        Some(
            "`absent` names host paths the sandbox hides (e.g. \"/usr/local\"); the launch \
             variables are the sandbox's own",
        ),
    );
    error(
        "[filesystem]\nabsent = [\"/usr/local\", \"/usr/local\"]\n",
        2,
        25,
        "`/usr/local` is listed twice in `absent`",
        Some("first listed at line 2, column 11"),
    );
    let policy = parse_policy(
        "[filesystem]\nread = [\"/etc/ld.so.cache\"]\nabsent = [\"/usr/local\", \"/etc/gitconfig\"]\n",
        "policy.toml",
    )
    .expect("valid");
    assert_eq!(policy.filesystem.absent.len(), 2);
    // Grants nothing: no bind, no Landlock rule.
    assert!(policy.filesystem.read.len() == 1 && policy.filesystem.exec.is_empty());
}
