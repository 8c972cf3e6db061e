//! One error domain for the engine: who must act on an error, and whether
//! trying again can help.
//!
//! Errors travel as `anyhow::Error` with typed sources ([`TopologyError`],
//! [`ModuleError`], [`BuildError`], [`GuestError`], [`StoreError`]) or a
//! [`Classified`] error. [`classify`] reads the chain once, and both the exit
//! code of the `hailstorm` command and the cluster's decision to reboot a
//! world or to fail a topology come from it.

use serde::{Deserialize, Serialize};

use crate::modbuild::BuildError;
use crate::store::StoreError;
use crate::topology::TopologyError;
use crate::wasm::{GuestError, ModuleError};

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Domain {
    /// The topology file, a module, a module's configuration or the command
    /// line is wrong: the user fixes it and runs again.
    Usage,
    /// User code failed while running (a trap, a timeout, the memory cap, an
    /// error status, output that breaks the ABI): the same input fails the
    /// same way.
    Guest,
    /// Something outside the engine failed: a file, the snapshot store, the
    /// broker, ZooKeeper, another worker.
    External,
    /// A bug in the engine.
    Internal,
}

impl Domain {
    /// The exit code of the `hailstorm` command for an error of this domain:
    /// 2 for usage errors, 1 for failures at run time.
    pub fn exit_code(self) -> u8 {
        match self {
            Domain::Usage => 2,
            Domain::Guest | Domain::External | Domain::Internal => 1,
        }
    }
}

/// What [`classify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Class {
    pub domain: Domain,
    /// Whether running the same thing again may succeed.
    pub retryable: bool,
}

/// An error whose domain was decided where it arose (or on another worker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Classified {
    pub class: Class,
    pub message: String,
}

/// An error of `domain` with this message.
pub fn error(domain: Domain, retryable: bool, message: impl Into<String>) -> anyhow::Error {
    Classified { class: Class { domain, retryable }, message: message.into() }.into()
}

/// `e` (with its whole chain as the message) classified as `domain`.
pub fn mark(e: anyhow::Error, domain: Domain, retryable: bool) -> anyhow::Error {
    error(domain, retryable, format!("{e:#}"))
}

/// The class of an error: from the first classified or typed error in its
/// chain; anything else is external and worth a retry.
pub fn classify(e: &anyhow::Error) -> Class {
    let usage = Class { domain: Domain::Usage, retryable: false };
    for c in e.chain() {
        if let Some(c) = c.downcast_ref::<Classified>() {
            return c.class;
        }
        if c.is::<GuestError>() {
            return Class { domain: Domain::Guest, retryable: false };
        }
        if c.is::<TopologyError>() || c.is::<ModuleError>() || c.is::<BuildError>() {
            return usage;
        }
        if c.is::<StoreError>() {
            return Class { domain: Domain::External, retryable: true };
        }
    }
    Class { domain: Domain::External, retryable: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_known_error_in_the_chain_decides() {
        let e = error(Domain::Usage, false, "bad flag");
        assert_eq!(classify(&e), Class { domain: Domain::Usage, retryable: false });
        assert_eq!(classify(&e).domain.exit_code(), 2);
        let e = anyhow::anyhow!("connection reset").context("talking to a peer");
        assert_eq!(classify(&e), Class { domain: Domain::External, retryable: true });
        assert_eq!(classify(&e).domain.exit_code(), 1);
        let e = mark(e, Domain::Guest, false).context("instance 3");
        assert_eq!(classify(&e).domain, Domain::Guest);
        assert_eq!(format!("{e:#}"), "instance 3: talking to a peer: connection reset");
    }
}
