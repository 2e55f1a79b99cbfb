//! What every privileged integration test shares: finding the binaries, a plugin directory with
//! the hostile fixture in it, policies, and running `stockade run --json`.
#![allow(dead_code)] // each test binary uses a different part

pub mod daemon;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// True when the test may run; otherwise prints why it is skipped (never a silent pass).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: {test}: needs root (CI runs the suite as root)");
        return false;
    }
    true
}

/// target/<triple>/debug (the profile directory the tests were built in).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

pub fn stockade() -> PathBuf {
    let path = bin_dir().join("stockade");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Where the tests put what a sandbox must reach (plugin and state directories, sockets). The
/// sandbox's unprivileged uid must be able to traverse every directory above a bound path, and the
/// checkout may live below a private directory (/root), so this is below the world-traversable
/// /tmp rather than in target/. `cargo xtask test` names one for its run (`STOCKADE_TEST_SCRATCH`,
/// `/tmp/stockade-tests-<its pid>`: two runs on one machine do not share it) and removes it at the
/// end; a test binary run alone uses `/tmp/stockade-tests`.
pub fn scratch() -> PathBuf {
    std::env::var_os("STOCKADE_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/stockade-tests"))
}

/// A fresh directory `scratch()/<name>-<pid>`, mode 0755.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = scratch();
    let dir = base.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    set_mode(&base, 0o755);
    set_mode(&dir, 0o755);
    dir
}

/// The tests' `$PLUGIN_DIR`: a copy of the hostile fixture in a directory the sandbox can reach.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("plugin");
        let fixture = PathBuf::from(env!("CARGO_BIN_EXE_stockade-hostile"));
        std::fs::copy(&fixture, dir.join("stockade-hostile")).expect("copy the hostile fixture");
        dir
    })
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The fixture's path, inside the sandbox and out (the plugin dir is bound at the same path).
pub fn hostile() -> String {
    plugin_dir()
        .join("stockade-hostile")
        .to_string_lossy()
        .into_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn default_profile() -> PathBuf {
    repo_root().join("policies/profiles/untrusted-default.toml")
}

/// The untrusted-default profile's filesystem and syscalls with the given extra TOML sections
/// (`[resources]`, `[network]`, ... ; each at most once). Without an `[enforcement]` section the
/// policy enforces every layer but kills only after 1000 violations, so a test can try one
/// forbidden thing and read the fixture's answer; tests of the auto-kill give their own section.
pub fn policy(extra: &str) -> String {
    let mut p = String::from(
        r#"
[filesystem]
exec = ["/usr/bin", "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/bin", "$PLUGIN_DIR"]
read = ["/etc/ld.so.cache"]
write = ["$TMP"]
"#,
    );
    p.push_str(extra);
    if !extra.contains("[enforcement]") {
        p.push_str(LENIENT_ENFORCEMENT);
    }
    p
}

/// Enforce mode (every layer denies, nothing degrades), but the auto-kill only after 1000
/// violations: a test tries one forbidden thing and reads the fixture's answer.
const LENIENT_ENFORCEMENT: &str = r#"
[enforcement]
mode = "enforce"
threshold = 1000
window = "60s"
action = "kill"
"#;

/// Writes `text` to a fresh policy file (one per call: tests run in parallel) and returns its path.
/// Like [`policy`], a text without `[enforcement]` gets one that kills only after 1000 violations.
pub fn policy_file(name: &str, text: &str) -> PathBuf {
    let mut text = text.to_string();
    if !text.contains("[enforcement]") {
        text.push_str(LENIENT_ENFORCEMENT);
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("stockade-tests")
        .join("policies");
    std::fs::create_dir_all(&dir).expect("policy dir");
    // The boot's id too: guests booted side by side share this directory (`cargo xtask vm-test
    // --kernel all`) and may give the same test the same pid.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let path = dir.join(format!(
        "{name}-{}-{}-{n}.toml",
        boot.get(..8).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write policy");
    path
}

pub struct RunResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub summary: serde_json::Value,
}

impl RunResult {
    /// The fixture's one-line verdict.
    pub fn line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// `stockade run --json --policy POLICY --plugin-dir DIR -- ARGS...`
pub fn run(policy: &Path, args: &[&str]) -> RunResult {
    run_with(policy, args, |_| {})
}

pub fn run_with(policy: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> RunResult {
    run_from(plugin_dir(), policy, args, adjust)
}

/// `run_with`, with `dir` as the plugin directory instead of the tests' own (below /tmp).
pub fn run_from(
    dir: &Path,
    policy: &Path,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> RunResult {
    let mut cmd = Command::new(stockade());
    cmd.arg("run")
        .arg("--json")
        .arg("--policy")
        .arg(policy)
        .arg("--plugin-dir")
        .arg(dir);
    cmd.arg("--").args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    adjust(&mut cmd);
    tracked(&mut cmd)
}

/// Runs `cmd` (stdout and stderr piped unless the caller set them) to completion and checks that this invocation left no cgroup behind (its cgroups
/// are named after its pid, so tests running in parallel do not disturb the check).
pub fn tracked(cmd: &mut Command) -> RunResult {
    let child = cmd.spawn().expect("spawn stockade");
    let name = format!("stockade-{}", child.id());
    let result = finish(child.wait_with_output().expect("wait for stockade"));
    let left: Vec<PathBuf> = leftover_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&name))
        .collect();
    assert!(
        left.is_empty(),
        "cgroups left behind: {left:?}\nstderr: {}",
        result.stderr
    );
    result
}

pub fn finish(out: Output) -> RunResult {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stderr
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    RunResult {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr,
        summary,
    }
}

/// Runs the hostile fixture with `args` under `policy` text.
pub fn hostile_run(policy_name: &str, policy_text: &str, args: &[&str]) -> RunResult {
    let file = policy_file(policy_name, policy_text);
    let fixture = hostile();
    let mut full = vec![fixture.as_str()];
    full.extend_from_slice(args);
    run(&file, &full)
}

/// Asserts the fixture's verdict and shows everything on failure.
#[track_caller]
pub fn assert_line(r: &RunResult, expected: &str) {
    assert_eq!(
        r.line(),
        expected,
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// Every cgroup directory named stockade-* below this process's own cgroups.
pub fn leftover_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup") {
            continue;
        }
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        for own_line in own.lines() {
            let path = own_line.splitn(3, ':').nth(2).unwrap_or("/");
            let dir = Path::new(mount_point).join(path.trim_start_matches('/'));
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("stockade-") {
                        found.push(e.path());
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Processes running as one of the sandboxes' host uids.
pub fn sandbox_processes() -> Vec<u32> {
    const BASE: u32 = 0x6000_0000;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if matches!(uid, Some(u) if (BASE..BASE + 65536).contains(&u)) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts that the cgroup with id (inode) `id` no longer exists below our own cgroups.
#[track_caller]
pub fn assert_cgroup_removed(id: u64) {
    assert!(id > 0, "no cgroup id in the summary");
    for dir in leftover_cgroups() {
        let ino = std::fs::metadata(&dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_ne!(
            ino.ok(),
            Some(id),
            "the sandbox's cgroup {} is still there",
            dir.display()
        );
    }
}

/// The Landlock ABI of this kernel (0: none), asked directly rather than through stockade.
pub fn landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attribute only queries the version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

/// A loopback listener that greets every connection ("hello"), for the life of the test.
pub fn greeter(addr: &str) -> u16 {
    use std::io::Write;
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten().take(16) {
            let _ = stream.write_all(b"hello");
        }
    });
    port
}

/// Port rules need Landlock ABI 4 (Linux 6.7) on the host network; below it an enforce-mode
/// sandbox refuses to start. Prints `skipped:` when they cannot be enforced.
pub fn tcp_rules_enforceable(test: &str) -> bool {
    let abi = landlock_abi();
    if abi < 4 {
        println!("skipped: {test}: Landlock ABI {abi} cannot restrict TCP ports (needs 4)");
        return false;
    }
    true
}

/// [`policy`] for a sandbox on the host network (`network` is its `[network]` table's body).
/// Below Landlock ABI 4 (6.1) an enforce-mode one does not start, having no TCP port rules: there
/// it runs in monitor mode, under the same seccomp filter and eBPF programs, which is what the
/// tests using this look at.
pub fn host_network_policy(network: &str) -> String {
    let text = format!("[network]\nmode = \"allow\"\n{network}");
    if landlock_abi() < 4 {
        return policy(&format!(
            "{text}[enforcement]\nmode = \"monitor\"\nthreshold = 1000\nwindow = \"60s\"\naction = \"report\"\n"
        ));
    }
    policy(&text)
}

/// A directory a test made outside the target directory (below /run), removed when the test
/// ends, whether it passed or panicked.
pub struct OwnDir(pub PathBuf);

impl OwnDir {
    /// Creates `path` (and its parents).
    pub fn create(path: PathBuf) -> OwnDir {
        std::fs::create_dir_all(&path).unwrap();
        OwnDir(path)
    }
}

impl std::ops::Deref for OwnDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this runs in the VM runner's emulated guest (`stockade.vm=tcg` on the kernel command
/// line, which `cargo xtask vm-test` adds), where each launch costs seconds: tests that repeat
/// the same launch many times do fewer there.
pub fn emulated_vm() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("stockade.vm=tcg"))
}

/// How long a test waits for something that must happen (an event, a socket): `secs` on a real
/// machine, three times that in the emulated guest, where everything runs 5–20 times slower and
/// the suite's other tests share its two vCPUs. A bound on liveness, never a measured speed.
pub fn patience(secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(if emulated_vm() { secs * 3 } else { secs })
}
