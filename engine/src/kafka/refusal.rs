//! A broker that answers but refuses this client — wrong credentials, a
//! certificate that does not verify, TLS spoken to a plaintext listener or
//! plaintext to a TLS one — looks to librdkafka like a broker that is down:
//! it retries for ever. Its log lines say what is wrong; [`Refusal::of`]
//! reads them, so that a call fails at once with the reason instead of
//! timing out, and a refusal no retry can fix stops the topology.
//!
//! Some of these signs also show for a moment while a broker starts or
//! stops (a connection closed during its first request): [`Watch`] takes
//! them as a refusal only once they have lasted [`HINT_LASTS`] with no other
//! kind of connection failure in between.

use std::time::{Duration, Instant};

/// How long a sign that may be passing must last to count as a refusal.
pub(super) const HINT_LASTS: Duration = Duration::from_secs(3);

/// The refusal the client's latest connection failures tell of.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// The latest refusal, and since when connection failures have been refusals.
    current: Option<(Refusal, Instant)>,
}

impl Watch {
    /// Takes one complaint; `connection` says whether it is the reason a
    /// connection failed (librdkafka's `FAIL` lines), which ends a streak
    /// of refusals when it tells of none.
    pub(super) fn saw(&mut self, text: &str, connection: bool, now: Instant) {
        match Refusal::of(text) {
            Some(r) => {
                let since = self.current.as_ref().map_or(now, |(_, since)| *since);
                self.current = Some((r, since));
            }
            None if connection => self.current = None,
            None => {}
        }
    }

    /// The refusal to fail a call with at `now`: a permanent one at once, a
    /// passing one after it lasted [`HINT_LASTS`], or any when the call's
    /// time is up anyway (`ending`).
    pub(super) fn refusal(&self, now: Instant, ending: bool) -> Option<Refusal> {
        let (r, since) = self.current.as_ref()?;
        (r.permanent || ending || now.duration_since(*since) >= HINT_LASTS).then(|| r.clone())
    }
}

/// What a librdkafka complaint says about a broker refusing this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The reason, as librdkafka gave it (never a secret: librdkafka does
    /// not repeat credentials), with a hint where one helps.
    pub(super) reason: String,
    /// Trying again cannot help (credentials or certificates are wrong):
    /// a running topology fails instead of waiting for the broker.
    pub(super) permanent: bool,
}

/// Texts of refusals no retry can fix.
const PERMANENT: &[&str] = &[
    "Authentication failed",
    "SASL authentication error",
    "certificate verify failed",
    "bad certificate",
    "certificate required",
    "unknown ca",
];

impl Refusal {
    /// The refusal `text` (one librdkafka log line or error reason) tells of, if any.
    pub(super) fn of(text: &str) -> Option<Refusal> {
        if PERMANENT.iter().any(|p| text.contains(p)) {
            return Some(Refusal { reason: text.to_string(), permanent: true });
        }
        if text.contains("SSL handshake failed") {
            let hint = if text.contains("PLAINTEXT") { "" } else { " (is it a plaintext listener?)" };
            return Some(Refusal { reason: format!("{text}{hint}"), permanent: false });
        }
        // A plaintext client whose first request the broker answers by
        // closing the connection: most often a TLS listener.
        if text.contains("Disconnected") && text.contains("in state APIVERSION_QUERY") {
            let reason = format!(
                "{text}: the broker closed the connection on the first request; if it is a TLS (SSL or SASL_SSL) \
                 listener, set security.protocol in the file {} names",
                super::CONFIG_ENV
            );
            return Some(Refusal { reason, permanent: false });
        }
        None
    }

    /// The error a call that met this refusal returns.
    pub(super) fn error(&self, brokers: &str) -> anyhow::Error {
        let message = format!("the Kafka broker at {brokers} refused this client: {}", self.reason);
        crate::error::error(crate::error::Domain::External, !self.permanent, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_sign_counts_only_once_it_lasts() {
        let t0 = Instant::now();
        let closed = "127.0.0.1:9093/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN \
                      (after 1ms in state APIVERSION_QUERY)";
        let refused = "127.0.0.1:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused";
        let mut w = Watch::default();
        w.saw(closed, true, t0);
        assert_eq!(w.refusal(t0, false), None, "not yet");
        assert!(w.refusal(t0, true).is_some(), "the best reason when the call ends anyway");
        w.saw("1/1 brokers are down", false, t0 + HINT_LASTS / 2);
        w.saw(closed, true, t0 + HINT_LASTS / 2);
        assert!(w.refusal(t0 + HINT_LASTS, false).is_some(), "it lasted");
        // A broker restarting: the sign, then the port closed, then the sign again.
        w.saw(refused, true, t0 + HINT_LASTS);
        assert_eq!(w.refusal(t0 + HINT_LASTS, true), None);
        w.saw(closed, true, t0 + HINT_LASTS * 2);
        assert_eq!(w.refusal(t0 + HINT_LASTS * 2 + HINT_LASTS / 2, false), None, "a new streak");
        // Wrong credentials count at once.
        let mut w = Watch::default();
        w.saw("sasl_ssl://h:9094/bootstrap: SASL authentication error: Authentication failed", true, t0);
        assert!(w.refusal(t0, false).is_some_and(|r| r.permanent));
    }

    #[test]
    fn refusals_are_told_from_a_broker_that_is_down() {
        let sasl = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during \
                    authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        assert!(Refusal::of(sasl).is_some_and(|r| r.permanent && r.reason == sasl));
        let ca = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate \
                  verify failed: broker certificate could not be verified";
        assert!(Refusal::of(ca).is_some_and(|r| r.permanent));
        let no_cert = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad \
                       certificate: SSL alert number 42";
        assert!(Refusal::of(no_cert).is_some_and(|r| r.permanent));
        let tls_to_plain = "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: SSL connection \
                            closed by peer: connecting to a PLAINTEXT broker listener?";
        assert!(Refusal::of(tls_to_plain).is_some_and(|r| !r.permanent && r.reason == tls_to_plain));
        let plain_to_tls = "127.0.0.1:9093/bootstrap: Disconnected: connection closed by peer: receive 0 after \
                            POLLIN (after 1ms in state APIVERSION_QUERY)";
        let r = Refusal::of(plain_to_tls).expect("a refusal");
        assert!(!r.permanent && r.reason.contains("set security.protocol"), "{r:?}");
        for down in [
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
            "1/1 brokers are down",
            "127.0.0.1:9092/1: Disconnected (after 60000ms in state UP)",
        ] {
            assert_eq!(Refusal::of(down), None, "{down}");
        }
        let e = Refusal::of(sasl).expect("a refusal").error("127.0.0.1:9094");
        assert!(!crate::error::classify(&e).retryable);
        assert!(e.to_string().starts_with("the Kafka broker at 127.0.0.1:9094 refused this client: "), "{e}");
    }
}
