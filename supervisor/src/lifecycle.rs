//! A hosted plugin's lifecycle, as data: its states, the transitions allowed between them (each
//! an event with a time and a reason), and the restart policy of its manifest (exponential
//! backoff with jitter, a start limit within a window, a reset after a stable period, and no
//! restart after an auto-unload: quarantine). The daemon drives it; nothing here does I/O or
//! reads a clock itself, so every rule is unit-tested with the times given.

use std::collections::VecDeque;

/// Transitions kept per plugin (the audit log keeps them all).
const HISTORY: usize = 256;
use std::time::Duration;

use stockade_policy::manifest::{Lifecycle, Restart};

/// `discovered → verified → loading → initializing → active → stopping → stopped`, and
/// `failed(reason)` from any of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum State {
    Discovered,
    Verified,
    Loading,
    Initializing,
    Active,
    Stopping,
    Stopped,
    /// Waiting out the backoff before the next start.
    Restarting,
    /// Auto-unloaded for violations: not restarted unless the operator asks.
    Quarantined(String),
    Failed(String),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Discovered => "discovered",
            State::Verified => "verified",
            State::Loading => "loading",
            State::Initializing => "initializing",
            State::Active => "active",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Restarting => "restarting",
            State::Quarantined(_) => "quarantined",
            State::Failed(_) => "failed",
        }
    }

    /// Whether `to` may follow this state.
    pub fn allows(&self, to: &State) -> bool {
        use State::*;
        match (self, to) {
            (_, Failed(_)) => !matches!(self, Stopped),
            (Discovered, Verified)
            | (Verified, Loading)
            | (Loading, Initializing)
            | (Initializing, Active)
            | (Active | Initializing | Loading, Stopping)
            | (Stopping, Stopped)
            // Unloaded while waiting out a backoff, or before it started: nothing runs.
            | (Restarting | Discovered | Verified, Stopped)
            // It exited by itself and the restart policy keeps it down.
            | (Loading | Initializing | Active, Stopped)
            // A crash, a missed heartbeat, a failed start: the restart policy decides.
            | (Loading | Initializing | Active, Restarting)
            | (Restarting, Loading)
            | (Loading | Initializing | Active | Stopping, Quarantined(_))
            // The operator's `reload` or `load` again.
            | (Stopped | Failed(_) | Quarantined(_), Verified) => true,
            _ => false,
        }
    }
}

/// One transition, as the event stream and the audit log will carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    pub from: &'static str,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a plugin cannot go from {from} to {to}")]
pub struct Refused {
    pub from: &'static str,
    pub to: &'static str,
}

/// What ended a run of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with status 0 on its own.
    Clean,
    /// A crash, a non-zero exit, a missed heartbeat, a failed `initialize`.
    Failure,
    /// The threshold of violations was crossed and the sandbox killed.
    AutoUnloaded,
}

/// What to do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay.
    RestartAfter(Duration),
    /// Stay down: the manifest says so (`restart = "no"`, or a clean exit with "on-failure").
    StayStopped,
    /// Too many restarts within the window.
    Fail(String),
    Quarantine(String),
}

/// A plugin's state and restart history.
#[derive(Debug, Clone)]
pub struct Tracker {
    policy: Lifecycle,
    state: State,
    history: VecDeque<Transition>,
    /// Times (ms) of the restarts within the window.
    restarts: VecDeque<u64>,
    /// The delay of the next restart before jitter.
    next_backoff: Duration,
    /// When the current run became active.
    active_since: Option<u64>,
}

impl Tracker {
    pub fn new(policy: Lifecycle, now_ms: u64) -> Tracker {
        let next_backoff = policy.backoff_min;
        Tracker {
            policy,
            state: State::Discovered,
            history: VecDeque::from([Transition {
                at_ms: now_ms,
                from: "none",
                to: State::Discovered,
                reason: "found".into(),
            }]),
            restarts: VecDeque::new(),
            next_backoff,
            active_since: None,
        }
    }

    /// A new restart policy (an upgrade's manifest), from the next exit on; the history and the
    /// restarts counted so far stay.
    pub fn set_policy(&mut self, policy: Lifecycle) {
        self.next_backoff = self
            .next_backoff
            .clamp(policy.backoff_min, policy.backoff_max);
        self.policy = policy;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last transitions, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Moves to `to`, recording why; refused when the lifecycle does not allow it.
    pub fn go(&mut self, to: State, reason: &str, now_ms: u64) -> Result<&Transition, Refused> {
        if !self.state.allows(&to) {
            return Err(Refused {
                from: self.state.name(),
                to: to.name(),
            });
        }
        if to == State::Active {
            self.active_since = Some(now_ms);
        }
        if to == State::Verified && self.state != State::Discovered {
            // The operator loads it again: a fresh start, whatever failed before.
            self.restarts.clear();
            self.next_backoff = self.policy.backoff_min;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Transition {
            at_ms: now_ms,
            from: self.state.name(),
            to: to.clone(),
            reason: reason.to_string(),
        });
        self.state = to;
        Ok(self.history.back().expect("just pushed"))
    }

    /// Decides what follows an exit, by the manifest's restart policy. `jitter` is a number in
    /// [0, 1) (the daemon draws it): the delay is half the backoff plus `jitter` times the other
    /// half ("equal jitter"), so plugins that crashed together do not restart together, at the
    /// maximum too.
    pub fn after_exit(&mut self, exit: Exit, now_ms: u64, jitter: f64) -> Decision {
        if exit == Exit::AutoUnloaded {
            return Decision::Quarantine(
                "auto-unloaded for violations; `stockade plugin reload` starts it again".into(),
            );
        }
        // A run that stayed up long enough starts the backoff over.
        if let Some(since) = self.active_since.take() {
            if now_ms.saturating_sub(since) >= self.policy.stable_after.as_millis() as u64 {
                self.next_backoff = self.policy.backoff_min;
                self.restarts.clear();
            }
        }
        let wanted = match (self.policy.restart, exit) {
            (Restart::No, _) | (Restart::OnFailure, Exit::Clean) => false,
            (Restart::OnFailure, _) | (Restart::Always, _) => true,
        };
        if !wanted {
            return Decision::StayStopped;
        }
        let window = self.policy.start_window.as_millis() as u64;
        while self
            .restarts
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.policy.start_limit as usize {
            return Decision::Fail(format!(
                "start limit: {} restarts within {} s",
                self.restarts.len(),
                self.policy.start_window.as_secs()
            ));
        }
        self.restarts.push_back(now_ms);
        let base = self.next_backoff.min(self.policy.backoff_max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The manifest bounds every duration to a day: nothing here can overflow.
        let delay = base / 2 + (base / 2).mul_f64(jitter);
        self.next_backoff = self
            .next_backoff
            .saturating_mul(2)
            .min(self.policy.backoff_max);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: Restart) -> Lifecycle {
        Lifecycle {
            restart,
            start_limit: 3,
            start_window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            stable_after: Duration::from_secs(30),
            ..Lifecycle::default()
        }
    }

    fn up(t: &mut Tracker, now: u64) {
        for (to, why) in [
            (State::Verified, "manifest and policy valid"),
            (State::Loading, "starting"),
            (State::Initializing, "initialize sent"),
            (State::Active, "initialized"),
        ] {
            t.go(to, why, now).unwrap();
        }
    }

    #[test]
    fn the_path_to_active_and_back_is_recorded() {
        let mut t = Tracker::new(policy(Restart::OnFailure), 1_000);
        up(&mut t, 1_000);
        t.go(State::Stopping, "unload", 2_000).unwrap();
        t.go(State::Stopped, "shut down", 2_100).unwrap();
        let names: Vec<&str> = t.history().map(|h| h.to.name()).collect();
        assert_eq!(
            names,
            [
                "discovered",
                "verified",
                "loading",
                "initializing",
                "active",
                "stopping",
                "stopped"
            ]
        );
        let stop = t.history().nth(5).unwrap();
        assert_eq!((stop.from, stop.reason.as_str()), ("active", "unload"));
        // Nothing skips a step, and a stopped plugin does not fail.
        assert_eq!(
            t.go(State::Active, "x", 3_000),
            Err(Refused {
                from: "stopped",
                to: "active"
            })
        );
        assert!(t.go(State::Failed("x".into()), "x", 3_000).is_err());
        // It can be loaded again.
        t.go(State::Verified, "load", 4_000).unwrap();
        // And unloaded while it waits to restart.
        t.go(State::Loading, "", 4_000).unwrap();
        t.go(State::Restarting, "crashed", 4_100).unwrap();
        t.go(State::Stopped, "unload", 4_200).unwrap();
    }

    #[test]
    fn restarts_back_off_and_stop_at_the_limit() {
        let mut t = Tracker::new(policy(Restart::OnFailure), 0);
        up(&mut t, 0);
        // 100, 200, then 350 (the maximum): half of each, plus the jitter's share of the rest.
        assert_eq!(
            t.after_exit(Exit::Failure, 1_000, 0.0),
            Decision::RestartAfter(Duration::from_millis(50))
        );
        assert_eq!(
            t.after_exit(Exit::Failure, 2_000, 1.0),
            Decision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            t.after_exit(Exit::Failure, 3_000, 0.5),
            Decision::RestartAfter(Duration::from_micros(262_500))
        );
        // The fourth within 60 s is past the limit of 3.
        assert_eq!(
            t.after_exit(Exit::Failure, 4_000, 0.0),
            Decision::Fail("start limit: 3 restarts within 60 s".into())
        );
        // A minute after the first, the window has room again; at the maximum the jitter
        // still spreads restarts (a NaN counts as none).
        assert_eq!(
            t.after_exit(Exit::Failure, 61_000, f64::NAN),
            Decision::RestartAfter(Duration::from_millis(175))
        );
        // The operator's reload starts over.
        t.go(State::Failed("start limit".into()), "", 62_000)
            .unwrap();
        t.go(State::Verified, "reload", 63_000).unwrap();
        assert_eq!(
            t.after_exit(Exit::Failure, 64_000, 0.0),
            Decision::RestartAfter(Duration::from_millis(50))
        );
    }

    #[test]
    fn a_stable_run_starts_the_backoff_over() {
        let mut t = Tracker::new(policy(Restart::Always), 0);
        up(&mut t, 0);
        t.after_exit(Exit::Failure, 1_000, 0.0);
        t.go(State::Restarting, "crashed", 1_000).unwrap();
        t.go(State::Loading, "backoff over", 1_100).unwrap();
        t.go(State::Initializing, "", 1_100).unwrap();
        t.go(State::Active, "", 1_200).unwrap();
        // Up for 30 s: the next delay is the minimum again.
        assert_eq!(
            t.after_exit(Exit::Failure, 31_200, 0.0),
            Decision::RestartAfter(Duration::from_millis(50))
        );
        // A clean exit kept down goes straight to stopped.
        t.go(State::Restarting, "crashed", 31_200).unwrap();
        t.go(State::Loading, "", 31_300).unwrap();
        t.go(State::Stopped, "exited 0", 31_400).unwrap();
    }

    #[test]
    fn what_each_restart_setting_does() {
        let mut t = Tracker::new(policy(Restart::OnFailure), 0);
        assert_eq!(t.after_exit(Exit::Clean, 0, 0.0), Decision::StayStopped);
        let mut t = Tracker::new(policy(Restart::No), 0);
        assert_eq!(t.after_exit(Exit::Failure, 0, 0.0), Decision::StayStopped);
        let mut t = Tracker::new(policy(Restart::Always), 0);
        assert!(matches!(
            t.after_exit(Exit::Clean, 0, 0.0),
            Decision::RestartAfter(_)
        ));
        // Violations are never restarted, whatever the manifest says.
        assert!(matches!(
            t.after_exit(Exit::AutoUnloaded, 0, 0.0),
            Decision::Quarantine(_)
        ));
    }
}
