//! The guest kernel: a Debian kernel package fetched through a private apt configuration, unpacked
//! and cached under `target/vm-test/`.
//!
//! Why Debian's packaged kernel rather than building one: it is the kernel Stockade's users run
//! (BPF LSM built in, pure cgroup v2 with every controller, BTF), it takes seconds to fetch from the
//! mirror the machine already uses, and its modules come with it.
//!
//! Why a private apt configuration: the suite we need (bookworm-backports for 6.12) is not among
//! the machine's sources, and the machine's sources are not ours to change. apt reads its sources,
//! lists and cache from the directories named below instead; only the mirror's address is taken
//! from the machine's own sources, so the fetch goes where the machine already may go.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The kernel series `--kernel` chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// bookworm-backports: BPF LSM, Landlock ABI 6, pure cgroup v2 with cpu/memory/pids/io.
    V6_12,
    /// bookworm: Landlock ABI 2, the oldest kernel Debian stable still ships.
    V6_1,
}

impl Series {
    pub fn parse(s: &str) -> Result<Series> {
        match s {
            "6.12" => Ok(Series::V6_12),
            "6.1" => Ok(Series::V6_1),
            other => bail!("--kernel {other}: expected 6.12 or 6.1"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_12 => "6.12",
            Series::V6_1 => "6.1",
        }
    }

    /// The pattern of the package names, for messages.
    fn pattern(self) -> &'static str {
        match self {
            Series::V6_12 => "linux-image-6.12.*-amd64 (bookworm-backports)",
            Series::V6_1 => "linux-image-6.1.*-amd64 (bookworm)",
        }
    }

    /// The sort key of a package name of this series: the numbers of its version
    /// (`linux-image-6.12.90+deb12.1-amd64` → [90, 12, 1]), or None for another flavour
    /// (cloud, rt, -unsigned, -dbg) or another series.
    pub fn version_key(self, package: &str) -> Option<Vec<u64>> {
        let prefix = format!("linux-image-{}.", self.name());
        let middle = package.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
        // What is left is only numbers and separators, e.g. "90+deb12.1" or "0-42".
        let numbers = middle.replace("deb", "");
        if numbers.is_empty()
            || !numbers
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))
        {
            return None;
        }
        numbers
            .split(['.', '+', '-'])
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ok())
            .collect()
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The Debian package it came from, e.g. `linux-image-6.12.95+deb12-amd64`.
    pub package: String,
    /// Its release (`uname -r` in the guest), the directory name under /lib/modules.
    pub release: String,
    /// What qemu boots: the uncompressed vmlinux (PVH entry) when it could be extracted, else the
    /// bzImage.
    pub image: PathBuf,
    /// The unpacked package's /lib/modules/<release>.
    pub modules: PathBuf,
}

/// One `deb` source of the machine's apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub signed_by: Option<String>,
}

/// Returns the cached kernel of `series`, fetching and unpacking it first if it is not cached (or
/// if `refresh` asks for the newest one). A cached kernel needs no network at all.
pub fn obtain(
    series: Series,
    vm_dir: &Path,
    mirror: Option<&str>,
    refresh: bool,
) -> Result<Kernel> {
    let dir = vm_dir.join(format!("kernel-{}", series.name()));
    let stamp = dir.join("package");
    if !refresh {
        if let Ok(package) = fs::read_to_string(&stamp) {
            if let Ok(kernel) = load(&dir, package.trim()) {
                return Ok(kernel);
            }
        }
    }
    let apt = AptConfig::new(vm_dir, series, mirror)?;
    apt.update()
        .with_context(|| format!("cannot fetch the kernel package {}", series.pattern()))?;
    let package = apt.newest(series)?;
    if fs::read_to_string(&stamp).is_ok_and(|p| p.trim() == package) {
        if let Ok(kernel) = load(&dir, &package) {
            return Ok(kernel);
        }
    }
    let debs = vm_dir.join("debs");
    let deb = apt.download(&package, &debs)?;
    eprintln!("vm-test: unpacking {}", deb.display());
    // A half-unpacked tree from an interrupted run must not be mistaken for a good one: the stamp
    // is written last, and the tree is unpacked afresh.
    let _ = fs::remove_file(&stamp);
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let _ = fs::remove_file(dir.join("vmlinux"));
    fs::write(&stamp, format!("{package}\n"))?;
    load(&dir, &package)
}

/// The kernel unpacked in `dir`; extracts the vmlinux on first use.
fn load(dir: &Path, package: &str) -> Result<Kernel> {
    let root = dir.join("root");
    let modules_root = root.join("lib/modules");
    let release = fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{} is empty", modules_root.display()))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} is missing from {package}", vmlinuz.display());
    }
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        match extract_vmlinux(&vmlinuz, &vmlinux) {
            Ok(()) => vmlinux,
            Err(e) => {
                // The bzImage boots too, only more slowly (its decompressor runs under emulation).
                eprintln!("vm-test: booting the compressed kernel: {e:#}");
                vmlinuz
            }
        }
    };
    Ok(Kernel {
        package: package.to_string(),
        release: release.clone(),
        image,
        modules: modules_root.join(release),
    })
}

/// Extracts the uncompressed kernel from a bzImage whose payload is zstd (Debian's 6.12) or xz
/// (Debian's 6.1).
///
/// Why: qemu boots an ELF vmlinux with a PVH note directly, skipping the bzImage's decompressor,
/// which under TCG costs seconds of every boot. The setup header says where the payload is
/// (`payload_offset`/`payload_length`, boot protocol 2.08+); the kernel build appends the
/// uncompressed size (4 bytes) after the compressed stream, which the zstd tool would refuse as
/// trailing garbage, so it is cut off (xz is told to stop after its first stream instead).
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let data = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let payload = bzimage_payload(&data).context("finding the compressed payload")?;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
    let (tool, args, input): (&str, &[&str], &[u8]) = if payload.starts_with(&ZSTD_MAGIC) {
        ("zstd", &["-d", "-q", "-c"], &payload[..payload.len() - 4])
    } else if payload.starts_with(&XZ_MAGIC) {
        ("xz", &["-d", "-c", "--single-stream"], payload)
    } else {
        bail!(
            "the payload is neither zstd nor xz (magic {:02x?})",
            &payload[..4]
        );
    };
    let tmp = out.with_extension("tmp");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?)
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(input)
            .with_context(|| format!("feeding {tool}"))?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{tool} -d failed: {status}");
    }
    let elf = fs::read(&tmp)?;
    if !has_pvh_note(&elf) {
        let _ = fs::remove_file(&tmp);
        bail!("the vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)");
    }
    fs::rename(&tmp, out)?;
    Ok(())
}

/// The compressed payload of a bzImage, from its setup header.
pub fn bzimage_payload(data: &[u8]) -> Result<&[u8]> {
    let u32_at = |off: usize| -> Result<u32> {
        let b = data.get(off..off + 4).context("truncated setup header")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS signature)");
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let len = u32_at(0x24c)? as usize;
    let payload = data
        .get(start..start + len)
        .context("payload_offset/payload_length point outside the file")?;
    if payload.len() < 8 {
        bail!("empty payload");
    }
    Ok(payload)
}

/// Whether an ELF64 file carries the Xen PVH entry note (type 18, name "Xen") qemu needs to boot
/// it directly.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let (mut at, end) = (offset as usize, (offset + size) as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0") {
                return true;
            }
            let align = |n: u32| (n as usize).div_ceil(4) * 4;
            at += 12 + align(namesz) + align(descsz);
        }
    }
    false
}

/// apt pointed at our own sources list, lists and cache (see the module comment).
struct AptConfig {
    dir: PathBuf,
    sources: PathBuf,
    /// What the sources list says, for error messages.
    describe: String,
}

impl AptConfig {
    fn new(vm_dir: &Path, series: Series, mirror: Option<&str>) -> Result<AptConfig> {
        let dir = vm_dir.join("apt");
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let machine = machine_sources()?;
        let main = match mirror {
            Some(uri) => Source {
                uri: uri.to_string(),
                suites: vec![],
                signed_by: None,
            },
            None => debian_mirror(&machine).context(
                "no Debian mirror in the machine's apt sources (/etc/apt/sources.list, \
                 /etc/apt/sources.list.d/): pass --mirror URL",
            )?,
        };
        let keyring = main.signed_by.clone().or_else(|| {
            let k = "/usr/share/keyrings/debian-archive-keyring.gpg";
            Path::new(k).exists().then(|| k.to_string())
        });
        let line = |uri: &str, suite: &str, key: &Option<String>| match key {
            Some(k) => format!("deb [signed-by={k}] {uri} {suite} main\n"),
            None => format!("deb {uri} {suite} main\n"),
        };
        let mut list = String::from(
            "# Written by `cargo xtask vm-test`: the suite of the guest kernel, at the machine's \
             own mirror.\n",
        );
        match series {
            Series::V6_12 => list.push_str(&line(&main.uri, "bookworm-backports", &keyring)),
            Series::V6_1 => {
                list.push_str(&line(&main.uri, "bookworm", &keyring));
                list.push_str(&line(&main.uri, "bookworm-updates", &keyring));
                // Kernel fixes of stable reach the security archive first.
                if let Some(security) = machine
                    .iter()
                    .find(|s| s.suites.iter().any(|x| x == "bookworm-security"))
                {
                    let key = security.signed_by.clone().or(keyring.clone());
                    list.push_str(&line(&security.uri, "bookworm-security", &key));
                }
            }
        }
        let sources = dir.join("sources.list");
        fs::write(&sources, &list).with_context(|| format!("writing {}", sources.display()))?;
        let describe = format!(
            "private apt configuration: sources {} ({}), lists {}, cache {}",
            sources.display(),
            list.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("; "),
            dir.join("lists").display(),
            dir.join("cache").display()
        );
        Ok(AptConfig {
            dir,
            sources,
            describe,
        })
    }

    /// `apt-get`/`apt-cache` with every path that holds sources or state pointed at our own.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::Etc::SourceList", &self.sources),
            opt("Dir::Etc::SourceParts", &self.dir.join("sources.list.d")),
            opt(
                "Dir::Etc::PreferencesParts",
                &self.dir.join("preferences.d"),
            ),
            opt("Dir::Etc::Preferences", &self.dir.join("preferences")),
            opt("Dir::State::Lists", &self.dir.join("lists")),
            opt("Dir::Cache", &self.dir.join("cache")),
        ] {
            cmd.arg("-o").arg(o);
        }
        // apt's download sandbox user cannot write below a checkout in /root; everything here is
        // ours anyway.
        cmd.args(["-o", "APT::Sandbox::User=root", "-q"]);
        cmd
    }

    fn update(&self) -> Result<()> {
        eprintln!("vm-test: apt-get update ({})", self.describe);
        let out = self
            .command("apt-get")
            .arg("update")
            .output()
            .context("running apt-get update")?;
        // apt-get update exits 0 even when a source failed; its "W:"/"E:" lines say so.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E:")) {
            bail!(
                "apt-get update failed with the {} (the machine's own apt sources are \
                 untouched):\n{}",
                self.describe,
                stderr.trim()
            );
        }
        Ok(())
    }

    /// The newest package of `series` in our lists.
    fn newest(&self, series: Series) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["pkgnames", &format!("linux-image-{}.", series.name())])
            .output()
            .context("running apt-cache pkgnames")?;
        let names = String::from_utf8_lossy(&out.stdout);
        names
            .lines()
            .filter_map(|n| Some((series.version_key(n)?, n.to_string())))
            .max()
            .map(|(_, n)| n)
            .with_context(|| {
                format!(
                    "no package {} is known to the {}",
                    series.pattern(),
                    self.describe
                )
            })
    }

    /// Downloads `package` into `into` (once: an already downloaded .deb is reused).
    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
        let find = || -> Option<PathBuf> {
            fs::read_dir(into)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        eprintln!("vm-test: apt-get download {package}");
        let out = self
            .command("apt-get")
            .args(["download", package])
            .current_dir(into)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "cannot fetch {package}: apt-get download failed with the {}:\n{}",
                self.describe,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        find().with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                into.display()
            )
        })
    }
}

/// The `deb` sources of the machine: /etc/apt/sources.list and sources.list.d/*.list (one-line
/// format) and *.sources (deb822).
fn machine_sources() -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(parse_one_line(&text));
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let text = match path.extension().and_then(|e| e.to_str()) {
                Some("list") | Some("sources") => fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                _ => continue,
            };
            if path.extension().is_some_and(|e| e == "list") {
                sources.extend(parse_one_line(&text));
            } else {
                sources.extend(parse_deb822(&text));
            }
        }
    }
    Ok(sources)
}

/// `deb [options] URI SUITE COMPONENT...` lines.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(String::from);
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.to_string(),
                suites: vec![suite.to_string()],
                signed_by,
            });
        }
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Signed-By:`, `Enabled:`).
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Option<String> {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let suites: Vec<String> = field("Suites")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        // An inline key block spans several lines; only a path is usable here.
        let signed_by = field("Signed-By").filter(|k| k.starts_with('/'));
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            out.push(Source {
                uri: uri.to_string(),
                suites: suites.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
    out
}

/// The machine's Debian archive mirror: a source carrying a main Debian suite (a codename, or
/// codename-updates/-backports), not the security archive.
pub fn debian_mirror(sources: &[Source]) -> Option<Source> {
    const CODENAMES: [&str; 8] = [
        "bookworm", "trixie", "forky", "bullseye", "sid", "stable", "testing", "unstable",
    ];
    sources
        .iter()
        .find(|s| {
            !s.uri.contains("security")
                && s.suites.iter().any(|suite| {
                    let base = suite.split('-').next().unwrap_or(suite);
                    CODENAMES.contains(&base) && !suite.ends_with("-security")
                })
        })
        .cloned()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_of_a_series() {
        let s = Series::V6_12;
        assert_eq!(
            s.version_key("linux-image-6.12.90+deb12.1-amd64"),
            Some(vec![90, 12, 1])
        );
        assert!(
            s.version_key("linux-image-6.12.95+deb12-amd64")
                > s.version_key("linux-image-6.12.90+deb12.1-amd64")
        );
        assert_eq!(s.version_key("linux-image-6.12.95+deb12-cloud-amd64"), None);
        assert_eq!(
            s.version_key("linux-image-6.12.95+deb12-amd64-unsigned"),
            None
        );
        assert_eq!(s.version_key("linux-image-6.1.0-42-amd64"), None);
        let old = Series::V6_1;
        assert_eq!(
            old.version_key("linux-image-6.1.0-42-amd64"),
            Some(vec![0, 42])
        );
        assert_eq!(old.version_key("linux-image-6.12.95+deb12-amd64"), None);
        assert_eq!(old.version_key("linux-image-6.1.0-42-rt-amd64"), None);
    }

    #[test]
    fn mirror_from_deb822_skips_security_and_disabled() {
        let text = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nEnabled: no\nURIs: http://other.example/debian\nSuites: bookworm\n";
        let sources = parse_deb822(text);
        assert_eq!(sources.len(), 2);
        let m = debian_mirror(&sources).unwrap();
        assert_eq!(m.uri, "http://mirror.example/debian");
        assert_eq!(
            m.signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let text = "# deb http://commented.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n\
                    deb-src http://m.example/debian bookworm main\n";
        let sources = parse_one_line(text);
        assert_eq!(
            sources,
            vec![Source {
                uri: "http://m.example/debian".into(),
                suites: vec!["bookworm".into()],
                signed_by: Some("/k.gpg".into()),
            }]
        );
        assert!(debian_mirror(&parse_one_line(
            "deb https://packages.example/apt cloud-sdk main\n"
        ))
        .is_none());
    }

    #[test]
    fn payload_location_from_the_setup_header() {
        let mut image = vec![0u8; 4096];
        image[0x1f1] = 3; // setup_sects: the payload area starts at (3+1)*512
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&10u32.to_le_bytes());
        image[2048 + 16..2048 + 26].copy_from_slice(b"0123456789");
        assert_eq!(bzimage_payload(&image).unwrap(), b"0123456789");
        image[0x202] = 0;
        assert!(bzimage_payload(&image).is_err());
    }
}
