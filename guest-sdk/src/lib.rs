//! Write Hailstorm modules in Rust.
//!
//! A Hailstorm module is a core WebAssembly module that implements the ABI
//! of `guest-sdk/ABI.md`. This crate implements that ABI so a module only
//! implements a trait and names its type in one macro:
//!
//! | kind | trait | macro | target |
//! |---|---|---|---|
//! | deserializer | [`Deserializer`] | [`deserializer!`] | `wasm32-unknown-unknown` |
//! | bolt | [`Bolt`] | [`bolt!`] | `wasm32-unknown-unknown` |
//! | sink | [`Sink`] | [`sink!`] | `wasm32-wasip1` |
//! | serializer (of a connector sink) | [`Serializer`] | [`serializer!`] | `wasm32-unknown-unknown` |
//!
//! The crate is layered like this:
//!
//! - [`sys`]: the raw `hailstorm.log` / `hailstorm.fail` imports; on the host
//!   (not wasm32) a stub that records calls, so modules can be unit-tested
//!   with `cargo test`;
//! - the safe façade: [`Init`], [`Emitter`], [`Slot`], [`Codec`], [`log`],
//!   and the runtimes ([`DeserializerRuntime`], [`BoltRuntime`],
//!   [`SinkRuntime`]) that turn the ABI's byte batches into trait calls;
//! - the macros, which generate the `#[no_mangle] extern "C"` exports on
//!   wasm32 only (on the host they expand to nothing, so several module
//!   crates can be linked into one native program, a benchmark say).
//!
//! Every export reports an error by calling `hailstorm.fail` with the
//! message and returning `-1` (buffer results) or `1` (status results).
//! Bytes from the host are never trusted: malformed batches are errors, not
//! panics. A panic in module code aborts, which is a trap for the host; its
//! message is sent through `fail` first.
//!
//! Buffers returned to the host (emitted batches, snapshots) are owned by
//! the module and reused by the next call, as ABI.md §2 allows.
//!
//! # Example: a word-count bolt
//!
//! ```
//! use hailstorm_guest::{Bolt, Emitter, Init, Slot};
//!
//! pub struct Count;
//!
//! impl Bolt for Count {
//!     type Key = Vec<u8>;
//!     type Value = u64; // stored as 8 bytes, little-endian
//!
//!     fn init(_init: &Init) -> Result<Self, String> {
//!         Ok(Count)
//!     }
//!
//!     fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter)
//!         -> Result<(), String> {
//!         state.add_ref(key, 1);
//!         Ok(())
//!     }
//!
//!     fn combine(acc: &mut u64, v: u64) {
//!         *acc += v;
//!     }
//! }
//!
//! hailstorm_guest::bolt!(Count);
//!
//! // The monoid laws of ABI.md §6, checked on the host:
//! let init = Init::new("counts", serde_json::json!({}));
//! let tuples: Vec<(&[u8], &[u8])> = vec![(b"a", b""), (b"b", b""), (b"a", b"")];
//! hailstorm_guest::testing::check_bolt_laws::<Count>(&init, &tuples).unwrap();
//! ```
//!
//! # Example: a deserializer
//!
//! ```
//! use hailstorm_guest::{Deserializer, DeserializerRuntime, Emitter, Init};
//!
//! /// Emits each comma-separated field of a line as a key.
//! pub struct Fields;
//!
//! impl Deserializer for Fields {
//!     fn init(init: &Init) -> Result<Self, String> {
//!         hailstorm_guest::log::info!("fields: instance {}", init.instance);
//!         Ok(Fields)
//!     }
//!
//!     fn deserialize(&mut self, record: &[u8], out: &mut Emitter) -> Result<(), String> {
//!         for field in record.split(|b| *b == b',') {
//!             out.emit(field, b"");
//!         }
//!         Ok(())
//!     }
//! }
//!
//! hailstorm_guest::deserializer!(Fields);
//!
//! // Drive it on the host as the engine would.
//! let mut rt = DeserializerRuntime::<Fields>::new();
//! rt.init(&Init::new("fields", serde_json::json!({})).to_document()).unwrap();
//! let out = rt.deserialize(&hailstorm_guest::testing::records_batch(&["a,b"])).unwrap();
//! let tuples = hailstorm_guest::abi::read_emitted(out).unwrap();
//! assert_eq!(tuples.len(), 2);
//! assert_eq!(tuples[1].key, b"b");
//! ```
//!
//! Build a module crate (`crate-type = ["cdylib", "rlib"]`) with
//! `cargo build --profile wasm --target wasm32-unknown-unknown -p NAME`.

pub use hailstorm_abi as abi;
pub use hailstorm_abi::{Changes, RoundHeader};
pub use serde_json;

mod bolt;
mod bytes;
mod codec;
mod deserializer;
mod emit;
pub mod hash;
mod init;
pub mod log;
mod serializer;
mod sink;
pub mod sys;
mod table;
pub mod testing;

#[doc(hidden)]
pub mod export;
#[doc(hidden)]
pub use export as __private;

pub use bolt::{Bolt, BoltRuntime, Derived, Slot};
pub use bytes::Bytes;
pub use codec::Codec;
pub use deserializer::{Deserializer, DeserializerRuntime};
pub use emit::Emitter;
pub use init::Init;
pub use serializer::{Column, ColumnType, Entry, Items, Output, Serializer, SerializerRuntime, Value};
pub use sink::{Durable, Sink, SinkRuntime};

const NOT_INITIALIZED: &str = "hailstorm_init has not been called";
const ALREADY_INITIALIZED: &str = "hailstorm_init was called twice";

/// The exports every module has (ABI.md §4), except `hailstorm_init`.
#[doc(hidden)]
#[macro_export]
macro_rules! __hailstorm_common_exports {
    () => {
        #[unsafe(no_mangle)]
        pub extern "C" fn hailstorm_abi_version() -> i32 {
            $crate::__private::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn hailstorm_alloc(size: i32) -> i32 {
            $crate::__private::alloc(size)
        }

        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn hailstorm_free(ptr: i32, size: i32) {
            // SAFETY: the host frees only what `hailstorm_alloc` gave it.
            unsafe { $crate::__private::free(ptr, size) }
        }
    };
}

/// Exports a [`Deserializer`]: `hailstorm_abi_version`, `hailstorm_alloc`,
/// `hailstorm_free`, `hailstorm_init` and `hailstorm_deserialize`.
///
/// Use it once per module crate, at the crate root or in any module. It
/// generates code on wasm32 only.
#[macro_export]
macro_rules! deserializer {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__hailstorm_common_exports!();

            ::std::thread_local! {
                static RUNTIME: ::core::cell::RefCell<$crate::DeserializerRuntime<$ty>> =
                    ::core::cell::RefCell::new($crate::DeserializerRuntime::new());
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::install_panic_hook();
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, doc| rt.init(doc))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_deserialize(ptr: i32, len: i32) -> i64 {
                $crate::__private::call_input_buffer(&RUNTIME, ptr, len, |rt, batch| rt.deserialize(batch))
            }
        };
    };
}

/// Exports a [`Bolt`]: the common exports plus `hailstorm_fold`,
/// `hailstorm_merge`, `hailstorm_snapshot` and `hailstorm_restore`.
/// Generates code on wasm32 only.
#[macro_export]
macro_rules! bolt {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__hailstorm_common_exports!();

            ::std::thread_local! {
                static RUNTIME: ::core::cell::RefCell<$crate::BoltRuntime<$ty>> =
                    ::core::cell::RefCell::new($crate::BoltRuntime::new());
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::install_panic_hook();
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, doc| rt.init(doc))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_fold(slot: i32, ptr: i32, len: i32) -> i64 {
                $crate::__private::call_input_buffer(&RUNTIME, ptr, len, |rt, batch| rt.fold(slot, batch))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_merge(dst: i32, src: i32) -> i32 {
                $crate::__private::call_status(&RUNTIME, |rt| rt.merge(dst, src))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_snapshot(slot: i32, max_bytes: i32) -> i64 {
                $crate::__private::call_buffer(&RUNTIME, |rt| rt.snapshot(slot, max_bytes))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_restore(slot: i32, ptr: i32, len: i32) -> i32 {
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, batch| rt.restore(slot, batch))
            }
        };
    };
}

/// Exports a [`Sink`]: the common exports plus `hailstorm_resume`,
/// `hailstorm_commit_begin`, `hailstorm_commit_changes`, `hailstorm_commit_end`
/// and `hailstorm_commit_step`.
/// Generates code on wasm32 only; build sinks for `wasm32-wasip1`.
#[macro_export]
macro_rules! sink {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__hailstorm_common_exports!();

            ::std::thread_local! {
                static RUNTIME: ::core::cell::RefCell<$crate::SinkRuntime<$ty>> =
                    ::core::cell::RefCell::new($crate::SinkRuntime::new());
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::install_panic_hook();
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, doc| rt.init(doc))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_resume() -> i64 {
                $crate::__private::call_round(&RUNTIME, |rt| rt.resume())
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_commit_begin(ptr: i32, len: i32) -> i32 {
                $crate::__private::call_input_code(&RUNTIME, ptr, len, |rt, doc| {
                    rt.begin(doc).map(|taken| if taken { 0 } else { $crate::__private::SKIP_ROUND })
                })
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_commit_changes(ptr: i32, len: i32) -> i32 {
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, doc| rt.changes(doc))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_commit_end() -> i64 {
                $crate::__private::call_i64(&RUNTIME, |rt| rt.end()?.encode())
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_commit_step() -> i64 {
                $crate::__private::call_i64(&RUNTIME, |rt| rt.step()?.encode())
            }
        };
    };
}

/// Exports a [`Serializer`]: the common exports plus `hailstorm_describe`
/// and `hailstorm_serialize`. Generates code on wasm32 only.
#[macro_export]
macro_rules! serializer {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__hailstorm_common_exports!();

            ::std::thread_local! {
                static RUNTIME: ::core::cell::RefCell<$crate::SerializerRuntime<$ty>> =
                    ::core::cell::RefCell::new($crate::SerializerRuntime::new());
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::install_panic_hook();
                $crate::__private::call_input_status(&RUNTIME, ptr, len, |rt, doc| rt.init(doc))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_describe() -> i64 {
                $crate::__private::call_buffer(&RUNTIME, |rt| rt.describe())
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hailstorm_serialize(ptr: i32, len: i32) -> i64 {
                $crate::__private::call_input_buffer(&RUNTIME, ptr, len, |rt, batch| rt.serialize(batch))
            }
        };
    };
}

#[cfg(test)]
mod tests;
