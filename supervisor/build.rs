//! Builds the eBPF programs (ebpf/) for bpfel-unknown-none with aya-build; the object is embedded
//! in the binary (monitor/loader.rs). Needs the nightly toolchain with rust-src and bpf-linker:
//! `cargo xtask setup` installs both.

use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // aya-build watches ebpf/ itself; the shared types live in ebpf/common.
    println!("cargo:rerun-if-changed=../ebpf/common");
    if which("bpf-linker").is_none() {
        anyhow::bail!(
            "bpf-linker is not installed; it links Stockade's eBPF programs.\n\
             hint: run `cargo xtask setup` (installs bpf-linker 0.10.3 and the nightly rust-src)"
        );
    }
    build_ebpf(
        [Package {
            name: "stockade-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )?;
    // The object's identity: the name of the host's pinned set of monitors (monitor/host.rs),
    // so that a supervisor never attaches to maps of another layout. FNV-1a: a name, not a
    // security boundary (only root writes bpffs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let object = std::fs::read(out.join("stockade-ebpf"))?;
    let hash = object.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    std::fs::write(out.join("stockade-ebpf.id"), format!("{hash:016x}"))?;
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
