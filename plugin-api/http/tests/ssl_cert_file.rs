//! SSL_CERT_FILE names the roots to trust, and then only those (httpx's rule).
//! (One test per file: the variables are the process's.)

mod common;

use agent_plugin_http::Roots;

#[tokio::test]
async fn ssl_cert_file_replaces_mozillas_roots() {
    std::env::remove_var("SSL_CERT_DIR");
    std::env::set_var("SSL_CERT_FILE", common::tls_file("ca.pem"));
    assert!(matches!(Roots::from_env(), Ok(Roots::FromEnv { .. })));
    let url = common::https_server().await;
    let client = agent_plugin_http::builder().unwrap().build().unwrap();
    assert_eq!(common::get(&client, &url).await, Ok("ok".to_string()));

    // Mozilla's roots, chosen explicitly, do not pick the file up from the environment.
    let mozilla = agent_plugin_http::builder_with(&Roots::Mozilla).build().unwrap();
    let err = common::get(&mozilla, &url).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}
