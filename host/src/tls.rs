//! TLS and mutual TLS on the gRPC port (rustls), with certificates reloaded when their files
//! change.
//!
//! Plaintext stays the default: FlytePropeller's connector client defaults to `insecure: true`.
//! With `[server.tls]` set, every connection is a TLS handshake offering only `h2`; with a
//! `client_ca_file`, clients must present a certificate signed by it. The files are checked
//! every `reload_interval_ms`: a changed set is loaded for new handshakes (open connections keep
//! theirs), and a set that fails to load is reported and ignored, so a half-rotated secret never
//! takes the port down.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::wrappers::ReceiverStream;

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates; set it to require mutual TLS.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes, in ms.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    2000
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls configuration from the files.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| format!("{}: {e}", tls.key_file.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("the certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies a version of the files without reading them.
fn stamp(tls: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    std::iter::once(&tls.cert_file)
        .chain(std::iter::once(&tls.key_file))
        .chain(tls.client_ca_file.iter())
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// The current TLS configuration, swapped when the files change.
#[derive(Debug)]
pub struct Tls {
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Loads the files (an error here stops the host from starting: nothing to serve with).
    pub fn new(files: TlsConfig) -> Result<Arc<Tls>, String> {
        let current = ArcSwap::new(server_config(&files)?);
        Ok(Arc::new(Tls { files, current }))
    }

    /// Follows the files until the process ends.
    fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut seen = stamp(&self.files);
            let every = Duration::from_millis(self.files.reload_interval_ms.max(100));
            loop {
                tokio::time::sleep(every).await;
                let now = stamp(&self.files);
                if now == seen {
                    continue;
                }
                seen = now;
                match server_config(&self.files) {
                    Ok(config) => {
                        self.current.store(config);
                        tracing::info!("TLS certificate files changed: new handshakes use them");
                    }
                    Err(e) => tracing::error!(error = %e, "TLS certificate files changed but do not load; keeping the previous ones"),
                }
            }
        });
    }
}

/// The TLS connections of `listener`: handshakes run concurrently (a slow or failing client
/// never holds up others) and end after 10 s. Dropping the stream closes the listener.
pub fn incoming(listener: TcpListener, tls: Arc<Tls>) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tls.clone().watch();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => break,
            };
            // As on the plaintext port: small answers must not wait for the peer's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
