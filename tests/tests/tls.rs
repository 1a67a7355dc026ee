//! TLS and mutual TLS on the gRPC port, and certificate rotation without a restart.

use std::{path::Path, time::Duration};

use agent_host::tls::TlsConfig;
use agent_host_tests::{echo_plugin, unary, TestHost};
use agent_proto::flyteidl::admin;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const LIST: &str = "/flyteidl.service.AgentMetadataService/ListAgents";

/// A CA and a certificate it signed (PEM), for `names`.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap().signed_by(&key, &issuer).unwrap();
    Pki { ca: issuer.pem(), cert: cert.pem(), key: key.serialize_pem(), issuer }
}

/// A client certificate signed by `pki`'s CA.
fn client_identity(pki: &Pki) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["propeller".to_string()]).unwrap().signed_by(&key, &pki.issuer).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

fn write_files(dir: &Path, server: &Pki, client_ca: Option<&str>) -> TlsConfig {
    std::fs::write(dir.join("tls.crt"), &server.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &server.key).unwrap();
    if let Some(ca) = client_ca {
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
    }
    TlsConfig {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
        client_ca_file: client_ca.map(|_| dir.join("ca.crt")),
        reload_interval_ms: 100,
    }
}

async fn list_over_tls(host: &TestHost, ca: &str, identity: Option<Identity>) -> Result<usize, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let endpoint =
        Channel::from_shared(format!("https://localhost:{}", host.addr.port())).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    let ch = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let list: admin::ListAgentsResponse = unary(ch, LIST, admin::ListAgentsRequest {}).await.map_err(|e| format!("{e:?}"))?;
    Ok(list.agents.len())
}

async fn list_plaintext(host: &TestHost) -> Result<usize, String> {
    let ch = Channel::from_shared(format!("http://{}", host.addr)).unwrap().connect().await.map_err(|e| e.to_string())?;
    let list: admin::ListAgentsResponse = unary(ch, LIST, admin::ListAgentsRequest {}).await.map_err(|e| format!("{e:?}"))?;
    Ok(list.agents.len())
}

#[tokio::test]
async fn tls_serves_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(&["localhost"]);
    let files = write_files(dir.path(), &server, None);
    let host = TestHost::start_tls(&[("echo.so", echo_plugin())], files).await;
    assert_eq!(list_over_tls(&host, &server.ca, None).await, Ok(2));
    assert!(list_plaintext(&host).await.is_err(), "a plaintext client gets nothing");
    host.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(&["localhost"]);
    let clients = pki(&["unused"]);
    let files = write_files(dir.path(), &server, Some(&clients.ca));
    let host = TestHost::start_tls(&[("echo.so", echo_plugin())], files).await;
    assert_eq!(list_over_tls(&host, &server.ca, Some(client_identity(&clients))).await, Ok(2));
    assert!(list_over_tls(&host, &server.ca, None).await.is_err(), "no client certificate");
    let strangers = pki(&["unused"]);
    assert!(list_over_tls(&host, &server.ca, Some(client_identity(&strangers))).await.is_err(), "a certificate from another CA");
    host.stop().await;
}

#[tokio::test]
async fn rotated_certificates_are_used_without_a_restart_and_a_bad_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki(&["localhost"]);
    let files = write_files(dir.path(), &first, None);
    let host = TestHost::start_tls(&[("echo.so", echo_plugin())], files).await;
    assert_eq!(list_over_tls(&host, &first.ca, None).await, Ok(2));

    // A half-written rotation (garbage key) is ignored: the old certificate keeps serving.
    std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(list_over_tls(&host, &first.ca, None).await, Ok(2));

    // The real rotation: a certificate from another CA.
    let second = pki(&["localhost"]);
    write_files(dir.path(), &second, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if list_over_tls(&host, &second.ca, None).await == Ok(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(list_over_tls(&host, &first.ca, None).await.is_err(), "the old certificate is no longer offered");
    host.stop().await;
}
