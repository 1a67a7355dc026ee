//! The HTTP client builder of the agents shipped with agent-host (`webhook`, `rest-job`,
//! `chat`), for plugin authors who want the same: a `reqwest` builder whose trusted roots are
//! what flytekit's agents trust.
//!
//! * **By default, Mozilla's root program**, compiled in (`webpki-roots`). flytekit's agents
//!   call out through httpx, which trusts `certifi`'s copy of the same program.
//! * **When `SSL_CERT_FILE` is set** (and not empty) in the host's environment, the
//!   certificates of that PEM file and no others; **else when `SSL_CERT_DIR` is**, those of the
//!   files in its directories (`:`-separated). That is httpx's rule, the way to trust a private
//!   CA. A file or directory that cannot be read, or that holds no certificate, fails the build
//!   of the client (so the plugin's `init`), with the variable and the path in the message,
//!   instead of every call failing later with an unknown issuer.
//!
//! Why the choice is made here rather than left to reqwest's features: the sensor agent's
//! `object_store` turns on reqwest's system-roots feature, and cargo unifies features across the
//! packages of one build, so with reqwest's defaults the webhook agent trusted the system store
//! when built beside the sensor and Mozilla's roots when built alone. Reading the system store
//! the way reqwest does (the bundle, then every file of `/etc/ssl/certs`: about 300 file
//! operations) also cost each client 3-5 ms, paid at each load by the host and by its check
//! process (BENCHMARKS.md, thirteenth round).

use std::ffi::OsStr;
use std::path::Path;

/// Where a client's trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// Mozilla's root program, compiled in.
    Mozilla,
    /// The certificates named by the environment.
    FromEnv {
        /// `SSL_CERT_FILE=<path>` or `SSL_CERT_DIR=<dirs>`.
        source: String,
        /// The certificates, DER-encoded, each one a valid trust anchor.
        certificates: Vec<Vec<u8>>,
    },
}

impl Roots {
    /// The roots the host's environment asks for ([`Roots::from_vars`] of `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`).
    pub fn from_env() -> Result<Roots, String> {
        Roots::from_vars(std::env::var_os("SSL_CERT_FILE").as_deref(), std::env::var_os("SSL_CERT_DIR").as_deref())
    }

    /// The roots for these values of `SSL_CERT_FILE` and `SSL_CERT_DIR`; empty counts as unset,
    /// as it does for httpx, and the file, when set, wins over the directories.
    pub fn from_vars(file: Option<&OsStr>, dirs: Option<&OsStr>) -> Result<Roots, String> {
        let (file, dirs) = (file.filter(|f| !f.is_empty()), dirs.filter(|d| !d.is_empty()));
        let (source, loaded) = match (file, dirs) {
            (None, None) => return Ok(Roots::Mozilla),
            (Some(file), _) => {
                let file = Path::new(file);
                (format!("SSL_CERT_FILE={}", file.display()), rustls_native_certs::load_certs_from_paths(Some(file), None))
            }
            (None, Some(dirs)) => {
                let mut all = rustls_native_certs::CertificateResult::default();
                for dir in std::env::split_paths(dirs).filter(|d| !d.as_os_str().is_empty()) {
                    let mut one = rustls_native_certs::load_certs_from_paths(None, Some(&dir));
                    all.certs.append(&mut one.certs);
                    all.errors.append(&mut one.errors);
                }
                (format!("SSL_CERT_DIR={}", Path::new(dirs).display()), all)
            }
        };
        if let Some(e) = loaded.errors.first() {
            return Err(format!("{source}: {e}"));
        }
        // What rustls would refuse as a root (reqwest fails the whole client on one) is left out,
        // as reqwest does with the system store.
        let mut certificates: Vec<Vec<u8>> =
            loaded.certs.iter().filter(|c| webpki::anchor_from_trusted_cert(c).is_ok()).map(|c| c.to_vec()).collect();
        certificates.sort_unstable();
        certificates.dedup();
        if certificates.is_empty() {
            return Err(format!("{source}: no certificate to trust there (PEM `CERTIFICATE` blocks)"));
        }
        Ok(Roots::FromEnv { source, certificates })
    }
}

/// A `reqwest` client builder trusting `roots` and nothing else.
pub fn builder_with(roots: &Roots) -> reqwest::ClientBuilder {
    match roots {
        Roots::Mozilla => reqwest::Client::builder().tls_built_in_webpki_certs(true).tls_built_in_native_certs(false),
        Roots::FromEnv { certificates, .. } => certificates
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .fold(reqwest::Client::builder().tls_built_in_root_certs(false), reqwest::ClientBuilder::add_root_certificate),
    }
}

/// A `reqwest` client builder trusting the roots the host's environment asks for
/// ([`Roots::from_env`]); `Err` says which variable names what cannot be used.
pub fn builder() -> Result<reqwest::ClientBuilder, String> {
    Ok(builder_with(&Roots::from_env()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls/ca.pem")
    }

    #[test]
    fn mozilla_unless_a_variable_is_set() {
        assert_eq!(Roots::from_vars(None, None), Ok(Roots::Mozilla));
        assert_eq!(Roots::from_vars(Some(OsStr::new("")), Some(OsStr::new(""))), Ok(Roots::Mozilla), "empty is unset");
    }

    #[test]
    fn the_file_wins_over_the_directories() {
        let Ok(Roots::FromEnv { source, certificates }) = Roots::from_vars(Some(ca().as_os_str()), Some(OsStr::new("/no/such/dir"))) else {
            panic!("the file is used")
        };
        assert_eq!(source, format!("SSL_CERT_FILE={}", ca().display()));
        assert_eq!(certificates.len(), 1);
    }

    #[test]
    fn what_cannot_be_used_is_refused_with_the_variable_and_the_path() {
        let err = Roots::from_vars(Some(OsStr::new("/no/such/bundle.pem")), None).unwrap_err();
        assert!(err.starts_with("SSL_CERT_FILE=/no/such/bundle.pem: ") && err.contains("/no/such/bundle.pem"), "{err}");
        let dirs = format!("{}:/no/such/dir", ca().parent().unwrap().display());
        let err = Roots::from_vars(None, Some(OsStr::new(&dirs))).unwrap_err();
        assert!(err.starts_with(&format!("SSL_CERT_DIR={dirs}: ")) && err.contains("/no/such/dir"), "{err}");
        // A file with no certificate in it (this crate's manifest).
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = Roots::from_vars(Some(manifest.as_os_str()), None).unwrap_err();
        assert!(err.ends_with("no certificate to trust there (PEM `CERTIFICATE` blocks)"), "{err}");
    }

    #[test]
    fn a_directory_gives_the_certificates_of_its_files_and_skips_what_is_not_a_root() {
        // tests/tls holds the CA, the server's certificate (not a CA, but rustls takes any
        // certificate as an anchor) and its key (no certificate).
        let dir = ca().parent().unwrap().to_path_buf();
        let Ok(Roots::FromEnv { certificates, .. }) = Roots::from_vars(None, Some(dir.as_os_str())) else { panic!("loaded") };
        assert_eq!(certificates.len(), 2);
    }
}
