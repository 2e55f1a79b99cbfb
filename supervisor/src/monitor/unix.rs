//! `[ipc]` in the kernel: the cgroup `connect_unix` and `sendmsg_unix` programs (kernel 6.7+).

use crate::probe::Probe;

/// Whether the cgroup unix socket hooks load on this kernel (`stockade doctor`'s probe).
pub fn hooks_load(probe: &Probe) -> bool {
    probe
        .bpf
        .iter()
        .any(|(ty, r)| ty.contains("connect_unix") && r.is_ok())
}

/// Whether binding an abstract name is refused on this kernel: by the BPF LSM `socket_bind`
/// program, where LSM programs load.
pub fn abstract_bind_refused(probe: &Probe) -> bool {
    probe
        .bpf
        .iter()
        .any(|(ty, r)| ty.starts_with("lsm") && r.is_ok())
}

/// Whether `monitor` judges unix socket connects in the kernel for the sandboxes it arms.
pub fn armed_by(_monitor: &super::Monitor) -> bool {
    false
}
