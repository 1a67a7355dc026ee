//! The binary boundary between `agent-host` and a plugin library.
//!
//! Everything that crosses a `.so` boundary is declared here, and only here. Plugin authors never
//! see this crate: `agent-plugin-api` generates the root module with `export_plugin!`, and the
//! host's loader reads it. The rules that keep old plugins loading into new hosts:
//!
//! * The root module [`PluginMod`] is an `abi_stable` *prefix type*. Fields are only ever
//!   appended after the last one, never reordered, removed or retyped; an appended field bumps
//!   this crate's **minor** version and the host reads it through its `Option` accessor, falling
//!   back when an older plugin lacks it. Any other change is a new major version.
//! * Only `extern "C"` function pointers cross, carrying protobuf bytes ([`FfiBytes`]), small
//!   `repr(C)` values and `async-ffi` futures (whose output type is part of the layout check).
//!   Protobuf has its own compatibility rules, so a plugin keeps loading when the Flyte IDL grows.
//! * No `#[sabi_trait]` objects: their vtables would follow the prefix rule silently.
//!
//! abi_stable checks this crate's version when the host loads a plugin: a 1.x plugin loads into a
//! 1.y host when the layouts agree. abi_stable's own check refuses a plugin whose root module has
//! fewer fields than the host's, so the host's loader also accepts a plugin whose layout is a
//! prefix of its own (an older minor) and then reads appended fields through their `Option`
//! accessors.
//!
//! | ABI | appended |
//! |---|---|
//! | 1.0 | `describe`, `init`, `call`, `open_stream`, `shutdown` |
//! | 1.1 | `runtime_stats` |

use std::ffi::c_void;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RStr, RString},
    StableAbi,
};
pub use async_ffi::{FfiFuture, FutureExt};

/// The ABI major version this crate describes. A plugin with another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// The ABI minor version: the number of append-only revisions of [`PluginMod`].
pub const ABI_MINOR: u32 = 1;

/// The symbol under which every plugin library exports its `abi_stable` library header.
///
/// `export_plugin!` writes this name literally (a `macro_rules!` macro cannot take a constant
/// as a symbol name); a test checks it equals `abi_stable::library::ROOT_MODULE_LOADER_NAME`.
pub const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Owned bytes that cross the boundary without a copy.
///
/// The producer keeps ownership of the allocation (`owner`) and gives the consumer a function to
/// release it. The release function lives in the producer's library, which is never unmapped, so
/// it stays callable for as long as the bytes live.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiBytes {
    ptr: *const u8,
    len: usize,
    owner: *mut c_void,
    release: Option<unsafe extern "C" fn(*mut c_void)>,
}

// SAFETY: the owner is required (by every constructor) to be an owned, Send + Sync allocation
// that is only read through `ptr` and released exactly once.
unsafe impl Send for FfiBytes {}
// SAFETY: see above; the bytes are immutable while shared.
unsafe impl Sync for FfiBytes {}

impl FfiBytes {
    /// Empty bytes, owning nothing.
    pub const fn empty() -> Self {
        Self { ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len: 0, owner: std::ptr::null_mut(), release: None }
    }

    /// Wraps any owned byte container. The container is moved to the heap and released by a
    /// function compiled into the calling library.
    pub fn new<T>(owner: T) -> Self
    where
        T: AsRef<[u8]> + Send + Sync + 'static,
    {
        unsafe extern "C" fn release<T>(owner: *mut c_void) {
            // SAFETY: `owner` came from `Box::into_raw(Box<T>)` in `FfiBytes::new::<T>` and is
            // released exactly once (by `Drop`).
            drop(unsafe { Box::from_raw(owner.cast::<T>()) });
        }
        let boxed = Box::new(owner);
        let slice = (*boxed).as_ref();
        let (ptr, len) = (slice.as_ptr(), slice.len());
        Self { ptr, len, owner: Box::into_raw(boxed).cast(), release: Some(release::<T>) }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` describe memory owned by `owner`, alive until `self` drops; for
        // `empty()` the pointer is dangling but the length is zero.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for FfiBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for FfiBytes {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            // SAFETY: `release` matches how `owner` was allocated (see `new`).
            unsafe { release(self.owner) }
        }
    }
}

impl std::fmt::Debug for FfiBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiBytes").field("len", &self.len).finish()
    }
}

/// Why a plugin call failed. The host maps the code to a gRPC status.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginError {
    /// One of the `ERR_*` constants.
    pub code: u32,
    /// A message for the caller; the host adds the plugin's name and version.
    pub message: RString,
}

/// The agent failed (its own error): gRPC `INTERNAL`.
pub const ERR_AGENT: u32 = 1;
/// The agent panicked; the panic was caught: gRPC `INTERNAL`.
pub const ERR_PANIC: u32 = 2;
/// The request bytes did not decode: gRPC `INVALID_ARGUMENT`.
pub const ERR_INVALID: u32 = 3;
/// The agent does not implement the method: gRPC `UNIMPLEMENTED`.
pub const ERR_UNIMPLEMENTED: u32 = 4;
/// The agent index or method is unknown to the plugin: gRPC `NOT_FOUND`.
pub const ERR_NOT_FOUND: u32 = 5;
/// A precondition failed, e.g. a resource meta in a format this version cannot read:
/// gRPC `FAILED_PRECONDITION`.
pub const ERR_PRECONDITION: u32 = 6;

/// The RPCs a plugin serves, as passed in `call` and `open_stream`.
///
/// Flyte 1 requests carry `flyteidl.admin` messages, Flyte 2 requests `flyteidl2.connector`
/// ones; responses are encoded in the same protocol as the request.
pub mod method {
    /// Flyte 1 `AsyncAgentService/CreateTask`.
    pub const V1_CREATE: u32 = 1;
    /// Flyte 1 `AsyncAgentService/GetTask`.
    pub const V1_GET: u32 = 2;
    /// Flyte 1 `AsyncAgentService/DeleteTask`.
    pub const V1_DELETE: u32 = 3;
    /// Flyte 1 `AsyncAgentService/GetTaskMetrics`.
    pub const V1_METRICS: u32 = 4;
    /// Flyte 1 `AsyncAgentService/GetTaskLogs` (a stream).
    pub const V1_LOGS: u32 = 5;
    /// Flyte 1 `SyncAgentService/ExecuteTaskSync`: the request is an
    /// `agenthost.plugin.v1.ExecuteRequest` (header and inputs of the client stream), the
    /// response an `ExecuteTaskSyncResponse`.
    pub const V1_EXECUTE: u32 = 6;
    /// Flyte 2 `AsyncConnectorService/CreateTask`.
    pub const V2_CREATE: u32 = 11;
    /// Flyte 2 `AsyncConnectorService/GetTask`.
    pub const V2_GET: u32 = 12;
    /// Flyte 2 `AsyncConnectorService/DeleteTask`.
    pub const V2_DELETE: u32 = 13;
    /// Flyte 2 `AsyncConnectorService/GetTaskMetrics`.
    pub const V2_METRICS: u32 = 14;
    /// Flyte 2 `AsyncConnectorService/GetTaskLogs` (a stream).
    pub const V2_LOGS: u32 = 15;
}

/// The result of one call.
pub type CallResult = RResult<FfiBytes, PluginError>;

/// Services the host lends a plugin at `init`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostServices {
    /// The host's state for this library, passed back with every service call.
    pub ctx: *const c_void,
    /// The host's log sink: `level` is 1 (error) to 5 (trace); `target` the module path in the
    /// plugin; `message` the formatted event with its fields. The host adds the plugin's name
    /// and version (it knows them from `ctx`).
    pub log: extern "C" fn(ctx: *const c_void, level: u8, target: RStr<'_>, message: RStr<'_>),
}

// SAFETY: the host guarantees `ctx` points to immutable data that lives as long as the library
// (it is leaked with it) and its log function is thread-safe.
unsafe impl Send for HostServices {}
// SAFETY: as above.
unsafe impl Sync for HostServices {}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices").finish_non_exhaustive()
    }
}

/// A stream of response messages (server-streaming RPCs), driven by the host.
///
/// The state is owned by the plugin; `next` yields the next message, `RNone` at the end;
/// `close` releases it (exactly once, also when the client goes away early).
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiStream {
    /// Opaque plugin state.
    pub state: *mut c_void,
    /// Next item of the stream.
    pub next: unsafe extern "C" fn(state: *mut c_void) -> FfiFuture<ROption<CallResult>>,
    /// Releases the state; no `next` after this.
    pub close: unsafe extern "C" fn(state: *mut c_void),
}

// SAFETY: the SDK builds `state` from a `Send` stream and only touches it through `next`/`close`,
// which the host never calls concurrently (it holds the stream by `&mut`).
unsafe impl Send for FfiStream {}

/// The root module of a plugin library.
///
/// Append-only: new fields go after `shutdown`, each released in a new minor version.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// Encoded `agenthost.plugin.v1.PluginDescriptor`: name, version, ABI, build facts, agents.
    pub describe: extern "C" fn() -> FfiBytes,
    /// Starts the plugin with an encoded `agenthost.plugin.v1.InitRequest` and the host's log
    /// services. Called once per loaded library, before any call. An error refuses the plugin.
    pub init: extern "C" fn(request: FfiBytes, host: HostServices) -> RResult<(), RString>,
    /// One unary RPC for agent number `agent` (its index in the descriptor).
    /// Dropping the future cancels the call.
    pub call: extern "C" fn(agent: u32, method: u32, request: FfiBytes) -> FfiFuture<CallResult>,
    /// One server-streaming RPC.
    pub open_stream: extern "C" fn(agent: u32, method: u32, request: FfiBytes) -> FfiFuture<RResult<FfiStream, PluginError>>,
    /// Stops the plugin's runtime. Called once, after the last call on this library ended.
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(),
    /// ABI 1.1: an encoded `agenthost.plugin.v1.RuntimeStats` of the plugin's own runtime
    /// (tasks alive, workers), for the status page. Plugins built for 1.0 lack it: read it through
    /// `PluginModRef::runtime_stats()`, which is `None` then.
    pub runtime_stats: extern "C" fn() -> FfiBytes,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "agent_plugin";
    const NAME: &'static str = "agent_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Items the `export_plugin!` macro expands to. Not an API.
#[doc(hidden)]
pub mod __export {
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, IntoRootModuleResult, LibHeader, RootModule, RootModuleResult,
    };
    pub use abi_stable::prefix_type::{PrefixTypeTrait, WithMetadata};
    pub use abi_stable::std_types::{RErr, ROk, ROption, RResult, RStr, RString};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_symbol_matches_abi_stable() {
        assert_eq!(ROOT_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }

    #[test]
    fn ffi_bytes_round_trip_without_copy() {
        let v = vec![1u8, 2, 3];
        let p = v.as_ptr();
        let b = FfiBytes::new(v);
        assert_eq!(b.as_slice(), &[1, 2, 3]);
        assert_eq!(b.as_slice().as_ptr(), p, "the allocation is shared, not copied");
        assert!(FfiBytes::empty().is_empty());
    }

    #[test]
    fn abi_minor_matches_crate_version() {
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(v.split('.').next().unwrap(), ABI_MAJOR.to_string());
        assert_eq!(v.split('.').nth(1).unwrap(), ABI_MINOR.to_string());
    }
}
