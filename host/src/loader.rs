//! Loading a plugin library, safely.
//!
//! 0. **Read and verify** ([`crate::verify`]): the file is opened once, its owner and mode
//!    checked on the open descriptor, read into memory, and (with `[verify]`) those bytes are
//!    checked against the allowlist or a minisign signature, before anything else happens.
//! 1. **Private copy.** Those same bytes are written to a private, content-addressed path (an
//!    existing copy is reused only if its content hashes to the same digest). The host never maps the watched file: `cp` over a mapped `.so`
//!    crashes the process, and a later write cannot change what was verified.
//! 2. **Check in a child process** (`agent-host check --json <copy>`): a truncated or hostile
//!    file can kill the process that maps it (SIGBUS inside `dlopen`); the child absorbs that.
//! 3. **Load in-process** with `lib_header_from_path` + `init_root_module`, never abi_stable's
//!    `RootModule::load_from_*`, which caches one module per type and would silently return the
//!    first version of a plugin for every later one.
//! 4. **Init** the plugin with its configuration and the host's log sink.
//!
//! glibc returns an already-loaded library for a path (or a hard link) it has mapped before, with
//! its statics already initialised. So every load maps a file this process has never mapped: the
//! content-addressed copy on that content's first load, otherwise a fresh copy, unlinked once
//! mapped. Libraries are never unmapped (abi_stable leaks them by design; a `dlclose` would
//! leave dangling function pointers behind).

use std::{
    collections::HashSet,
    ffi::c_void,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use abi_stable::library::{lib_header_from_path, LibraryError};
use agent_plugin_abi::{__export::RStr, FfiBytes, HostServices, PluginModRef};
use agent_proto::agenthost::plugin::v1::{InitRequest, PluginDescriptor};
use prost::Message;

use crate::{
    plugin::PluginVersion,
    verify::{FilePolicy, Verifier},
};

/// Why a plugin file was refused. Each variant has a stable `reason()` for metrics and status.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// The file could not be read.
    Read(String),
    /// The private copy could not be written.
    PrivateCopy(String),
    /// The check process could not be run.
    Checker(String),
    /// The check process died on a signal while loading the file (e.g. SIGBUS on a truncated
    /// library): the file would have taken the host down.
    Crashed(String),
    /// The check did not finish in time.
    CheckTimeout(Duration),
    /// The dynamic loader refused the file (not an ELF, wrong machine, missing dependency…).
    OpenError(String),
    /// The library has no agent-host root module: not a plugin.
    NotAPlugin(String),
    /// The plugin was built against an incompatible version of the plugin ABI crate.
    IncompatibleVersion(String),
    /// The plugin's root module layout differs from the host's.
    AbiInstability(String),
    /// The plugin reports an ABI major version the host does not speak.
    AbiMajor(u32),
    /// The plugin was built with `panic = "abort"`: any panic in it would end the host.
    PanicAbort,
    /// The plugin's description is unreadable or inconsistent.
    Describe(String),
    /// The plugin's `init` failed or panicked.
    InitFailed(String),
    /// Another serving plugin already claims one of its task types.
    Conflict(String),
    /// The cap on mapped libraries (`loader.max_libraries`) is reached.
    Limit(String),
    /// Not a regular file (a FIFO, a device, a directory, a socket named `*.so`).
    NotRegularFile(String),
    /// The file has the setuid or setgid bit.
    Setuid(String),
    /// The file is writable by its group or by every user.
    WritableByOthers(String),
    /// The file is owned by a user the host does not trust.
    UntrustedOwner(String),
    /// The directory holding the file lets others replace it, or belongs to another user.
    UntrustedDir(String),
    /// A symlink leads out of the plugin directory.
    SymlinkOutside(String),
    /// `verify.mode = "allowlist"`: the file's sha256 is not listed.
    NotAllowlisted(String),
    /// `verify.mode = "signature"`: no `<file>.minisig`.
    Unsigned(String),
    /// The signature was made with a key that is not trusted.
    UntrustedKey(String),
    /// The signature does not match the file (or does not parse).
    BadSignature(String),
    /// The signature's trusted comment lacks the plugin's name, version or ABI, or the plugin
    /// says it is another plugin or version than what was signed.
    SignedMetadata(String),
    /// A signed build older than the version serving.
    Downgrade(String),
}

impl LoadError {
    /// A stable, short reason (metric label, status field).
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::Read(_) => "read_error",
            LoadError::PrivateCopy(_) => "private_copy",
            LoadError::Checker(_) => "checker",
            LoadError::Crashed(_) => "crashed",
            LoadError::CheckTimeout(_) => "check_timeout",
            LoadError::OpenError(_) => "open_error",
            LoadError::NotAPlugin(_) => "not_a_plugin",
            LoadError::IncompatibleVersion(_) => "incompatible_version",
            LoadError::AbiInstability(_) => "abi_instability",
            LoadError::AbiMajor(_) => "abi_major",
            LoadError::PanicAbort => "panic_abort",
            LoadError::Describe(_) => "describe",
            LoadError::InitFailed(_) => "init_failed",
            LoadError::Conflict(_) => "conflict",
            LoadError::Limit(_) => "max_libraries",
            LoadError::NotRegularFile(_) => "not_regular_file",
            LoadError::Setuid(_) => "setuid",
            LoadError::WritableByOthers(_) => "writable_by_others",
            LoadError::UntrustedOwner(_) => "untrusted_owner",
            LoadError::UntrustedDir(_) => "untrusted_dir",
            LoadError::SymlinkOutside(_) => "symlink_outside",
            LoadError::NotAllowlisted(_) => "not_allowlisted",
            LoadError::Unsigned(_) => "unsigned",
            LoadError::UntrustedKey(_) => "untrusted_key",
            LoadError::BadSignature(_) => "bad_signature",
            LoadError::SignedMetadata(_) => "signed_metadata",
            LoadError::Downgrade(_) => "downgrade",
        }
    }

    /// A failure of the host's own environment (work directory, check process) rather than of
    /// the file: worth retrying with the same content.
    pub fn is_transient(&self) -> bool {
        matches!(self, LoadError::PrivateCopy(_) | LoadError::Checker(_) | LoadError::CheckTimeout(_))
    }

    /// The error's own detail, without the sentence around it (what `from_reason` takes back).
    pub fn detail(&self) -> String {
        match self {
            LoadError::Read(m)
            | LoadError::PrivateCopy(m)
            | LoadError::Checker(m)
            | LoadError::Crashed(m)
            | LoadError::OpenError(m)
            | LoadError::NotAPlugin(m)
            | LoadError::IncompatibleVersion(m)
            | LoadError::AbiInstability(m)
            | LoadError::Describe(m)
            | LoadError::InitFailed(m)
            | LoadError::Conflict(m)
            | LoadError::Limit(m)
            | LoadError::NotRegularFile(m)
            | LoadError::Setuid(m)
            | LoadError::WritableByOthers(m)
            | LoadError::UntrustedOwner(m)
            | LoadError::UntrustedDir(m)
            | LoadError::SymlinkOutside(m)
            | LoadError::NotAllowlisted(m)
            | LoadError::Unsigned(m)
            | LoadError::UntrustedKey(m)
            | LoadError::BadSignature(m)
            | LoadError::SignedMetadata(m)
            | LoadError::Downgrade(m) => m.clone(),
            LoadError::CheckTimeout(d) => d.as_millis().to_string(),
            LoadError::AbiMajor(v) => v.to_string(),
            LoadError::PanicAbort => String::new(),
        }
    }

    /// Rebuilds an error from a reason and message (as the check process reports them).
    pub fn from_reason(reason: &str, message: String) -> LoadError {
        match reason {
            "open_error" => LoadError::OpenError(message),
            "not_a_plugin" => LoadError::NotAPlugin(message),
            "incompatible_version" => LoadError::IncompatibleVersion(message),
            "abi_instability" => LoadError::AbiInstability(message),
            "abi_major" => LoadError::AbiMajor(message.parse().unwrap_or(0)),
            "panic_abort" => LoadError::PanicAbort,
            "init_failed" => LoadError::InitFailed(message),
            _ => LoadError::Describe(message),
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read(m) => write!(f, "cannot read the file: {m}"),
            LoadError::PrivateCopy(m) => write!(f, "cannot write the private copy: {m}"),
            LoadError::Checker(m) => write!(f, "cannot run the plugin check: {m}"),
            LoadError::Crashed(m) => write!(f, "loading the file crashed the check process ({m}); it would have crashed the host"),
            LoadError::CheckTimeout(d) => write!(f, "the plugin check did not finish within {} ms", d.as_millis()),
            LoadError::OpenError(m) => write!(f, "the dynamic loader refused the file: {m}"),
            LoadError::NotAPlugin(m) => write!(f, "not an agent-host plugin (no root module): {m}"),
            LoadError::IncompatibleVersion(m) => write!(f, "built against an incompatible plugin ABI: {m}"),
            LoadError::AbiInstability(m) => write!(f, "its plugin ABI layout differs from the host's: {m}"),
            LoadError::AbiMajor(v) => write!(f, "built for plugin ABI {v}.x; this host speaks {}.x", agent_plugin_abi::ABI_MAJOR),
            LoadError::PanicAbort => {
                write!(f, "built with panic = \"abort\"; rebuild with panic = \"unwind\" (a panic would end the host)")
            }
            LoadError::Describe(m) => write!(f, "its description is unusable: {m}"),
            LoadError::InitFailed(m) => write!(f, "init failed: {m}"),
            LoadError::Conflict(m) | LoadError::Limit(m) => write!(f, "{m}"),
            LoadError::NotRegularFile(m) => write!(f, "not a regular file: {m}"),
            LoadError::Setuid(m) => write!(f, "the setuid/setgid bit is set: {m}"),
            LoadError::WritableByOthers(m) => write!(f, "others could have written the file: {m}"),
            LoadError::UntrustedOwner(m) => write!(f, "the file's owner is not trusted (permissions.trusted_uids): {m}"),
            LoadError::UntrustedDir(m) => write!(f, "the directory is not trusted: {m}"),
            LoadError::SymlinkOutside(m) => write!(f, "the symlink leads out of the plugin directory: {m}"),
            LoadError::NotAllowlisted(m) => write!(f, "sha256 {m} is not in verify.sha256_allowlist"),
            LoadError::Unsigned(m) => write!(f, "unsigned ({m}); verify.mode = \"signature\" needs one"),
            LoadError::UntrustedKey(m) => write!(f, "signed by an untrusted key: {m}"),
            LoadError::BadSignature(m) => write!(f, "the signature does not match the file: {m}"),
            LoadError::SignedMetadata(m) => write!(f, "the signed metadata does not fit: {m}"),
            LoadError::Downgrade(m) => write!(f, "downgrade refused: {m}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The first line of abi_stable's (sometimes page-long) error report.
fn summarize(text: &str) -> String {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut s: String = first.chars().take(300).collect();
    if text.trim().lines().count() > 1 {
        s.push_str(" (…)");
    }
    s
}

fn library_error(e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::OpenError(summarize(&err.to_string())),
        LibraryError::GetSymbolError { err, .. } => LoadError::NotAPlugin(summarize(&err.to_string())),
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => LoadError::IncompatibleVersion(format!(
            "the host expects a 1.x-compatible ABI crate version {expected_version}, the plugin has {actual_version}"
        )),
        LibraryError::AbiInstability(e) => LoadError::AbiInstability(summarize(&e.to_string())),
        LibraryError::RootModule { err, .. } => LoadError::InitFailed(summarize(&err.to_string())),
        other => LoadError::NotAPlugin(summarize(&other.to_string())),
    }
}

/// Maps `path`, checks its ABI and reads its descriptor. Used by the check process and by the
/// in-process load (after the check passed). Never unmaps the library.
pub fn open(path: &Path) -> Result<(PluginModRef, PluginDescriptor), LoadError> {
    let header = lib_header_from_path(path).map_err(library_error)?;
    let module = match header.init_root_module::<PluginModRef>() {
        Ok(module) => module,
        Err(LibraryError::AbiInstability(report)) => older_minor(header, &report.to_string())?,
        Err(e) => return Err(library_error(e)),
    };
    let bytes = (module.describe())();
    let descriptor =
        PluginDescriptor::decode(bytes.as_slice()).map_err(|e| LoadError::Describe(format!("descriptor does not decode: {e}")))?;
    validate(&descriptor)?;
    Ok((module, descriptor))
}

/// Accepts a plugin built for an older minor of the ABI (1.0 in a 1.1 host).
///
/// abi_stable's check (host layout as the interface, the plugin's as the implementation)
/// refuses a plugin whose prefix-type root module has fewer fields than the host's, which is
/// exactly what an older plugin is. The same check the other way round (the plugin's layout as
/// the interface) passes when the plugin's layout is a prefix of ours and nothing else differs;
/// the fields it lacks are then read through their `Option` accessors, which answer `None`.
/// Anything else (a changed field, another type) fails both ways and is refused.
fn older_minor(header: &abi_stable::library::LibHeader, host_to_plugin: &str) -> Result<PluginModRef, LoadError> {
    use abi_stable::{abi_stability::abi_checking::check_layout_compatibility, library::IsLayoutChecked, StableAbi};
    let refused = || LoadError::AbiInstability(summarize(host_to_plugin));
    let IsLayoutChecked::Yes(plugin_layout) = header.root_mod_consts().layout() else {
        return Err(refused());
    };
    check_layout_compatibility(plugin_layout, <PluginModRef as StableAbi>::LAYOUT).map_err(|_| refused())?;
    // SAFETY: the layouts were just checked to agree on every field the plugin has, and the
    // host reads the fields it lacks only through the prefix type's `Option` accessors.
    unsafe { header.unchecked_layout::<PluginModRef>() }.map_err(|e| LoadError::InitFailed(summarize(&e.to_string())))
}

/// The checks on a descriptor, before anything of the plugin runs.
pub fn validate(d: &PluginDescriptor) -> Result<(), LoadError> {
    if d.abi_major != agent_plugin_abi::ABI_MAJOR {
        return Err(LoadError::AbiMajor(d.abi_major));
    }
    if d.panic_strategy != "unwind" {
        return Err(LoadError::PanicAbort);
    }
    if d.name.is_empty() {
        return Err(LoadError::Describe("the plugin has no name".into()));
    }
    if d.agents.is_empty() {
        return Err(LoadError::Describe("the plugin declares no agents".into()));
    }
    for a in &d.agents {
        if a.name.is_empty() || a.categories.is_empty() || a.categories.iter().any(|c| c.name.is_empty()) {
            return Err(LoadError::Describe(format!("agent {:?} has no name or no task type", a.name)));
        }
    }
    Ok(())
}

/// The environment variable through which the loader hands the check process the plugin's
/// `InitRequest` (hex-encoded protobuf), so that the check runs `init` as the host will.
pub const CHECK_INIT_ENV: &str = "AGENT_HOST_CHECK_INIT";

/// In the check process: runs the plugin's `init` with the request in [`CHECK_INIT_ENV`] (if
/// set), then its `shutdown` (waiting at most 2 s for it).
pub fn init_for_check(module: PluginModRef, name: &str, version: &str) -> Result<(), LoadError> {
    let Ok(hex) = std::env::var(CHECK_INIT_ENV) else { return Ok(()) };
    let bytes: Vec<u8> = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    let ctx: &'static LogCtx = Box::leak(Box::new(LogCtx { plugin: name.to_string(), version: version.to_string() }));
    let services = HostServices { ctx: (ctx as *const LogCtx).cast(), log: host_log };
    if let abi_stable::std_types::RResult::RErr(e) = (module.init())(FfiBytes::new(bytes), services) {
        return Err(LoadError::InitFailed(e.into_string()));
    }
    let shutdown = module.shutdown();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| shutdown());
        let _ = done.send(());
    });
    // Woken the moment it returns (a panic drops the sender, which wakes it too).
    let _ = finished.recv_timeout(Duration::from_secs(2));
    Ok(())
}

/// What the loader needs from the host configuration. (`Default` is for tests and tools:
/// no work directory, no checks, no verification.)
#[derive(Debug, Clone, Default)]
pub struct LoaderSettings {
    /// Private copy directory.
    pub work_dir: PathBuf,
    /// The `agent-host` executable that runs `check` (normally this process's own).
    pub check_exe: PathBuf,
    /// Time limit of the check.
    pub check_timeout: Duration,
    /// Plugin runtime worker threads.
    pub worker_threads: u32,
    /// Run every call on its plugin's runtime (config `loader.inline_calls = false`).
    pub no_inline_calls: bool,
    /// Nice value of reading, copying and checking once the host serves (config
    /// `loader.background_nice`; 0: none). See [`Loader::serving`].
    pub background_nice: i32,
    /// Secrets settings handed to plugins.
    pub secrets_dir: String,
    /// Environment secrets prefix.
    pub secrets_env_prefix: String,
    /// Most verbose level a plugin should emit (1 error .. 5 trace).
    pub max_log_level: u32,
    /// Permission checks when reading plugin files ([`Loader::read`]).
    pub files: FilePolicy,
    /// Authenticity checks on the bytes read.
    pub verifier: Arc<Verifier>,
}

/// The plugin loader: private copies, child checks, in-process loads.
#[derive(Debug)]
pub struct Loader {
    settings: LoaderSettings,
    /// Private paths this process has mapped (glibc would return the old mapping for them).
    mapped: Mutex<HashSet<PathBuf>>,
    copies: AtomicU64,
    generations: AtomicU64,
    /// The host serves: loads run at `background_nice` from now on.
    serving: std::sync::atomic::AtomicBool,
}

/// A plugin file verified, copied and checked, ready to be mapped ([`Loader::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    /// The private copy that was checked.
    private: PathBuf,
    bytes: bytes::Bytes,
    sha256: String,
    source: PathBuf,
    signed: Option<crate::verify::SignedMeta>,
    init: InitRequest,
    started: std::time::Instant,
    copied: Duration,
    checked: Duration,
}

/// A plugin file read into memory, with its digest.
#[derive(Debug)]
pub struct PluginFile {
    /// The operator's path.
    pub source: PathBuf,
    /// The content (shared with the threads that copy and map it, never copied in memory).
    pub bytes: bytes::Bytes,
    /// Hex sha256 of the content.
    pub sha256: String,
    /// The text of `<file>.minisig`, when signatures are checked and there is one.
    pub signature: Option<String>,
}

impl PluginFile {
    /// Reads and hashes a plugin file, without the permission checks (but never blocking on a
    /// FIFO, and refusing anything but a regular file).
    pub fn read(source: &Path) -> Result<PluginFile, LoadError> {
        crate::verify::read_plugin_file(source, &FilePolicy::default())
    }
}

/// The per-library context of the host's log sink (leaked with the library).
struct LogCtx {
    plugin: String,
    version: String,
}

extern "C" fn host_log(ctx: *const c_void, level: u8, target: RStr<'_>, message: RStr<'_>) {
    // SAFETY: `ctx` is the leaked `LogCtx` the host passed to this library's `init`.
    let ctx = unsafe { &*ctx.cast::<LogCtx>() };
    let (plugin, version, target, message) = (ctx.plugin.as_str(), ctx.version.as_str(), target.as_str(), message.as_str());
    match level {
        1 => tracing::error!(target: "plugin", plugin, version, module = target, "{message}"),
        2 => tracing::warn!(target: "plugin", plugin, version, module = target, "{message}"),
        3 => tracing::info!(target: "plugin", plugin, version, module = target, "{message}"),
        4 => tracing::debug!(target: "plugin", plugin, version, module = target, "{message}"),
        _ => tracing::trace!(target: "plugin", plugin, version, module = target, "{message}"),
    }
}

impl Loader {
    /// A loader with these settings.
    pub fn new(settings: LoaderSettings) -> Loader {
        Loader {
            settings,
            mapped: Mutex::new(HashSet::new()),
            copies: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            serving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, reading, copying and checking run at `background_nice`: the host serves,
    /// and serving comes first. Until then (the first scan, which readiness waits for) they
    /// run at the host's own priority: nothing is being served that they could slow down, and
    /// start-up must not wait behind whatever else runs on the machine.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    fn nice(&self) -> i32 {
        if self.serving.load(Ordering::Relaxed) {
            self.settings.background_nice
        } else {
            0
        }
    }

    /// Number of libraries mapped so far (they are never unmapped).
    pub fn mapped_libraries(&self) -> usize {
        self.mapped.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Reads a plugin file with the configured permission checks (and its signature, when
    /// signatures are checked). See [`crate::verify::read_plugin_file`].
    pub fn read(&self, path: &Path) -> Result<PluginFile, LoadError> {
        crate::verify::read_plugin_file(path, &self.read_policy())
    }

    /// [`Loader::read`] on a blocking thread: reading and hashing a plugin of several MiB takes
    /// tens of milliseconds that a request thread must not spend.
    pub async fn read_off_thread(&self, path: &Path) -> Result<PluginFile, LoadError> {
        let (path, policy) = (path.to_path_buf(), self.read_policy());
        crate::background::run("plugin-read", self.nice(), move || crate::verify::read_plugin_file(&path, &policy))
            .await
            .unwrap_or_else(|e| Err(LoadError::Read(e)))
    }

    fn read_policy(&self) -> FilePolicy {
        let mut policy = self.settings.files.clone();
        policy.read_signature = self.settings.verifier.wants_signature();
        policy
    }

    /// Writes the content-addressed private copy (atomically) from the verified bytes. A copy
    /// already there (an earlier run's) is replaced, not trusted: the bytes mapped must be the
    /// bytes verified, whatever happened to the work directory meanwhile, and writing them again
    /// costs less than reading and hashing the old copy to check it.
    async fn private_copy(&self, bytes: &bytes::Bytes, sha256: &str) -> Result<PathBuf, LoadError> {
        let dir = &self.settings.work_dir;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LoadError::PrivateCopy(format!("{}: {e}", dir.display())))?;
        }
        let path = dir.join(format!("{sha256}.so"));
        let mapped = self.mapped.lock().unwrap_or_else(|p| p.into_inner()).contains(&path);
        let target = if mapped {
            // This content was mapped before: map a fresh file so the new load gets fresh statics.
            let n = self.copies.fetch_add(1, Ordering::Relaxed);
            dir.join(format!("{sha256}-{}-{n}.so", std::process::id()))
        } else {
            path
        };
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), self.copies.fetch_add(1, Ordering::Relaxed)));
        // In the background (writing several MiB); the bytes are the verified ones, shared.
        let bytes = bytes.clone();
        crate::background::run("plugin-copy", self.nice(), move || {
            write_in_chunks(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &target)).map(|()| target.clone()).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                LoadError::PrivateCopy(format!("{}: {e}", target.display()))
            })
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::PrivateCopy(e)))
    }

    /// Runs `agent-host check --json` on the private copy in a child process, which also runs
    /// the plugin's `init` (with `init`, the request the host will use) and `shutdown`: a library
    /// that maps and describes itself fine can still crash once its code runs (a corrupt TLS
    /// segment takes down the first thread-local access of its runtime), and only the child may
    /// die of that.
    async fn check_in_child(&self, path: &Path, init: &InitRequest) -> Result<(), LoadError> {
        let mut cmd = tokio::process::Command::new(&self.settings.check_exe);
        cmd.arg("check").arg("--json").arg(path).stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd.env(CHECK_INIT_ENV, crate::verify::hex(&init.encode_to_vec()));
        // The check competes with serving for the cores: at background priority (the child
        // lowers its own, so that the spawn itself stays a vfork).
        let nice = self.nice();
        if nice > 0 {
            cmd.env(crate::background::NICE_ENV, nice.to_string());
        }
        let out = tokio::time::timeout(self.settings.check_timeout, cmd.output())
            .await
            .map_err(|_| LoadError::CheckTimeout(self.settings.check_timeout))?
            .map_err(|e| LoadError::Checker(format!("{}: {e}", self.settings.check_exe.display())))?;
        if out.status.success() {
            return Ok(());
        }
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = out.status.signal() {
                return Err(LoadError::Crashed(format!("signal {sig}")));
            }
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        match (report["reason"].as_str(), report["message"].as_str()) {
            (Some(reason), Some(message)) => Err(LoadError::from_reason(reason, message.to_string())),
            // It died without answering: the dynamic loader's own assertions end the process
            // (`_exit(127)`, "Inconsistency detected by ld.so") on some corrupt files. In the
            // host that would have been the end of the host.
            _ => Err(LoadError::Crashed(format!("{}: {}", out.status, summarize(&String::from_utf8_lossy(&out.stderr))))),
        }
    }

    /// Loads a plugin file: verification, private copy, child check, in-process load and init.
    pub async fn load(&self, file: &PluginFile, config_json: String) -> Result<Arc<PluginVersion>, LoadError> {
        self.load_checked(file, config_json, &[]).await
    }

    /// [`Loader::load`], with the (plugin name, version) pairs serving now for the downgrade
    /// rule of `verify.mode = "signature"`.
    pub async fn load_checked(
        &self,
        file: &PluginFile,
        config_json: String,
        serving: &[(String, String)],
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let prepared = self.prepare(file, config_json, serving).await?;
        self.finish(prepared).await
    }

    /// The part of a load that maps nothing in this process: verification, the private copy
    /// and the child check. Several files can be prepared at once (the reloader does, for the
    /// files of one scan); [`Loader::finish`] then maps them one at a time.
    pub async fn prepare(&self, file: &PluginFile, config_json: String, serving: &[(String, String)]) -> Result<Prepared, LoadError> {
        let started = std::time::Instant::now();
        // Before any byte of the file is written anywhere or mapped by any process.
        let signed = self.settings.verifier.verify(file, serving)?;
        let init = InitRequest {
            config_json,
            secrets_dir: self.settings.secrets_dir.clone(),
            secrets_env_prefix: self.settings.secrets_env_prefix.clone(),
            worker_threads: self.settings.worker_threads,
            max_log_level: self.settings.max_log_level,
            no_inline_calls: self.settings.no_inline_calls,
        };
        let mut prepared = Prepared {
            private: PathBuf::new(),
            bytes: file.bytes.clone(),
            sha256: file.sha256.clone(),
            source: file.source.clone(),
            signed,
            init,
            started,
            copied: Duration::ZERO,
            checked: Duration::ZERO,
        };
        self.copy_and_check(&mut prepared).await?;
        Ok(prepared)
    }

    async fn copy_and_check(&self, p: &mut Prepared) -> Result<(), LoadError> {
        p.private = self.private_copy(&p.bytes, &p.sha256).await?;
        p.copied = p.started.elapsed();
        self.check_in_child(&p.private, &p.init).await?;
        p.checked = p.started.elapsed();
        Ok(())
    }

    /// Maps a prepared file in this process and runs the plugin's `init`.
    pub async fn finish(&self, mut prepared: Prepared) -> Result<Arc<PluginVersion>, LoadError> {
        // `open` maps the library: from now on this path must never be mapped again. Mapped
        // already (two files of the same content prepared together): copy and check afresh,
        // since glibc would hand back the library already loaded, statics and all.
        if !self.mapped.lock().unwrap_or_else(|p| p.into_inner()).insert(prepared.private.clone()) {
            self.copy_and_check(&mut prepared).await?;
            self.mapped.lock().unwrap_or_else(|p| p.into_inner()).insert(prepared.private.clone());
        }
        let Prepared { private, sha256, source, signed, init, started, copied, checked, .. } = prepared;
        let fresh_copy = !private.ends_with(format!("{sha256}.so"));
        // dlopen (reading, mapping and relocating megabytes) on a blocking thread.
        let opened = {
            let private = private.clone();
            tokio::task::spawn_blocking(move || {
                // No page trim may run while the dynamic loader maps and relocates this library.
                let _mapping = crate::memory::MAPPING.lock().unwrap_or_else(|p| p.into_inner());
                open(&private)
            })
            .await
            .unwrap_or_else(|e| Err(LoadError::OpenError(format!("the loading thread failed: {e}"))))
        };
        if fresh_copy {
            // The mapping keeps the content; the name is only needed for `dlopen`.
            let _ = std::fs::remove_file(&private);
        }
        let (module, descriptor) = opened?;
        if let Some(signed) = &signed {
            if signed.name != descriptor.name || signed.version != descriptor.version {
                return Err(LoadError::SignedMetadata(format!(
                    "signed as {} {}, the library says it is {} {}",
                    signed.name, signed.version, descriptor.name, descriptor.version
                )));
            }
        }
        let ctx: &'static LogCtx = Box::leak(Box::new(LogCtx { plugin: descriptor.name.clone(), version: descriptor.version.clone() }));
        // The plugin's init (its runtime, its clients) on a blocking thread too.
        let request = init.encode_to_vec();
        let initialised = tokio::task::spawn_blocking(move || {
            let services = HostServices { ctx: (ctx as *const LogCtx).cast(), log: host_log };
            match (module.init())(FfiBytes::new(request), services) {
                abi_stable::std_types::RResult::ROk(()) => Ok(()),
                abi_stable::std_types::RResult::RErr(e) => Err(LoadError::InitFailed(e.into_string())),
            }
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::InitFailed(format!("init panicked across the boundary: {e}"))));
        initialised?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        // Off this runtime thread: the trim walks the allocator's arenas under their locks.
        tokio::task::spawn_blocking(crate::memory::release_free_memory);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            plugin = %descriptor.name,
            copy_ms = ms(copied),
            check_ms = ms(checked - copied),
            load_and_init_ms = ms(started.elapsed() - checked),
            "load timings"
        );
        Ok(Arc::new(PluginVersion::new(module, descriptor, source, sha256, SystemTime::now(), generation)))
    }
}

/// Writes `bytes` to a new file at `path`, 64 KiB at a time. Written at once, the five example
/// plugins' copies took 30-60 ms instead of 7-12 ms in about one start of three on this
/// project's VMs (pinned, 10 starts each way; in 64 KiB pieces never more than 12 ms). The likely
/// cause: one large `write` lets the kernel use page-cache folios of up to 2 MiB, taken from free
/// blocks of that size, which a balloon with free page reporting (`page_reporting_order` 9 here)
/// has handed back to the hypervisor, so each first touch faults in the host. Small writes get
/// small folios, from memory the guest kept.
fn write_in_chunks(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for piece in bytes.chunks(64 * 1024) {
        file.write_all(piece)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_run_at_the_host_priority_until_it_serves_then_at_background_nice() {
        let loader = Loader::new(LoaderSettings { background_nice: 10, ..LoaderSettings::default() });
        assert_eq!(loader.nice(), 0, "the first scan, which readiness waits for, is not lowered");
        loader.serving();
        assert_eq!(loader.nice(), 10);
        let off = Loader::new(LoaderSettings { background_nice: 0, ..LoaderSettings::default() });
        off.serving();
        assert_eq!(off.nice(), 0, "background_nice = 0 never lowers");
    }
}
