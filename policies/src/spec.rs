//! The launch spec: a policy compiled for one launch, with every path resolved and every layer's
//! rules in the form that layer consumes. The supervisor builds it; the shim receives it over an
//! inherited pipe (never argv or the environment) and applies it without further decisions.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Inside the sandbox the plugin runs as this uid and gid, never 0.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    /// The program and its arguments; `argv[0]` is the path executed inside the sandbox.
    pub argv: Vec<String>,
    /// The complete environment of the plugin (nothing is inherited implicitly).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    /// Bind mounts into the fresh root, parents before children.
    pub mounts: Vec<MountSpec>,
    /// The private tmpfs at /tmp, if the policy grants `$TMP`.
    pub tmp: Option<TmpSpec>,
    pub rlimits: Vec<RlimitSpec>,
    pub landlock: LandlockSpec,
    pub seccomp: SeccompSpec,
    pub network: NetworkSpec,
    pub resources: ResourceSpec,
    pub enforce: bool,
    /// File descriptors (in the shim) that survive into the plugin besides 0, 1 and 2.
    pub keep_fds: Vec<i32>,
    /// Host paths the policy declares `absent`: hidden like every path it does not grant, but
    /// looking for one is not a violation. Only the monitors read this.
    #[serde(default)]
    pub absent: Vec<PathBuf>,
    /// `[ipc]`: which unix sockets the plugin may reach. Only the supervisor reads this (the
    /// kernel programs and the launch check of sockets in the granted trees).
    #[serde(default)]
    pub ipc: IpcSpec,
    /// Armed: the shim applies every layer but seccomp, then waits on its spec pipe for an
    /// [`ExecRequest`] (the rest of the argv), and only then installs seccomp and executes. End
    /// of file instead retires the sandbox (the shim exits 0, nothing executed). The daemon keeps
    /// such sandboxes ready for per-call plugins.
    #[serde(default)]
    pub armed: bool,
}

/// What an armed shim waits for on [`SHIM_SPEC_FD`], framed like the spec (a little-endian u64
/// length, then JSON): arguments appended to the spec's argv.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub args: Vec<String>,
}

/// The longest single argument execve takes (the kernel's MAX_ARG_STRLEN, 32 pages): a per-call
/// payload is one argument.
pub const MAX_ARG_BYTES: usize = 32 * 4096 - 1;

/// `[ipc]` resolved for one launch. Paths are as the plugin names them inside the sandbox, which
/// for a bind is the host path too (every bind lands at its source's path; `$TMP` is `/tmp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct IpcSpec {
    /// Pathname sockets the plugin may connect and send to, besides those below `writable`.
    pub connect: Vec<PathBuf>,
    /// The sandbox's writable trees (`/tmp` and each `write` grant): sockets below them are the
    /// sandbox's own, or could be (it may unlink one and bind its own in its place).
    pub writable: Vec<PathBuf>,
    /// The sandbox's read-only trees (every other grant, and `/proc`, whose
    /// `/proc/self/root/...` leads back to the root): a socket below one of them is the host's
    /// unless listed. A name below no grant names nothing in the sandbox (ENOENT).
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Whether the plugin may bind abstract names.
    pub bind_abstract: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Exec,
    Write,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    /// The host path.
    pub source: PathBuf,
    /// Where it appears in the sandbox (absolute).
    pub target: PathBuf,
    pub access: Access,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TmpSpec {
    pub size_bytes: u64,
    /// The policy's `tmp_exec`: mounted without `noexec`, and Landlock grants execute below it.
    #[serde(default)]
    pub exec: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RlimitResource {
    Nofile,
    Fsize,
    Core,
    Nproc,
    Sigpending,
    Msgqueue,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RlimitSpec {
    pub resource: RlimitResource,
    pub limit: u64,
}

/// Landlock rules in terms of paths inside the new root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LandlockSpec {
    pub paths: Vec<(PathBuf, Access)>,
    /// Whether TCP bind/connect are restricted at all (always, from ABI 4).
    pub restrict_tcp: bool,
    pub tcp_bind_ports: Vec<u16>,
    pub tcp_connect_ports: Vec<u16>,
    /// Paths of `paths` whose rule also grants execute (the private /tmp under `tmp_exec`).
    #[serde(default)]
    pub also_exec: Vec<PathBuf>,
}

/// A compiled classic-BPF seccomp program for x86_64 (architecture checked), as (code, jt, jf, k).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SeccompSpec {
    pub program: Vec<(u16, u8, u8, u32)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum NetworkSpec {
    /// A fresh, empty network namespace.
    Isolated,
    /// The host's network namespace (restricted by Landlock, and later by cgroup BPF).
    Host,
}

/// Limits applied by the supervisor through the sandbox's cgroup and timer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceSpec {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Microseconds of CPU per 100 ms period.
    pub cpu_quota_us: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// The shim reads the [`LaunchSpec`] from this descriptor: its length as a little-endian u64, then
/// the spec as JSON.
pub const SHIM_SPEC_FD: i32 = 3;
/// The shim writes [`ShimReport`] lines here. The descriptor is close-on-exec, so end of file
/// without a `Failed` line means the plugin was executed.
pub const SHIM_REPORT_FD: i32 = 4;
/// The plugin's end of its JSON-RPC socket when the daemon hosts it (`STOCKADE_RPC_FD` in its
/// environment names it). Above the shim's own descriptors, so the three never collide.
pub const PLUGIN_RPC_FD: i32 = 5;
/// The highest descriptor number the launch places on purpose: everything the supervisor passes
/// is moved above it before the clone.
pub const HIGHEST_FIXED_FD: i32 = PLUGIN_RPC_FD;
/// The shim's exit status when a set-up step failed (the report says which).
pub const SHIM_SETUP_FAILED: i32 = 125;
/// The shim's exit status when the command could not be executed.
pub const SHIM_EXEC_FAILED: i32 = 127;

/// One line from the shim to the supervisor about the set-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShimReport {
    /// Landlock was applied with this ABI (0: unavailable) and this enforcement status.
    Landlock { abi: i32, status: String },
    /// `memfd_noexec` could (or could not) be set for the sandbox's pid namespace.
    MemfdNoexec { enforced: bool },
    /// A set-up step failed; nothing of the plugin ran.
    Failed {
        step: String,
        message: String,
        errno: i32,
    },
    /// The command could not be executed.
    ExecFailed { path: String, errno: i32 },
    /// An armed spec's layers are all up but seccomp: the shim waits for its exec request.
    Armed,
}
