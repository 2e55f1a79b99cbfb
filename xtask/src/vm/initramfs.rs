//! The guest's initramfs: busybox, the kernel modules 9p needs, and an /init that mounts the host's
//! root over 9p, sets up what a production host has (cgroup2 alone with its controllers,
//! securityfs, bpffs, tracefs) and `switch_root`s into it to run the test runner.
//!
//! It is written directly as a newc cpio archive (no cpio tool, no staging directory, and a
//! /dev/console node without mknod), uncompressed: it is a few MiB, and decompressing it under
//! emulation would cost more than reading it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// PID 1 of the initramfs. `/vm-test/config` sets WORKSPACE_DIR, TARGET_DIR and MODULES; `/vm-test/run` is the
/// runner that becomes PID 1 after switch_root (written by vm.rs).
const INIT: &str = r#"#!/bin/busybox sh
# PID 1 of the initramfs that `cargo xtask vm-test` builds (xtask/src/vm/initramfs.rs).
B=/bin/busybox
. /vm-test/config

# The status goes to qemu's isa-debug-exit port (0xf4 = 244): qemu exits with (status << 1) | 1.
report() {
    $B printf "\\$($B printf %o "$1")" | $B dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    # Only reached without the port: power off; the host then reads the status from the console.
    $B poweroff -f
}
fail() {
    echo "@@vm-test init-failed: $*"
    report 100
}

$B mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs"
$B mount -t proc proc /proc || fail "mount proc"
# The accelerator probe (KVM or not) only needs to reach this point.
case " $($B cat /proc/cmdline) " in *" vmtest.probe "*) report 0 ;; esac
# `vm-test --systemd`: the host's systemd becomes PID 1 (below).
SYSTEMD=no
case " $($B cat /proc/cmdline) " in *" vmtest.systemd "*) SYSTEMD=yes ;; esac

# In dependency order (modules.dep is not shipped in the package; vm-test resolved it).
for m in $MODULES; do
    $B insmod "/vm-test/modules/$m.ko" || fail "insmod $m"
done

# The host's root, read-only. cache=loose: nothing changes below / while the suite runs that the
# guest must see, and executables are read many times.
R=/newroot
O=trans=virtio,version=9p2000.L,msize=$MSIZE
$B mount -t 9p -o "$O,ro,cache=loose" hostroot $R || fail "mount the host root over 9p"

$B mount --move /dev $R/dev || fail "move /dev"
$B mount --move /proc $R/proc || fail "move /proc"
$B mkdir -p $R/dev/pts $R/dev/shm
$B mount -t devpts -o mode=620,ptmxmode=666 devpts $R/dev/pts || fail "mount devpts"
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/dev/shm || fail "mount /dev/shm"
$B mount -t sysfs sysfs $R/sys || fail "mount sysfs"
if [ $SYSTEMD = no ]; then
# As systemd mounts it on a unified host: cgroup2 alone, with the controllers enabled for the
# root's children.
$B mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $R/sys/fs/cgroup || fail "mount cgroup2"
for c in cpu memory pids io; do
    if $B grep -qw $c $R/sys/fs/cgroup/cgroup.controllers; then
        echo "+$c" > $R/sys/fs/cgroup/cgroup.subtree_control || fail "enable the $c controller"
    fi
done
$B mount -t securityfs securityfs $R/sys/kernel/security || fail "mount securityfs"
$B mount -t bpf -o mode=700 bpf $R/sys/fs/bpf || fail "mount bpffs"
$B mount -t tracefs tracefs $R/sys/kernel/tracing || fail "mount tracefs"
fi
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/tmp || fail "mount /tmp"
$B mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $R/run || fail "mount /run"
if [ $SYSTEMD = yes ]; then
    # The host's root is read-only here: /etc and /usr get an overlay whose upper half is a tmpfs
    # (/run's), and /var a tmpfs holding a copy of dpkg's database, so that a test can install
    # the Debian package with dpkg and enable its unit without touching the host. /var is no
    # overlay: the daemon's state (its sealed copies of packages) must not be, since the BPF LSM
    # wall misjudges an overlay's backing-file opens (README, "Not yet"). Before the checkout's
    # mounts, which may lie below them.
    for d in etc usr; do
        U=$R/run/vm-test/overlay/$d
        $B mkdir -p $U/upper $U/work
        $B mount -t overlay -o "lowerdir=$R/$d,upperdir=$U/upper,workdir=$U/work" \
            "overlay-$d" $R/$d || fail "mount an overlay on /$d"
    done
    $B mkdir -p /var-new
    $B mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /var-new || fail "mount /var"
    $B mkdir -p /var-new/tmp /var-new/lib /var-new/log /var-new/cache
    $B chmod 1777 /var-new/tmp
    $B cp -a $R/var/lib/dpkg /var-new/lib/ || fail "copy dpkg's database"
    $B mount --move /var-new $R/var || fail "move /var"
fi
# The checkout (read-only) and its target directory (read-write: the tests write there, e.g.
# CARGO_TARGET_TMPDIR) at their own paths, after /tmp and /run: a checkout below the host's /tmp
# would otherwise be hidden by the guest's own /tmp.
$B mkdir -p "$R$WORKSPACE_DIR" 2>/dev/null
$B mount -t 9p -o "$O,ro,cache=loose" workspace "$R$WORKSPACE_DIR" || fail "mount $WORKSPACE_DIR over 9p"
$B mkdir -p "$R$TARGET_DIR" 2>/dev/null
$B mount -t 9p -o "$O,cache=loose" target "$R$TARGET_DIR" || fail "mount $TARGET_DIR over 9p"
# The network tests listen on the loopback.
$B ip link set lo up || fail "bring lo up"
$B hostname vm-test

$B mkdir -p $R/run/vm-test
$B cp $B /vm-test/run $R/run/vm-test/ || fail "copy the runner"
if [ $SYSTEMD = yes ]; then
    # systemd mounts cgroup2, securityfs, bpffs and tracefs itself (/etc, /usr and /var: above).
    # The units of this boot go in /run/systemd/system, ahead of the host's: a target of their
    # own, whose one service runs the runner, so that none of the host's services start.
    $B mkdir -p $R/run/systemd/system
    printf '%s\n' '[Unit]' 'Description=vm-test' 'Requires=vmtest.service' \
        'After=vmtest.service' 'AllowIsolate=yes' > $R/run/systemd/system/vmtest.target
    printf '%s\n' '[Unit]' 'Description=vm-test runner' '[Service]' 'Type=oneshot' \
        'ExecStart=/run/vm-test/busybox sh /run/vm-test/run' 'StandardOutput=tty' \
        'StandardError=tty' 'TTYPath=/dev/ttyS0' 'TTYReset=no' 'TTYVHangup=no' \
        'TimeoutStartSec=infinity' > $R/run/systemd/system/vmtest.service
    # An empty `container` tells systemd it is not in one: the host's root has /.dockerenv, and a
    # systemd that believes it is in a container ignores the kernel's command line.
    export container=
    exec $B switch_root $R /lib/systemd/systemd
fi
# switch_root, not chroot: unshare(CLONE_NEWUSER) fails for a chrooted process.
exec $B switch_root $R /run/vm-test/busybox sh /run/vm-test/run
"#;

/// The 9p message size: large messages make fewer round trips through the emulated virtio queue.
const MSIZE: u32 = 512 * 1024;

/// The modules the guest needs to mount 9p over virtio; whichever of them the kernel has built in
/// are skipped, their dependencies are added.
const WANTED: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

/// Loaded too where the kernel has them as modules: autofs (systemd loads it on a real host), for
/// the test that a hidden path on an automount point is judged without triggering the mount
/// (tests/monitor.rs; hosts whose kernel lacks autofs skip it), and overlay, which the
/// `--systemd` boot puts over /etc and /usr (the init fails without it).
const OPTIONAL: [&str; 2] = ["autofs4", "overlay"];

/// `dir` as a string that can go into a shell variable of the init script and into qemu's
/// comma-separated -virtfs option.
fn shareable<'a>(dir: &'a Path, what: &str) -> Result<&'a str> {
    let s = dir
        .to_str()
        .with_context(|| format!("the {what} is not UTF-8"))?;
    if s.contains(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ',')) {
        bail!(
            "the {what} {s} contains whitespace, quotes or a comma, which the guest's init or \
             qemu's -virtfs option cannot carry"
        );
    }
    Ok(s)
}

/// Writes the initramfs to `out`.
pub fn build(
    busybox: &Path,
    modules_dir: &Path,
    workspace_dir: &Path,
    target_dir: &Path,
    runner: &str,
    out: &Path,
) -> Result<()> {
    let target = shareable(target_dir, "target directory")?;
    let workspace = shareable(workspace_dir, "workspace directory")?;
    let modules = modules_for_9p(modules_dir)?;
    let config = format!(
        "WORKSPACE_DIR='{workspace}'\nTARGET_DIR='{target}'\nMODULES='{}'\nMSIZE={MSIZE}\n",
        modules
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cpio = Cpio::default();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "vm-test",
        "vm-test/modules",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 5, 1);
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("vm-test/config", 0o644, config.as_bytes());
    cpio.file("vm-test/run", 0o755, runner.as_bytes());
    for (name, bytes) in &modules {
        cpio.file(&format!("vm-test/modules/{name}.ko"), 0o644, bytes);
    }
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, cpio.finish()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out)?;
    Ok(())
}

/// The modules (name, uncompressed contents) to load, dependencies first.
fn modules_for_9p(modules_dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin_list = fs::read_to_string(modules_dir.join("modules.builtin"))
        .with_context(|| format!("reading {}/modules.builtin", modules_dir.display()))?;
    let builtin: BTreeSet<String> = builtin_list.lines().map(module_name).collect();
    let mut files = std::collections::BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in WANTED {
        if !builtin.contains(name) && !files.contains_key(name) {
            bail!(
                "the kernel has no {name} module, built in or loadable ({})",
                modules_dir.display()
            );
        }
        resolve(name, &builtin, &files, &mut seen, &mut order)?;
    }
    for name in OPTIONAL {
        if files.contains_key(name) {
            resolve(name, &builtin, &files, &mut seen, &mut order)?;
        }
    }
    Ok(order)
}

fn resolve(
    name: &str,
    builtin: &BTreeSet<String>,
    files: &std::collections::BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let path = files
        .get(name)
        .with_context(|| format!("module {name} is needed but not in the package"))?;
    let bytes = read_module(path)?;
    for dep in module_depends(&bytes) {
        resolve(&dep, builtin, files, seen, order)?;
    }
    order.push((name.to_string(), bytes));
    Ok(())
}

fn index_modules(dir: &Path, into: &mut std::collections::BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, into)?;
        } else if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
            if file.contains(".ko") {
                into.insert(module_name(file), path);
            }
        }
    }
    Ok(())
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`; the kernel treats '-' and '_' in module names alike.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A module's contents, decompressed: Debian compresses them (xz for 6.12), and busybox's insmod
/// hands the bytes to init_module as they are.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} on {name}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -d {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=` field of a module's .modinfo section (NUL-separated `key=value` strings).
pub fn module_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    let mut at = 0;
    while let Some(pos) = module[at..].windows(KEY.len()).position(|w| w == KEY) {
        let start = at + pos;
        at = start + KEY.len();
        if start > 0 && module[start - 1] != 0 {
            continue;
        }
        let end = module[at..]
            .iter()
            .position(|&b| b == 0)
            .map_or(module.len(), |e| at + e);
        return String::from_utf8_lossy(&module[at..end])
            .split(',')
            .filter(|d| !d.is_empty())
            .map(module_name)
            .collect();
    }
    Vec::new()
}

/// A newc ("070701") cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, 0o040755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100000 | mode, 1, (0, 0), data);
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, 0o020600, 1, (major, minor), &[]);
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let name_len = path.len() + 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the archive depends only on its contents
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_len as u32,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.out.resize(self.out.len().next_multiple_of(4), 0);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
        assert_eq!(
            module_name("kernel/net/9p/9pnet-virtio.ko.zst"),
            "9pnet_virtio"
        );
    }

    #[test]
    fn depends_from_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=9pnet,netfs\0retpoline=Y\0";
        assert_eq!(module_depends(module), vec!["9pnet", "netfs"]);
        assert!(module_depends(b"\0depends=\0name=netfs\0").is_empty());
        // A string that merely ends in "depends=" is not the field.
        assert_eq!(module_depends(b"\0xdepends=a\0depends=b\0"), vec!["b"]);
    }

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        // Header (110) + "init\0" (5) padded to 116, then 10 bytes of data padded to 128.
        assert_eq!(&out[116..126], b"#!/bin/sh\n");
        assert_eq!(&out[128..134], b"070701");
        assert_eq!(out.len(), out.len().next_multiple_of(4));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        // mode field (second) of the first entry: regular file, 0755.
        assert_eq!(&out[14..22], b"000081ed");
    }
}
