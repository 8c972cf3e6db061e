//! Is a topology healthy? The verdict `status --json`, the metrics and the
//! web view give, decided from what is known of it at one instant.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::leader::State;

/// The verdict, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Running, and a round completed recently.
    Running,
    /// Running, but no round completed for [`stall_after`].
    Stalled,
    /// Published, no round complete yet, within [`stall_after`] of the start.
    Starting,
    /// No world can start: the broker cannot be reached (retried).
    Waiting,
    /// Stopped by `hailstorm stop`.
    Stopped,
    /// Stopped by an error no retry can fix.
    Failed,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Running => "running",
            Verdict::Stalled => "stalled",
            Verdict::Starting => "starting",
            Verdict::Waiting => "waiting",
            Verdict::Stopped => "stopped",
            Verdict::Failed => "failed",
        })
    }
}

/// A verdict and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub verdict: Verdict,
    pub reason: String,
    /// Since when (Unix ms): the last complete round of a stalled topology,
    /// the status change otherwise.
    pub since_ms: u64,
}

/// What the verdict is decided from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The leader's last word (embedded: always running).
    pub state: Option<State>,
    pub message: &'a str,
    /// When the state was last set (a new epoch sets it again).
    pub state_at_ms: u64,
    pub last_complete_ms: Option<u64>,
    pub interval: Duration,
    pub now_ms: u64,
}

/// How long a running topology may go without a complete round before it
/// is called stalled: 10 snapshot intervals, and at least 5 s.
pub fn stall_after(interval: Duration) -> Duration {
    interval.saturating_mul(10).max(Duration::from_secs(5))
}

/// The verdict of `f`.
pub fn judge(f: &Facts) -> Health {
    let said = |verdict, reason: String| Health { verdict, reason, since_ms: f.state_at_ms };
    match f.state {
        None => said(Verdict::Starting, "deployed; no world is published yet".into()),
        Some(State::Failed) => said(Verdict::Failed, f.message.to_string()),
        Some(State::Waiting) => said(Verdict::Waiting, f.message.to_string()),
        Some(State::Stopped) => said(Verdict::Stopped, f.message.to_string()),
        Some(State::Running) => running(f),
    }
}

fn running(f: &Facts) -> Health {
    let limit = stall_after(f.interval);
    let secs = |ms: u64| f.now_ms.saturating_sub(ms) as f64 / 1000.0;
    // A new epoch restarts the clock: its first round is due after it began.
    let since = f.last_complete_ms.unwrap_or(0).max(f.state_at_ms);
    let quiet = Duration::from_millis(f.now_ms.saturating_sub(since));
    let last = match f.last_complete_ms {
        Some(ms) => format!("the last complete round was {:.1}s ago", secs(ms)),
        None => "no round is complete yet".into(),
    };
    if quiet > limit {
        let reason = format!(
            "no round completed for {:.1}s (stalled after {:.1}s: 10 snapshot intervals, at least 5 s); {last}",
            quiet.as_secs_f64(),
            limit.as_secs_f64()
        );
        return Health { verdict: Verdict::Stalled, reason, since_ms: since };
    }
    match f.last_complete_ms {
        Some(ms) if ms >= f.state_at_ms => {
            Health { verdict: Verdict::Running, reason: format!("advancing: {last}"), since_ms: f.state_at_ms }
        }
        _ => Health {
            verdict: Verdict::Starting,
            reason: format!("started {:.1}s ago; {last}", secs(f.state_at_ms)),
            since_ms: f.state_at_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(state: Option<State>, at: u64, last: Option<u64>, now: u64) -> Facts<'static> {
        Facts {
            state,
            message: "why",
            state_at_ms: at,
            last_complete_ms: last,
            interval: Duration::from_secs(1),
            now_ms: now,
        }
    }

    #[test]
    fn verdicts_of_each_state() {
        assert_eq!(judge(&facts(Some(State::Failed), 5, None, 10)).verdict, Verdict::Failed);
        assert_eq!(judge(&facts(Some(State::Failed), 5, None, 10)).reason, "why");
        assert_eq!(judge(&facts(Some(State::Waiting), 5, None, 10)).verdict, Verdict::Waiting);
        assert_eq!(judge(&facts(Some(State::Stopped), 5, None, 10)).verdict, Verdict::Stopped);
        assert_eq!(judge(&facts(None, 5, None, 10)).verdict, Verdict::Starting);
        // Running: a recent round, an old one, none yet.
        assert_eq!(judge(&facts(Some(State::Running), 1_000, Some(20_000), 21_000)).verdict, Verdict::Running);
        let stalled = judge(&facts(Some(State::Running), 1_000, Some(20_000), 31_000));
        assert_eq!((stalled.verdict, stalled.since_ms), (Verdict::Stalled, 20_000));
        assert!(stalled.reason.contains("11.0s"), "{}", stalled.reason);
        assert_eq!(judge(&facts(Some(State::Running), 1_000, None, 3_000)).verdict, Verdict::Starting);
        assert_eq!(judge(&facts(Some(State::Running), 1_000, None, 12_000)).verdict, Verdict::Stalled);
        // A reboot: the round before it does not count, nor against it.
        assert_eq!(judge(&facts(Some(State::Running), 50_000, Some(20_000), 52_000)).verdict, Verdict::Starting);
    }

    proptest! {
        /// Running topologies are stalled exactly when nothing happened for
        /// longer than `stall_after`, and never stalled before their start.
        #[test]
        fn stalled_exactly_when_quiet_too_long(at in 0u64..1_000_000, last in proptest::option::of(0u64..1_000_000), later in 0u64..100_000, interval_ms in 1u64..10_000) {
            let since = last.unwrap_or(0).max(at);
            let now = since + later;
            let f = Facts { state: Some(State::Running), message: "", state_at_ms: at, last_complete_ms: last, interval: Duration::from_millis(interval_ms), now_ms: now };
            let h = judge(&f);
            let limit = stall_after(Duration::from_millis(interval_ms)).as_millis() as u64;
            prop_assert_eq!(h.verdict == Verdict::Stalled, later > limit);
            prop_assert!(h.since_ms <= now);
            if h.verdict == Verdict::Running {
                prop_assert!(last.is_some_and(|l| l >= at));
            }
        }
    }
}
