//! Who wrote a plugin file, and is it the file it claims to be: permission checks and
//! authenticity, before any byte of the file is copied, checked or mapped.
//!
//! * [`read_plugin_file`] opens the file once (never blocking, so a FIFO named `x.so` cannot
//!   hang the reloader), checks what `fstat` says about *that open file* (a regular file; with
//!   `[permissions] check`: no setuid/setgid bit, not writable by group or other, a trusted
//!   owner, a trusted directory, symlinks that stay inside the plugin directory), and reads it
//!   into memory from the same descriptor. Nothing is checked on one path and read from another.
//! * [`Verifier::verify`] checks those in-memory bytes: their sha256 against an allowlist, or a
//!   minisign signature (`<file>.minisig`, read at the same time) by a trusted key, whose trusted
//!   comment names the plugin, its version and ABI major; an older version than the one serving
//!   is a downgrade. The loader then writes exactly these bytes to its private copy and maps
//!   that copy, so the verified bytes are the loaded bytes; a change of the operator's file
//!   after the read has no effect.

use std::{
    collections::HashSet,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::{
    config::{PermissionsConfig, VerifyConfig, VerifyMode},
    loader::{LoadError, PluginFile},
};

/// The largest signature file read (a minisign signature is about 300 bytes).
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// How plugin files are opened and what is checked about them before they are read.
#[derive(Debug, Clone, Default)]
pub struct FilePolicy {
    /// Apply the ownership and mode checks (non-regular files are refused regardless).
    pub check: bool,
    /// The plugin directory (symlinks must stay inside it, or inside `symlink_roots`).
    pub plugin_dir: PathBuf,
    /// Owners accepted besides root and the effective uid of this process.
    pub trusted_uids: Vec<u32>,
    /// Accept group-writable files and directories.
    pub allow_group_writable: bool,
    /// Other directories symlinks may lead into.
    pub symlink_roots: Vec<PathBuf>,
    /// Read `<file>.minisig` along with the file.
    pub read_signature: bool,
}

impl FilePolicy {
    /// The policy of a configuration.
    pub fn new(permissions: &PermissionsConfig, plugin_dir: &Path, verify: &VerifyConfig) -> FilePolicy {
        FilePolicy {
            check: permissions.check,
            plugin_dir: plugin_dir.to_path_buf(),
            trusted_uids: permissions.trusted_uids.clone(),
            allow_group_writable: permissions.allow_group_writable,
            symlink_roots: permissions.symlink_roots.clone(),
            read_signature: verify.mode == VerifyMode::Signature,
        }
    }

    fn trusted_owner(&self, uid: u32) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        uid == 0 || uid == unsafe { libc::geteuid() } || self.trusted_uids.contains(&uid)
    }

    /// The checks on the file's own inode.
    fn check_file(&self, shown: &Path, meta: &std::fs::Metadata) -> Result<(), LoadError> {
        let mode = meta.permissions().mode();
        if mode & 0o6000 != 0 {
            return Err(LoadError::Setuid(format!("{} has mode {:04o}", shown.display(), mode & 0o7777)));
        }
        if mode & 0o002 != 0 || (mode & 0o020 != 0 && !self.allow_group_writable) {
            let who = if mode & 0o002 != 0 { "every user" } else { "its group" };
            return Err(LoadError::WritableByOthers(format!("{} has mode {:04o}: writable by {who}", shown.display(), mode & 0o7777)));
        }
        if !self.trusted_owner(meta.uid()) {
            return Err(LoadError::UntrustedOwner(format!("{} is owned by uid {}", shown.display(), meta.uid())));
        }
        Ok(())
    }

    /// The checks on a directory whose entries decide what gets loaded.
    fn check_dir(&self, dir: &Path) -> Result<(), LoadError> {
        let meta = std::fs::metadata(dir).map_err(|e| LoadError::Read(format!("{}: {e}", dir.display())))?;
        let mode = meta.permissions().mode();
        if !self.trusted_owner(meta.uid()) {
            return Err(LoadError::UntrustedDir(format!("directory {} is owned by uid {}", dir.display(), meta.uid())));
        }
        // SAFETY: getegid has no preconditions and cannot fail.
        let own_group = meta.gid() == unsafe { libc::getegid() };
        let sticky = mode & 0o1000 != 0;
        // Kubernetes: an emptyDir is 0777 and fsGroup makes it set-group-id, group-owned by the
        // pod's group; only the pod's containers can reach it.
        let kubelet_volume = mode & 0o2000 != 0 && own_group;
        if mode & 0o002 != 0 && !sticky && !kubelet_volume {
            return Err(LoadError::UntrustedDir(format!(
                "directory {} has mode {:04o}: every user can replace its files",
                dir.display(),
                mode & 0o7777
            )));
        }
        if mode & 0o020 != 0 && !own_group && !self.allow_group_writable {
            return Err(LoadError::UntrustedDir(format!(
                "directory {} has mode {:04o}: group {} can replace its files",
                dir.display(),
                mode & 0o7777,
                meta.gid()
            )));
        }
        Ok(())
    }

    /// Where a symlinked plugin file really is, if that is a place symlinks may lead.
    fn resolve_symlink(&self, path: &Path) -> Result<PathBuf, LoadError> {
        let real = std::fs::canonicalize(path).map_err(|e| LoadError::Read(format!("{}: {e}", path.display())))?;
        let inside = |root: &Path| std::fs::canonicalize(root).map(|r| real.starts_with(r)).unwrap_or(false);
        if !self.check || inside(&self.plugin_dir) || self.symlink_roots.iter().any(|r| inside(r)) {
            Ok(real)
        } else {
            Err(LoadError::SymlinkOutside(format!(
                "{} leads to {}, outside the plugin directory (permissions.symlink_roots)",
                path.display(),
                real.display()
            )))
        }
    }
}

/// Opens `path` for reading without following a final symlink and without blocking (a FIFO
/// opens at once), and returns the file with the metadata of what was opened.
fn open_no_block(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY).open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

fn not_regular(shown: &Path, meta: &std::fs::Metadata) -> LoadError {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    LoadError::NotRegularFile(format!("{} is {kind}", shown.display()))
}

/// Reads a plugin file under `policy` (see the module documentation).
pub fn read_plugin_file(path: &Path, policy: &FilePolicy) -> Result<PluginFile, LoadError> {
    let link = std::fs::symlink_metadata(path).map_err(|e| LoadError::Read(e.to_string()))?;
    let real = if link.file_type().is_symlink() { policy.resolve_symlink(path)? } else { path.to_path_buf() };
    let (mut file, meta) = open_no_block(&real).map_err(|e| match e.raw_os_error() {
        // A socket cannot be opened at all.
        Some(libc::ENXIO) | Some(libc::EOPNOTSUPP) => LoadError::NotRegularFile(format!("{} is a socket", path.display())),
        _ => LoadError::Read(format!("{}: {e}", path.display())),
    })?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    if policy.check {
        policy.check_file(path, &meta)?;
        let entry_dir = path.parent().unwrap_or(Path::new("."));
        policy.check_dir(entry_dir)?;
        if let Some(real_dir) = real.parent().filter(|d| *d != entry_dir && std::fs::canonicalize(entry_dir).ok().as_deref() != Some(d)) {
            policy.check_dir(real_dir)?;
        }
    }
    let mut hasher = Sha256::new();
    let bytes = crate::memory::read_into_own_mapping(&mut file, meta.len(), |piece| hasher.update(piece))
        .map_err(|e| LoadError::Read(format!("{}: {e}", path.display())))?;
    let sha256 = hex(&hasher.finalize());
    let signature = if policy.read_signature { read_signature(&signature_path(path))? } else { None };
    Ok(PluginFile { source: path.to_path_buf(), bytes, sha256, signature })
}

/// `<file>.minisig`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

fn read_signature(path: &Path) -> Result<Option<String>, LoadError> {
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Read(format!("{}: {e}", path.display()))),
    };
    let (file, meta) = open_no_block(&real).map_err(|e| LoadError::Read(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let mut text = String::new();
    file.take(MAX_SIGNATURE_BYTES)
        .read_to_string(&mut text)
        .map_err(|_| LoadError::BadSignature(format!("{} is not text", path.display())))?;
    Ok(Some(text))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a signature's trusted comment says about the plugin: `name=… version=… abi=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMeta {
    /// Plugin name.
    pub name: String,
    /// Plugin version (semver).
    pub version: String,
    /// Plugin ABI major version.
    pub abi_major: u32,
}

impl SignedMeta {
    /// Reads the `key=value` words of a trusted comment (other words are ignored).
    pub fn parse(comment: &str) -> Result<SignedMeta, String> {
        let field = |key: &str| comment.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
        let (Some(name), Some(version), Some(abi)) = (field("name"), field("version"), field("abi")) else {
            return Err(format!("the trusted comment {comment:?} does not say name=, version= and abi="));
        };
        semver::Version::parse(version).map_err(|e| format!("the signed version {version:?} is not a semantic version: {e}"))?;
        let abi_major = abi.split('.').next().unwrap_or("").parse().map_err(|_| format!("the signed abi {abi:?} is not a number"))?;
        Ok(SignedMeta { name: name.to_string(), version: version.to_string(), abi_major })
    }
}

/// The authenticity check (`[verify]`).
#[derive(Default)]
pub struct Verifier {
    mode: Option<VerifyMode>,
    allowlist: HashSet<String>,
    keys: Vec<minisign_verify::PublicKey>,
    allow_downgrade: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mode", &self.mode)
            .field("allowlist", &self.allowlist.len())
            .field("keys", &self.keys.len())
            .field("allow_downgrade", &self.allow_downgrade)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `[verify]`; the error names the key at fault.
    pub fn new(config: &VerifyConfig) -> Result<Verifier, String> {
        let mut allowlist = HashSet::new();
        for (i, digest) in config.sha256_allowlist.iter().enumerate() {
            let d = digest.trim().to_ascii_lowercase();
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("verify.sha256_allowlist[{i}] is not a hex sha256 digest: {digest:?}"));
            }
            allowlist.insert(d);
        }
        let mut keys = Vec::new();
        for (i, key) in config.trusted_keys.iter().enumerate() {
            // The base64 line, or a whole minisign.pub file (comment line, then the key).
            let line = key.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
            let parsed = minisign_verify::PublicKey::from_base64(line)
                .map_err(|e| format!("verify.trusted_keys[{i}] is not a minisign public key: {e}"))?;
            keys.push(parsed);
        }
        match config.mode {
            VerifyMode::Allowlist if allowlist.is_empty() => {
                return Err("verify.mode = \"allowlist\" needs verify.sha256_allowlist (it would refuse every plugin)".into())
            }
            VerifyMode::Signature if keys.is_empty() => {
                return Err("verify.mode = \"signature\" needs verify.trusted_keys (it would refuse every plugin)".into())
            }
            _ => {}
        }
        Ok(Verifier { mode: Some(config.mode), allowlist, keys, allow_downgrade: config.allow_downgrade })
    }

    /// Whether signatures are required (so `<file>.minisig` must be read with the file).
    pub fn wants_signature(&self) -> bool {
        self.mode == Some(VerifyMode::Signature)
    }

    /// Checks the bytes of `file`. `serving` lists the (plugin name, version) pairs serving now,
    /// for the downgrade rule. Returns what a signature says, to compare with the descriptor.
    pub fn verify(&self, file: &PluginFile, serving: &[(String, String)]) -> Result<Option<SignedMeta>, LoadError> {
        match self.mode {
            None | Some(VerifyMode::Off) => Ok(None),
            Some(VerifyMode::Allowlist) => {
                if self.allowlist.contains(&file.sha256) {
                    Ok(None)
                } else {
                    Err(LoadError::NotAllowlisted(file.sha256.clone()))
                }
            }
            Some(VerifyMode::Signature) => self.verify_signature(file, serving).map(Some),
        }
    }

    fn verify_signature(&self, file: &PluginFile, serving: &[(String, String)]) -> Result<SignedMeta, LoadError> {
        let sig_path = signature_path(&file.source);
        let Some(text) = &file.signature else {
            return Err(LoadError::Unsigned(format!("no signature {}", sig_path.display())));
        };
        let signature = minisign_verify::Signature::decode(text)
            .map_err(|e| LoadError::BadSignature(format!("{} is not a minisign signature: {e}", sig_path.display())))?;
        let mut matched = false;
        for key in &self.keys {
            match key.verify(&file.bytes, &signature, false) {
                Ok(()) => {
                    matched = true;
                    break;
                }
                Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                Err(e) => return Err(LoadError::BadSignature(format!("{}: {e}", sig_path.display()))),
            }
        }
        if !matched {
            return Err(LoadError::UntrustedKey(format!("{} was made with a key not in verify.trusted_keys", sig_path.display())));
        }
        let meta = SignedMeta::parse(signature.trusted_comment()).map_err(LoadError::SignedMetadata)?;
        if meta.abi_major != agent_plugin_abi::ABI_MAJOR {
            return Err(LoadError::AbiMajor(meta.abi_major));
        }
        if !self.allow_downgrade {
            let signed = semver::Version::parse(&meta.version).expect("checked by SignedMeta::parse");
            for (name, version) in serving.iter().filter(|(n, _)| *n == meta.name) {
                if semver::Version::parse(version).is_ok_and(|v| v > signed) {
                    return Err(LoadError::Downgrade(format!(
                        "signed version {} of plugin {name} is older than version {version}, serving (verify.allow_downgrade)",
                        meta.version
                    )));
                }
            }
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_comments_name_the_plugin() {
        let m = SignedMeta::parse("timestamp:1 name=echo version=0.2.0 abi=1").unwrap();
        assert_eq!(m, SignedMeta { name: "echo".into(), version: "0.2.0".into(), abi_major: 1 });
        assert!(SignedMeta::parse("timestamp:1").is_err());
        assert!(SignedMeta::parse("name=echo version=two abi=1").is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("agent-host-verify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.so");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_plugin_file(&fifo, &FilePolicy::default()).unwrap_err();
        assert_eq!(e.reason(), "not_regular_file", "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
