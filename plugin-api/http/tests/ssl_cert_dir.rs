//! SSL_CERT_DIR names directories of roots to trust; one that cannot be read fails the builder
//! with the variable and the path in the message. (One test per file: the variables are the
//! process's.)

mod common;

use agent_plugin_http::Roots;

#[tokio::test]
async fn ssl_cert_dir_is_read_and_a_missing_one_is_a_clear_error() {
    std::env::remove_var("SSL_CERT_FILE");
    std::env::set_var("SSL_CERT_DIR", "/no/such/certs");
    let err = agent_plugin_http::builder().expect_err("a missing SSL_CERT_DIR is refused");
    assert!(err.starts_with("SSL_CERT_DIR=/no/such/certs: "), "{err}");

    let dir = std::env::temp_dir().join(format!("agent-plugin-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(common::tls_file("ca.pem"), dir.join("ca.pem")).unwrap();
    std::env::set_var("SSL_CERT_DIR", &dir);
    assert!(matches!(Roots::from_env(), Ok(Roots::FromEnv { .. })));
    let url = common::https_server().await;
    let client = agent_plugin_http::builder().unwrap().build().unwrap();
    let answer = common::get(&client, &url).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(answer, Ok("ok".to_string()));
}
