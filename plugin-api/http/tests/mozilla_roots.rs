//! With neither SSL_CERT_FILE nor SSL_CERT_DIR set, the client trusts Mozilla's roots only: a
//! server signed by a private CA is refused, however the build unified reqwest's features.
//! (One test per file: the variables are the process's.)

mod common;

#[tokio::test]
async fn without_the_variables_a_private_ca_is_not_trusted() {
    // SAFETY (edition 2021: not `unsafe`): no other thread of this test process reads the
    // environment yet.
    std::env::remove_var("SSL_CERT_FILE");
    std::env::remove_var("SSL_CERT_DIR");
    assert_eq!(agent_plugin_http::Roots::from_env(), Ok(agent_plugin_http::Roots::Mozilla));
    let url = common::https_server().await;
    let client = agent_plugin_http::builder().unwrap().build().unwrap();
    let err = common::get(&client, &url).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The server itself is fine: a client told to trust the test CA gets its answer.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(common::tls_file("ca.pem")).unwrap()).unwrap();
    let trusting = agent_plugin_http::builder().unwrap().add_root_certificate(ca).build().unwrap();
    assert_eq!(common::get(&trusting, &url).await, Ok("ok".to_string()));
}
