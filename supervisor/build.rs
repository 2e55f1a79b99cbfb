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
    )
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
