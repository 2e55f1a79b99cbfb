//! systemd's service protocol (`Type=notify`; the states in the `sd-notify` crate's words, sent without waiting; nothing happens
//! without `NOTIFY_SOCKET`): `READY=1` once the control socket listens, `STATUS=` with the
//! number of active plugins and the audit log's state, `STOPPING=1` when a stop begins (with
//! `EXTEND_TIMEOUT_USEC=` for the plugins' longest `stop_timeout` and the audit's drain), and —
//! when the unit sets `WatchdogSec=` — `WATCHDOG=1` at half that interval from a task on the
//! daemon's runtime, so a runtime that stops making progress stops the pings and systemd restarts
//! the service. The sandboxes never see the socket: the shim is executed with an empty
//! environment.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::host::Host;

/// Sends one notification without ever waiting: the crate's `notify` sends on a blocking
/// socket, and a manager that does not read (its queue holds a few datagrams) would then hold
/// the daemon's runtime thread — the watchdog task's sends stopped every other task. A
/// notification that finds the queue full is dropped (the next status replaces it; a missed
/// ping is what the watchdog is for).
fn send(states: &[NotifyState]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    match send_now(&socket, msg.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::debug!("sd_notify: the service manager's queue is full; dropped: {msg:?}")
        }
        Err(e) => tracing::warn!("sd_notify: {}: {e}", socket.to_string_lossy()),
    }
}

fn send_now(socket: &OsStr, msg: &[u8]) -> std::io::Result<()> {
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

/// What `systemctl status` shows.
fn status(host: &Host) -> String {
    let (active, total) = host.counts();
    let audit = host.audit_stats();
    let log = match (&audit.stopped, &audit.failing) {
        (Some(why), _) => format!("audit log stopped: {why}"),
        (None, Some(why)) => format!("audit log failing ({} queued): {why}", audit.queued),
        (None, None) => format!("audit log at record {}", audit.committed),
    };
    // One line: the protocol's fields end at a newline (an error's text may hold one).
    format!("{active} of {total} plugins active; {log}").replace('\n', " ")
}

/// The daemon serves: ready, with its status; then the status (and the watchdog's pings, when
/// asked for) at least every `every`.
pub fn ready(host: Arc<Host>) {
    send(&[NotifyState::Ready, NotifyState::Status(&status(&host))]);
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(Duration::from_secs(10), |w| w / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let text = status(&host);
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog, NotifyState::Status(&text)]);
            } else {
                send(&[NotifyState::Status(&text)]);
            }
        }
    });
}

/// A stop has begun (every plugin is stopped next, at once, each within its `stop_timeout`;
/// then the audit log drains). `within`: how long that may take. The service manager's stop
/// timeout (`TimeoutStopSec=`) is extended to it, so that a plugin's declared grace is not cut
/// short by a SIGKILL of the whole unit.
pub fn stopping(within: Duration) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping every plugin"),
        // The protocol field is 32 bits here: at most 71 minutes, above any stop_timeout + 20 s.
        NotifyState::ExtendTimeoutUsec(u32::try_from(within.as_micros()).unwrap_or(u32::MAX)),
    ]);
}
