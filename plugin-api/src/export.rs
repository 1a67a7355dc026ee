//! The `export_plugin!` macro.

/// Exports a plugin library's agents to agent-host.
///
/// Put it once in the `cdylib` crate's `lib.rs`; list every agent with its kind:
///
/// ```ignore
/// agent_plugin_api::export_plugin!(name: "echo", agents: [sync EchoSync, async EchoAsync]);
/// ```
///
/// The plugin's version is its crate's version unless given as `version: "…"` after the name.
///
/// It generates the library's root module (the `abi_stable` header the host looks for), stamps
/// the plugin's name, its crate version, the ABI version and the panic strategy into its
/// descriptor, and routes every call to the agents under panic guards. The crate must be built
/// with `panic = "unwind"` (the default): the host refuses `panic = "abort"` builds, whose
/// panics would end the host process.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, agents: [$($kind:ident $agent:ty),+ $(,)?] $(,)?) => {
        $crate::export_plugin!(name: $name, version: env!("CARGO_PKG_VERSION"), agents: [$($kind $agent),+]);
    };
    (name: $name:expr, version: $version:expr, agents: [$($kind:ident $agent:ty),+ $(,)?] $(,)?) => {
        #[doc(hidden)]
        mod __agent_plugin_export {
            #[allow(unused_imports)]
            use super::*;
            use $crate::__private as p;

            static SPEC: p::PluginSpec = p::PluginSpec {
                name: $name,
                version: $version,
                panic_unwind: cfg!(panic = "unwind"),
                agents: &[$($crate::__agent_spec!($kind $agent)),+],
            };

            extern "C" fn describe() -> p::abi::FfiBytes {
                p::describe(&SPEC)
            }
            extern "C" fn init(request: p::abi::FfiBytes, host: p::abi::HostServices) -> p::abi::__export::RResult<(), p::abi::__export::RString> {
                p::init(&SPEC, request, host)
            }
            extern "C" fn call(agent: u32, method: u32, request: p::abi::FfiBytes) -> p::abi::FfiFuture<p::abi::CallResult> {
                p::call(agent, method, request)
            }
            extern "C" fn open_stream(
                agent: u32,
                method: u32,
                request: p::abi::FfiBytes,
            ) -> p::abi::FfiFuture<p::abi::__export::RResult<p::abi::FfiStream, p::abi::PluginError>> {
                p::open_stream(agent, method, request)
            }
            extern "C" fn shutdown() {
                p::shutdown()
            }
            extern "C" fn runtime_stats() -> p::abi::FfiBytes {
                p::runtime_stats()
            }
            fn root_module() -> p::abi::PluginModRef {
                p::root_module(p::abi::PluginMod { describe, init, call, open_stream, shutdown, runtime_stats })
            }
            extern "C" fn load_root_module() -> p::abi::__export::RootModuleResult {
                p::abi::__export::__call_root_module_loader(root_module)
            }

            /// The library header agent-host looks up by name (abi_stable's root module symbol).
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static LIB_HEADER: p::abi::__export::LibHeader = {
                // SAFETY: the constructor returns the root module type the header declares.
                unsafe {
                    p::abi::__export::LibHeader::from_constructor::<p::abi::PluginModRef>(
                        load_root_module,
                        p::abi::__export::CheckTypeLayout::Yes,
                    )
                }
            };
        }
    };
}

/// One entry of `export_plugin!`'s agent list.
#[doc(hidden)]
#[macro_export]
macro_rules! __agent_spec {
    (sync $agent:ty) => {
        $crate::__private::sync_agent::<$agent>()
    };
    (async $agent:ty) => {
        $crate::__private::async_agent::<$agent>()
    };
}
