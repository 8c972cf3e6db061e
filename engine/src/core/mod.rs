//! The pure cores: everything about exactly-once and placement that can be
//! decided without I/O, tested deterministically (property tests against a
//! sequential reference).
//!
//! **Architecture invariant:** nothing under `core/` does I/O, starts threads,
//! uses channels or reads the system clock (time comes in as a value), and
//! nothing here imports a module of this crate other than `core` and
//! `topology`. The tidy test in `tests/all/tidy.rs` checks it.

pub mod assign;
pub mod batch;
pub mod bolt;
pub mod clock;
pub mod health;
pub mod leader;
pub mod negotiator;
pub mod plan;
