//! `stockade-hostile`: the hostile plugin of the integration tests. Each subcommand really tries
//! one forbidden (or, as a control, allowed) thing and prints one line saying what happened:
//! `ok [detail]` or `err ERRNO_NAME`. The tests assert those lines exactly.

use std::ffi::CString;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = run(&args);
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn run(args: &[String]) -> String {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "read" => read(&arg(1)),
        "write" => write(&arg(1)),
        "list" => list(&arg(1)),
        "exec" => exec(&arg(1), &args[2..]),
        "symlink-read" => symlink_read(&arg(1), &arg(2)),
        "symlink-connect" => match std::os::unix::fs::symlink(arg(1), arg(2)) {
            Ok(()) => connect_unix(&arg(2)),
            Err(e) => err_line(e.raw_os_error().unwrap_or(0)),
        },
        "hardlink-read" => hardlink_read(&arg(1), &arg(2)),
        "copy-exec" => copy_exec(&arg(1)),
        "memfd-exec" => memfd_exec(arg(1) == "mfd-exec"),
        "syscall" => syscall(&arg(1)),
        "int80" => int80(),
        "fork-bomb" => fork_bomb(),
        "mem-bomb" => mem_bomb(arg(1).parse().unwrap_or(1024)),
        "spin" => spin(arg(1).parse().unwrap_or(1.0)),
        "sleep-tree" => sleep_tree(arg(1).parse().unwrap_or(3)),
        "fill-tmp" => fill(&arg(1)),
        "fsize" => fsize(&arg(1), arg(2).parse().unwrap_or(1 << 20)),
        "nofile" => nofile(),
        "inotify" => inotify_instances(),
        "nonblock-stdout" => {
            // SAFETY: changing the status flags of our own stdout.
            let rc = unsafe { libc::fcntl(1, libc::F_SETFL, libc::O_NONBLOCK) };
            ret(rc as _)
        }
        "ids" => ids(),
        "caps" => caps(),
        "pids" => pids(),
        "tiocsti" => tiocsti(),
        "fd" => fd_open(arg(1).parse().unwrap_or(-1)),
        "net-ifaces" => net_ifaces(),
        "connect-unix" => connect_unix(&arg(1)),
        // unix-exchange PATH: connect to PATH, read one byte, answer it: "ok <byte>".
        "unix-exchange" => unix_exchange(&arg(1)),
        // sendto-unix PATH: one datagram to PATH from an unbound, unconnected socket.
        "sendto-unix" => io_line(
            std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.send_to(b"x", arg(1))),
            |_| "ok".into(),
        ),
        "connect-tcp" => connect_tcp(&arg(1)),
        "bind-tcp" => bind_tcp(&arg(1)),
        "listen" => listen(&arg(1), arg(2).parse().unwrap_or(2.0)),
        "udp-listen" => udp_listen(&arg(1), arg(2).parse().unwrap_or(2.0)),
        "kill" => kill(arg(1).parse().unwrap_or(1)),
        "echo" => format!("ok {}", args[1..].join(" ")),
        "exit" => std::process::exit(arg(1).parse().unwrap_or(0)),
        "udp-send" => udp_send(&arg(1)),
        "connect-flood" => connect_flood(&arg(1), arg(2).parse().unwrap_or(1)),
        "getppid" => getppid_loop(arg(1).parse().unwrap_or(0)),
        "bench-open" => bench_open(arg(1).parse().unwrap_or(1), &arg(2)),
        "bench-connect" => bench_connect(arg(1).parse().unwrap_or(1), &arg(2)),
        "grandchild" => grandchild(&args[1..]),
        "children-then" => children_then(arg(1).parse().unwrap_or(1), &args[2..]),
        "after" => {
            std::thread::sleep(Duration::from_millis(arg(1).parse().unwrap_or(0)));
            run(&args[2..])
        }
        // until FILE CMD...: waits (up to 120 s) for FILE to exist, then runs CMD: a test's
        // signal to go on, whatever the machine's speed.
        "until" => {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !std::path::Path::new(&arg(1)).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            run(&args[2..])
        }
        "terminal" => terminal(arg(1).parse().unwrap_or(0)),
        "netlink" => netlink(&arg(1)),
        "hostile-names" => hostile_names(&arg(1)),
        // miss-flood PROCS SECS DIR [then TEST ARGS...]
        "miss-flood" => {
            let out = miss_flood(
                arg(1).parse().unwrap_or(2),
                arg(2).parse().unwrap_or(1.0),
                &arg(3),
            );
            if args.len() > 5 && args[4] == "then" {
                println!("{out}");
                run(&args[5..])
            } else {
                out
            }
        }
        // raw-syscall NR: a call by number with no arguments (-1, an x32 number, anything).
        "raw-syscall" => {
            let nr: i64 = arg(1).parse().unwrap_or(-1);
            let _ = std::io::stdout().flush();
            // SAFETY: no arguments; every number the tests pass is refused or harmless.
            ret(unsafe { libc::syscall(nr) })
        }
        "getxattrat" => getxattrat(&arg(1)),
        // rename FROM TO, creating FROM first when it is below /tmp.
        "rename" => {
            if arg(1).starts_with("/tmp/") && !arg(1).contains("missing") {
                let _ = std::fs::write(arg(1), b"x");
            }
            io_line(std::fs::rename(arg(1), arg(2)), |_| "ok".into())
        }
        "link" => io_line(std::fs::hard_link(arg(1), arg(2)), |_| "ok".into()),
        "bind-abstract" => bind_abstract(&arg(1)),
        // udp-opts ADDR none|rthdr|ipopts: one datagram to ADDR from a socket that carries an
        // IPv6 routing header or IPv4 options (set with setsockopt), or neither.
        "udp-opts" => udp_opts(&arg(1), &arg(2)),
        "parallelism" => match std::thread::available_parallelism() {
            Ok(n) => format!("ok {n}"),
            Err(e) => err_line(e.raw_os_error().unwrap_or(0)),
        },
        // unix-self PATH: bind a socket at PATH, connect to it, send a byte back and forth.
        "unix-self" => unix_self(&arg(1)),
        "reopen-stdio" => reopen_stdio(),
        "reaped-child-proc" => reaped_child_proc(),
        other => {
            eprintln!("stockade-hostile: unknown test {other:?}");
            std::process::exit(64);
        }
    }
}

/// One UDP datagram to `addr` from an unconnected socket (sendto: the sendmsg hooks).
fn udp_send(addr: &str) -> String {
    let Ok(a) = addr.parse::<std::net::SocketAddr>() else {
        return "bad address".into();
    };
    let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    match std::net::UdpSocket::bind(local) {
        Ok(s) => io_line(s.send_to(b"x", a), |n| format!("ok sent {n}")),
        Err(e) => format!("bind {}", err_line(e.raw_os_error().unwrap_or(0))),
    }
}

/// `count` connect() calls to `addr` on one TCP socket (a refused connect leaves it unconnected);
/// prints how each ended.
fn connect_flood(addr: &str, count: u64) -> String {
    let Ok(a) = addr.parse::<std::net::SocketAddrV4>() else {
        return "bad address (IPv4 only)".into();
    };
    // SAFETY: a socket of our own, a sockaddr_in on the stack, closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return format!("socket {}", err_line(errno()));
        }
        let sa = sockaddr_in(a);
        let (mut eperm, mut other) = (0u64, 0u64);
        for _ in 0..count {
            let rc = libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if rc < 0 && errno() == libc::EPERM {
                eperm += 1;
            } else {
                other += 1;
            }
        }
        libc::close(fd);
        format!("ok eperm={eperm} other={other}")
    }
}

fn sockaddr_in(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn getppid_loop(count: u64) -> String {
    let mut sum = 0u64;
    for _ in 0..count {
        // SAFETY: no preconditions.
        sum = sum.wrapping_add(unsafe { libc::getppid() } as u64);
    }
    format!("ok {count} calls ({})", sum % 2)
}

/// `count` rounds of open, read one byte, close on `path`; prints the mean time of one round in
/// nanoseconds (`cargo xtask bench monitors`).
fn bench_open(count: u64, path: &str) -> String {
    let path = cstr(path);
    let mut byte = 0u8;
    let start = Instant::now();
    for i in 0..count {
        // SAFETY: a valid C string; the descriptor is ours and closed at once; a one-byte buffer.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return format!("open after {i}: {}", err_line(errno()));
            }
            let n = libc::read(fd, (&mut byte as *mut u8).cast(), 1);
            let read_errno = errno();
            libc::close(fd);
            if n < 0 {
                return format!("read after {i}: {}", err_line(read_errno));
            }
        }
    }
    per_iteration(start, count)
}

/// `count` TCP connects to `addr` (IPv4), each on a fresh socket closed at once with a reset
/// (SO_LINGER 0: no TIME_WAIT piles up on the client's ports); prints the mean time of one connect
/// and close in nanoseconds (`cargo xtask bench monitors`).
fn bench_connect(count: u64, addr: &str) -> String {
    let Ok(a) = addr.parse::<std::net::SocketAddrV4>() else {
        return "bad address (IPv4 only)".into();
    };
    let sa = sockaddr_in(a);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let start = Instant::now();
    for i in 0..count {
        // SAFETY: a socket of our own, closed in the same round; valid option and address
        // pointers with their sizes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return format!("socket after {i}: {}", err_line(errno()));
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
            let rc = libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let connect_errno = errno();
            libc::close(fd);
            if rc < 0 {
                return format!("connect after {i}: {}", err_line(connect_errno));
            }
        }
    }
    per_iteration(start, count)
}

fn per_iteration(start: Instant, count: u64) -> String {
    let ns = start.elapsed().as_nanos() as f64 / count.max(1) as f64;
    format!("ok {ns:.1}")
}

/// Runs another subcommand in a grandchild (fork, fork) and reports its line.
fn grandchild(rest: &[String]) -> String {
    let (mut r, w) = pipe_pair();
    // SAFETY: the children only run this program's code and _exit.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            drop(r);
            let grandchild = libc::fork();
            if grandchild == 0 {
                let line = run(rest);
                let mut w = w;
                let _ = w.write_all(line.as_bytes());
                libc::_exit(0);
            }
            drop(w);
            let mut st = 0;
            libc::waitpid(grandchild, &mut st, 0);
            libc::_exit(0);
        }
        drop(w);
        let mut line = String::new();
        let _ = r.read_to_string(&mut line);
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        format!("grandchild: {line}")
    }
}

/// Starts `n` children that sleep for a minute, runs a subcommand, prints its line, and waits for
/// the children: unless something kills the whole plugin, this takes a minute.
fn children_then(n: u32, rest: &[String]) -> String {
    for _ in 0..n {
        // SAFETY: the child only sleeps and exits.
        if unsafe { libc::fork() } == 0 {
            std::thread::sleep(Duration::from_secs(60));
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
    }
    println!("started {n}");
    println!("{}", run(rest));
    let _ = std::io::stdout().flush();
    // SAFETY: waiting for our own children.
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
    "ok children done".into()
}

fn pipe_pair() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn err_line(e: i32) -> String {
    format!("err {}", errno_name(e))
}

fn io_line<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => err_line(e.raw_os_error().unwrap_or(0)),
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENODATA => "ENODATA",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno{e}"),
    };
    name.to_string()
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in test arguments")
}

fn read(path: &str) -> String {
    io_line(std::fs::read(path), |b| format!("ok {}", b.len()))
}

fn write(path: &str) -> String {
    io_line(
        std::fs::write(path, b"written by stockade-hostile\n"),
        |_| "ok".into(),
    )
}

fn list(path: &str) -> String {
    io_line(std::fs::read_dir(path), |entries| {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        format!("ok {}", names.join(","))
    })
}

fn exec(path: &str, rest: &[String]) -> String {
    let prog = cstr(path);
    let mut argv: Vec<CString> = vec![prog.clone()];
    argv.extend(rest.iter().map(|a| cstr(a)));
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings; on success this never returns.
    unsafe { libc::execv(prog.as_ptr(), ptrs.as_ptr()) };
    err_line(errno())
}

fn symlink_read(target: &str, link: &str) -> String {
    if let Err(e) = std::os::unix::fs::symlink(target, link) {
        return format!("symlink {}", err_line(e.raw_os_error().unwrap_or(0)));
    }
    read(link)
}

fn hardlink_read(target: &str, link: &str) -> String {
    if let Err(e) = std::fs::hard_link(target, link) {
        return format!("link {}", err_line(e.raw_os_error().unwrap_or(0)));
    }
    read(link)
}

/// Copies this very binary to `dest`, makes it executable, and tries to run it.
fn copy_exec(dest: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let me = match std::fs::read("/proc/self/exe") {
        Ok(b) => b,
        Err(e) => return format!("copy {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    if let Err(e) = std::fs::write(dest, me) {
        return format!("copy {}", err_line(e.raw_os_error().unwrap_or(0)));
    }
    let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755));
    exec(dest, &["echo".into(), "escaped".into()])
}

/// Writes this binary into a memfd and executes it from there.
fn memfd_exec(with_mfd_exec: bool) -> String {
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = if with_mfd_exec { MFD_EXEC } else { 0 };
    let name = cstr("payload");
    // SAFETY: valid name pointer and flags.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return format!("memfd_create {}", err_line(errno()));
    }
    let me = std::fs::read("/proc/self/exe").unwrap_or_default();
    // SAFETY: `fd` is the memfd we just created; File takes ownership.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if let Err(e) = file.write_all(&me) {
        return format!("write {}", err_line(e.raw_os_error().unwrap_or(0)));
    }
    let argv = [cstr("payload"), cstr("echo"), cstr("escaped")];
    let ptrs = [
        argv[0].as_ptr(),
        argv[1].as_ptr(),
        argv[2].as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null::<libc::c_char>()];
    let empty = cstr("");
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, NULL-terminated arrays.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            ptrs.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    format!("execveat {}", err_line(errno()))
}

fn ret(rc: libc::c_long) -> String {
    if rc < 0 {
        err_line(errno())
    } else {
        "ok".into()
    }
}

fn syscall(name: &str) -> String {
    // SAFETY (every arm): the calls get valid pointers or none; each is expected to be refused.
    unsafe {
        match name {
            "ptrace-parent" => {
                // A child tries to attach to its parent (this process).
                let pid = libc::fork();
                if pid == 0 {
                    let rc = libc::ptrace(libc::PTRACE_ATTACH, libc::getppid(), 0, 0);
                    libc::_exit(if rc < 0 { errno() } else { 0 });
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                match libc::WEXITSTATUS(status) {
                    0 => "ok".into(),
                    e => err_line(e),
                }
            }
            "mount" => {
                let (src, dst, ty) = (cstr("none"), cstr("/tmp"), cstr("tmpfs"));
                ret(libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) as _)
            }
            "fsopen" => ret(libc::syscall(libc::SYS_fsopen, cstr("tmpfs").as_ptr(), 0)),
            "unshare-user" => ret(libc::unshare(libc::CLONE_NEWUSER) as _),
            "clone-newuser" => {
                let rc = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 {
                    libc::waitpid(rc as i32, std::ptr::null_mut(), 0);
                }
                ret(rc)
            }
            "setns" => ret(libc::setns(0, 0) as _),
            "chroot" => ret(libc::chroot(cstr("/tmp").as_ptr()) as _),
            "bpf" => {
                let attr = [0u8; 128];
                ret(libc::syscall(
                    libc::SYS_bpf,
                    0, /* BPF_MAP_CREATE */
                    attr.as_ptr(),
                    attr.len(),
                ))
            }
            "io_uring_setup" => {
                let params = [0u8; 120];
                ret(libc::syscall(libc::SYS_io_uring_setup, 8, params.as_ptr()))
            }
            "keyctl" => ret(libc::syscall(
                libc::SYS_keyctl,
                0, /* KEYCTL_GET_KEYRING_ID */
                -3,
                0,
            )),
            "add_key" => ret(libc::syscall(
                libc::SYS_add_key,
                cstr("user").as_ptr(),
                cstr("k").as_ptr(),
                std::ptr::null::<u8>(),
                0,
                -3,
            )),
            "perf_event_open" => {
                let attr = [0u8; 128];
                ret(libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_ptr(),
                    0,
                    -1,
                    -1,
                    0,
                ))
            }
            "userfaultfd" => ret(libc::syscall(libc::SYS_userfaultfd, 0)),
            "process_vm_readv" => ret(libc::syscall(libc::SYS_process_vm_readv, 1, 0, 0, 0, 0, 0)),
            "personality-unsafe" => ret(libc::personality(0x0040000 /* ADDR_NO_RANDOMIZE */) as _),
            "personality-query" => ret(libc::personality(0xffff_ffff) as _),
            "kexec_load" => ret(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)),
            "init_module" => ret(libc::syscall(libc::SYS_init_module, 0, 0, 0)),
            "reboot" => ret(libc::syscall(libc::SYS_reboot, 0, 0, 0, 0)),
            "clock_settime" => {
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                ret(libc::clock_settime(libc::CLOCK_REALTIME, &ts) as _)
            }
            "getppid" => ret(libc::getppid() as _),
            "io_setup" => {
                let mut ctx: libc::c_ulong = 0;
                ret(libc::syscall(
                    libc::SYS_io_setup,
                    128,
                    &mut ctx as *mut libc::c_ulong,
                ))
            }
            "socket-vsock" => ret(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) as _),
            "socket-ping" => {
                ret(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) as _)
            }
            "socket-ping6" => {
                ret(libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6) as _)
            }
            "socket-udp" => ret(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) as _),
            "socket-packet" => ret(libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) as _),
            "socket-unix" => ret(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as _),
            "socket-inet" => ret(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as _),
            "chmod-setuid" => {
                let path = cstr("/tmp/setuid-me");
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o755);
                if fd >= 0 {
                    libc::close(fd);
                }
                ret(libc::chmod(path.as_ptr(), 0o4755) as _)
            }
            "create-setgid" => {
                let path = cstr("/tmp/setgid-me");
                ret(libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o2755) as _)
            }
            "chmod-plain" => {
                let path = cstr("/tmp/plain");
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                if fd >= 0 {
                    libc::close(fd);
                }
                ret(libc::chmod(path.as_ptr(), 0o755) as _)
            }
            other => format!("unknown syscall test {other}"),
        }
    }
}

/// getpid through the i386 entry point. The seccomp filter must kill the process (SIGSYS):
/// i386 numbers mean other calls than x86_64 ones.
fn int80() -> String {
    let _ = std::io::stdout().flush();
    let mut eax: u32 = 20; // __NR_getpid on i386
                           // SAFETY: a system call through the legacy gate with no memory arguments.
    unsafe { std::arch::asm!("int 0x80", inout("eax") eax) };
    format!("ok returned {}", eax as i32)
}

fn fork_bomb() -> String {
    let mut forked = 0;
    loop {
        // SAFETY: the child only sleeps and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::thread::sleep(Duration::from_secs(30));
            // SAFETY: exiting the child.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            return format!("ok forked {forked} then {}", err_line(errno()));
        }
        forked += 1;
        if forked > 100_000 {
            return "ok never stopped".into();
        }
    }
}

fn mem_bomb(mib: usize) -> String {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(vec![(i & 0xff) as u8; 1 << 20]);
    }
    format!("ok allocated {} MiB", blocks.len())
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins for `seconds` of wall time on two threads; prints the CPU time it got.
/// Only the spinning counts: CLOCK_PROCESS_CPUTIME_ID also holds what this process used before
/// (the sandbox set-up it inherited, its own start-up), which is large under software emulation.
fn spin(seconds: f64) -> String {
    let before = cpu_time();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let worker = std::thread::spawn(move || while Instant::now() < until {});
    while Instant::now() < until {}
    let _ = worker.join();
    format!("ok cpu_ms {}", (cpu_time() - before).as_millis())
}

/// Starts a few descendants that sleep (a grandchild too), then sleeps itself.
fn sleep_tree(seconds: u64) -> String {
    for _ in 0..3 {
        // SAFETY: the child forks once more and both sleep.
        if unsafe { libc::fork() } == 0 {
            unsafe { libc::fork() };
            std::thread::sleep(Duration::from_secs(seconds));
            unsafe { libc::_exit(0) };
        }
    }
    println!("started");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(seconds));
    "ok slept".into()
}

/// Writes 1 MiB blocks to `path` until an error; prints how far it got.
fn fill(path: &str) -> String {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return format!("create {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    let block = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => return format!("ok wrote {} MiB then zero", written >> 20),
            Ok(n) => written += n as u64,
            Err(e) => {
                return format!(
                    "ok wrote {} MiB then {}",
                    written >> 20,
                    err_line(e.raw_os_error().unwrap_or(0))
                )
            }
        }
        if written > 8 << 30 {
            return "ok never stopped".into();
        }
    }
}

fn fsize(path: &str, bytes: u64) -> String {
    // SAFETY: ignoring SIGXFSZ so that the write fails with EFBIG instead of killing us.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return format!("create {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    io_line(f.write_all(&vec![1u8; bytes as usize]), |_| "ok".into())
}

fn nofile() -> String {
    let mut files = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) => {
                return format!(
                    "ok opened {} then {}",
                    files.len(),
                    err_line(e.raw_os_error().unwrap_or(0))
                )
            }
        }
        if files.len() > 1 << 20 {
            return "ok never stopped".into();
        }
    }
}

fn inotify_instances() -> String {
    let mut n = 0;
    loop {
        // SAFETY: inotify_init1 takes flags only; the descriptors stay open until exit.
        if unsafe { libc::inotify_init1(libc::IN_CLOEXEC) } < 0 {
            return format!("ok created {n} then {}", err_line(errno()));
        }
        n += 1;
        if n > 100_000 {
            return "ok never stopped".into();
        }
    }
}

fn ids() -> String {
    // SAFETY: plain getters.
    unsafe {
        format!(
            "ok uid={} euid={} gid={} egid={}",
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid()
        )
    }
}

fn caps() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let fields: Vec<String> = status
        .lines()
        .filter(|l| {
            l.starts_with("Cap") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp:")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join("="))
        .collect();
    format!("ok {}", fields.join(" "))
}

fn pids() -> String {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    format!(
        "ok {}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn tiocsti() -> String {
    let c = b'x';
    // SAFETY: TIOCSTI reads one byte from a valid pointer.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSTI, &c as *const u8) };
    ret(rc as _)
}

fn fd_open(fd: i32) -> String {
    // SAFETY: F_GETFD only queries.
    ret(unsafe { libc::fcntl(fd, libc::F_GETFD) } as _)
}

fn net_ifaces() -> String {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let names: Vec<&str> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    format!("ok {}", names.join(","))
}

fn connect_unix(path: &str) -> String {
    io_line(std::os::unix::net::UnixStream::connect(path), |_| {
        "ok".into()
    })
}

fn unix_exchange(path: &str) -> String {
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return err_line(e.raw_os_error().unwrap_or(0)),
    };
    let mut byte = [0u8; 1];
    match s.read_exact(&mut byte).and_then(|()| s.write_all(&byte)) {
        Ok(()) => format!("ok {}", byte[0] as char),
        Err(e) => err_line(e.raw_os_error().unwrap_or(0)),
    }
}

fn connect_tcp(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => io_line(
            std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)),
            |mut s| {
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                format!("ok {}", String::from_utf8_lossy(&buf[..n]).trim())
            },
        ),
        Err(_) => "bad address".into(),
    }
}

fn bind_tcp(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => io_line(std::net::TcpListener::bind(a), |_| "ok".into()),
        Err(_) => "bad address".into(),
    }
}

/// `listen ADDR SECONDS`: a TCP listener on ADDR, or with `-` (IPv4) or `-6` (IPv6, dual-stack)
/// `listen()` on an unbound socket, which the kernel binds to an ephemeral port on every address
/// without running any bind hook. Prints `listening PORT` at once, then waits up to SECONDS for a
/// connection: `accepted` or `no connection`.
fn listen(addr: &str, seconds: f64) -> String {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let listener = match addr {
        "-" | "-6" => {
            let family = if addr == "-" {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // SAFETY: plain socket calls on a descriptor this function owns.
            let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return format!("socket {}", err_line(errno()));
            }
            // SAFETY: `fd` is a fresh socket, owned from here on by the listener.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            // SAFETY: as above.
            if unsafe { libc::listen(fd, 8) } != 0 {
                return format!("listen {}", err_line(errno()));
            }
            listener
        }
        a => match a.parse::<std::net::SocketAddr>() {
            Ok(a) => match std::net::TcpListener::bind(a) {
                Ok(l) => l,
                Err(e) => return format!("bind {}", err_line(e.raw_os_error().unwrap_or(0))),
            },
            Err(_) => return "bad address".into(),
        },
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("listening {port}");
    let _ = std::io::stdout().flush();
    let _ = listener.set_nonblocking(true);
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    while std::time::Instant::now() < deadline {
        if listener.accept().is_ok() {
            return "accepted".into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "no connection".into()
}

/// `udp-listen PEER SECONDS`: an unbound UDP socket sends one datagram to PEER (which binds it to
/// an ephemeral port on every address), prints `bound PORT`, then collects what arrives for
/// SECONDS: `got A,B` (payloads in order of arrival) or `got nothing`.
fn udp_listen(peer: &str, seconds: f64) -> String {
    use std::io::Write;
    let Ok(peer) = peer.parse::<std::net::SocketAddr>() else {
        return "bad address".into();
    };
    let any: std::net::SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // bind(port 0) is what sendto on an unbound socket does implicitly.
    let sock = match std::net::UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => return format!("bind {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    if let Err(e) = sock.send_to(b"hi", peer) {
        return format!("send {}", err_line(e.raw_os_error().unwrap_or(0)));
    }
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("bound {port}");
    let _ = std::io::stdout().flush();
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    if got.is_empty() {
        "got nothing".into()
    } else {
        format!("got {}", got.join(","))
    }
}

fn kill(pid: i32) -> String {
    // SAFETY: signal 0 only checks whether the process can be signalled.
    ret(unsafe { libc::kill(pid, 0) } as _)
}

/// What a plugin may and may not do to the terminal it was handed as stdin: the ioctls that
/// would outlive the sandbox (each answer by name), then raw mode (allowed: the supervisor
/// restores it) and a read of the settings (the control). Prints one line, then holds raw mode
/// for `hold_ms` so the test can see it on the caller's side.
fn terminal(hold_ms: u64) -> String {
    let fd = 0;
    let answer = |rc: libc::c_int| {
        if rc < 0 {
            errno_name(errno())
        } else {
            "ok".to_string()
        }
    };
    // SAFETY: ioctls on our own stdin: TIOCEXCL and TIOCSCTTY take an int argument by value,
    // TCXONC an int by value, TIOCSWINSZ reads a winsize from a valid pointer.
    let (excl, sctty, winsz, xonc) = unsafe {
        let ws = libc::winsize {
            ws_row: 7,
            ws_col: 13,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        (
            answer(libc::ioctl(fd, libc::TIOCEXCL)),
            answer(libc::ioctl(fd, libc::TIOCSCTTY, 0)),
            answer(libc::ioctl(fd, libc::TIOCSWINSZ, &ws)),
            // Last: were it allowed, nothing more would be printed.
            answer(libc::ioctl(fd, libc::TCXONC, libc::TCOOFF)),
        )
    };
    // SAFETY: tcgetattr/tcsetattr on our own stdin with a local termios.
    let (raw, now_raw) = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return format!("tcgetattr {}", err_line(errno()));
        }
        libc::cfmakeraw(&mut t);
        let raw = answer(libc::tcsetattr(fd, libc::TCSANOW, &t));
        let mut after: libc::termios = std::mem::zeroed();
        let now_raw = libc::tcgetattr(fd, &mut after) == 0 && after.c_lflag & libc::ICANON == 0;
        (raw, now_raw)
    };
    let line = format!(
        "ok excl={excl} sctty={sctty} winsz={winsz} xonc={xonc} raw={raw} tcgets={}",
        if now_raw { "raw" } else { "cooked" }
    );
    // Raw mode: no ONLCR, so end the line with CR LF ourselves.
    print!("{line}\r\n");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_millis(hold_ms));
    "done".into()
}

/// A netlink socket of protocol `route`, `sock_diag` or `kobject_uevent`. For route, an
/// RTM_GETLINK dump (what if_nameindex does): prints the number of links. For the others, the
/// socket is bound as a listener would bind it.
fn netlink(protocol: &str) -> String {
    let proto = match protocol {
        "route" => libc::NETLINK_ROUTE,
        "sock_diag" => libc::NETLINK_SOCK_DIAG,
        "kobject_uevent" => libc::NETLINK_KOBJECT_UEVENT,
        other => return format!("unknown protocol {other}"),
    };
    // SAFETY: a socket of our own; the request and the reply buffer are local and sized.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
        if fd < 0 {
            return err_line(errno());
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if proto == libc::NETLINK_KOBJECT_UEVENT {
            sa.nl_groups = 1;
        }
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) != 0
        {
            let e = errno();
            libc::close(fd);
            return format!("bind {}", err_line(e));
        }
        if proto != libc::NETLINK_ROUTE {
            libc::close(fd);
            return "ok bound".into();
        }
        #[repr(C)]
        struct Request {
            header: libc::nlmsghdr,
            info: [u8; 16], // struct ifinfomsg, zeroed: every family
        }
        let request = Request {
            header: libc::nlmsghdr {
                nlmsg_len: std::mem::size_of::<Request>() as u32,
                nlmsg_type: libc::RTM_GETLINK,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            info: [0; 16],
        };
        if libc::send(
            fd,
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        ) < 0
        {
            let e = errno();
            libc::close(fd);
            return format!("send {}", err_line(e));
        }
        let mut links = 0;
        let mut buf = vec![0u8; 64 << 10];
        'dump: loop {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n <= 0 {
                let e = errno();
                libc::close(fd);
                return format!("recv {}", err_line(e));
            }
            let mut off = 0usize;
            while off + std::mem::size_of::<libc::nlmsghdr>() <= n as usize {
                let h = std::ptr::read_unaligned(buf[off..].as_ptr().cast::<libc::nlmsghdr>());
                match i32::from(h.nlmsg_type) {
                    libc::NLMSG_DONE => break 'dump,
                    libc::NLMSG_ERROR => {
                        libc::close(fd);
                        return "netlink error".into();
                    }
                    t if t == i32::from(libc::RTM_NEWLINK) => links += 1,
                    _ => {}
                }
                if h.nlmsg_len == 0 {
                    break;
                }
                off += (h.nlmsg_len as usize + 3) & !3;
            }
        }
        libc::close(fd);
        format!("ok {links} links")
    }
}

/// Opens for writing, below `dir` (a read-only grant, so each open is refused with a violation
/// event naming the path), names a plugin may choose to attack whoever reads the report: a
/// newline followed by a forged report line (no slash: a name is one component), terminal
/// escape sequences, a bidi override, and bytes that are not UTF-8. Prints how many were refused
/// with EROFS or EACCES.
fn hostile_names(dir: &str) -> String {
    let names: [&[u8]; 4] = [
        b"x\nstockade: forged exited with status 0 after 1.0 ms",
        b"\x1b[2J\x1b]0;owned\x07esc",
        b"evil\xe2\x80\xaetxt.sh",
        b"\xff\xfe-invalid",
    ];
    let mut refused = 0;
    for name in names {
        let mut path = dir.as_bytes().to_vec();
        path.push(b'/');
        path.extend_from_slice(name);
        let path = CString::new(path).expect("no NUL in the names");
        // SAFETY: a valid C string; a descriptor we close at once if it was opened.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) };
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
        } else if matches!(errno(), libc::EROFS | libc::EACCES) {
            refused += 1;
        }
    }
    format!("ok {refused} refused")
}

/// `procs` processes stat missing files below `dir` for `secs` seconds, as a loader, a compiler or
/// an interpreter's imports do all day; prints how many lookups they made.
fn miss_flood(procs: u32, secs: f64, dir: &str) -> String {
    let mut pipes = Vec::new();
    for p in 0..procs {
        let (r, mut w) = pipe_pair();
        // SAFETY: the child only makes system calls on memory prepared here, then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(r);
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut n: u64 = 0;
            while Instant::now() < end {
                for i in 0..256u32 {
                    let path = cstr(&format!("{dir}/stockade-missing-{p}-{i}.so"));
                    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                    // SAFETY: a NUL-terminated path and a buffer for one stat.
                    unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) };
                    n += 1;
                }
            }
            let _ = w.write_all(&n.to_ne_bytes());
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        drop(w);
        pipes.push(r);
    }
    let mut total = 0u64;
    for mut r in pipes {
        let mut b = [0u8; 8];
        if r.read_exact(&mut b).is_ok() {
            total += u64::from_ne_bytes(b);
        }
    }
    // SAFETY: waiting for our own children.
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
    format!("ok {total} lookups")
}

/// getxattrat(AT_FDCWD, PATH, 0, "user.x", &args, sizeof args) (Linux 6.13+).
fn getxattrat(path: &str) -> String {
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let mut buf = [0u8; 64];
    let args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    let (p, name) = (cstr(path), cstr("user.x"));
    // SAFETY: valid pointers for the path, the name and a struct of the size passed.
    ret(unsafe {
        libc::syscall(
            464,
            libc::AT_FDCWD,
            p.as_ptr(),
            0,
            name.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
}

/// A socket the plugin binds itself, connected to by name: one byte each way.
fn unix_self(path: &str) -> String {
    use std::os::unix::net::{UnixListener, UnixStream};
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => return format!("bind {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    let mut client = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e) => return format!("connect {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    let Ok((mut server, _)) = listener.accept() else {
        return "accept failed".into();
    };
    let mut byte = [0u8; 1];
    let exchanged = client.write_all(b"x").is_ok()
        && server.read_exact(&mut byte).is_ok()
        && server.write_all(b"y").is_ok()
        && client.read_exact(&mut byte).is_ok();
    if exchanged && byte == *b"y" {
        "ok".into()
    } else {
        "exchange failed".into()
    }
}

fn udp_opts(addr: &str, kind: &str) -> String {
    use std::os::fd::AsRawFd;
    let Ok(a) = addr.parse::<std::net::SocketAddr>() else {
        return "bad address".into();
    };
    let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = match std::net::UdpSocket::bind(local) {
        Ok(s) => s,
        Err(e) => return format!("bind {}", err_line(e.raw_os_error().unwrap_or(0))),
    };
    let fd = s.as_raw_fd();
    let set = |level: i32, name: i32, value: &[u8]| {
        // SAFETY: a valid descriptor and a buffer of the length passed.
        unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) }
    };
    let rc = match kind {
        "rthdr" => {
            // A segment routing header (type 4) with one segment, the destination itself:
            // next header, length (8-byte units after the first 8), type, segments left, last
            // entry, flags, tag, then the segment.
            let mut srh = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
            match a.ip() {
                std::net::IpAddr::V6(ip) => srh.extend_from_slice(&ip.octets()),
                std::net::IpAddr::V4(_) => return "rthdr needs an IPv6 address".into(),
            }
            set(libc::IPPROTO_IPV6, 57 /* IPV6_RTHDR */, &srh)
        }
        // NOP, NOP, NOP, end of options: the header grows by one word.
        "ipopts" => set(libc::IPPROTO_IP, libc::IP_OPTIONS, &[1, 1, 1, 0]),
        _ => 0,
    };
    if rc < 0 {
        return format!("setsockopt {}", err_line(errno()));
    }
    io_line(s.send_to(b"x", a), |n| format!("ok sent {n}"))
}

/// Binds the abstract unix name `name` (empty: autobind) and listens; prints how it went.
fn bind_abstract(name: &str) -> String {
    // SAFETY: plain socket calls on a descriptor this function owns; the address is built in a
    // zeroed sockaddr_un of the length passed.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return format!("socket {}", err_line(errno()));
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        let bytes = name.as_bytes();
        for (i, b) in bytes.iter().take(100).enumerate() {
            addr.sun_path[i + 1] = *b as libc::c_char;
        }
        let len = if name.is_empty() {
            2
        } else {
            3 + bytes.len().min(100)
        };
        let _ = std::io::stdout().flush();
        if libc::bind(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as u32,
        ) < 0
        {
            return format!("bind {}", err_line(errno()));
        }
        if libc::listen(fd, 1) < 0 {
            return format!("listen {}", err_line(errno()));
        }
        "ok bound".into()
    }
}

/// Reopens the inherited stdin and stdout by name (also through its own pid), then, as the
/// control, a file of its own through `/proc/self/fd`.
fn reopen_stdio() -> String {
    use std::os::fd::AsRawFd;
    let open = |path: &str, write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(path)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| errno_name(e.raw_os_error().unwrap_or(0)))
    };
    let stdin = open("/dev/stdin", false);
    let stdout = open("/proc/self/fd/1", true);
    // By its pid in the sandbox's namespace (1: the plugin is the sandbox's first process).
    let by_pid = open(&format!("/proc/{}/fd/1", std::process::id()), true);
    let own = std::fs::File::create("/tmp/reopened").expect("create /tmp/reopened");
    let again = open(&format!("/proc/self/fd/{}", own.as_raw_fd()), true);
    format!(
        "ok stdin={stdin} stdout={stdout} by_pid={by_pid} pid={} own={again}",
        std::process::id()
    )
}

/// Forks a child that exits at once, waits for it, then looks for it in /proc: a miss of the
/// sandbox's own past, under a number that a host process may well have.
fn reaped_child_proc() -> String {
    // SAFETY: the child exits at once without running the parent's exit handlers.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let status = std::fs::read(format!("/proc/{pid}/status"));
    format!(
        "ok pid={pid} {}",
        status
            .map(|_| "found".to_string())
            .unwrap_or_else(|e| errno_name(e.raw_os_error().unwrap_or(0)))
    )
}
