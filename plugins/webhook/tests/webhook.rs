//! The webhook agent against a local HTTP server, driven the way Flyte drives it.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use agent_plugin_api::{serde_json::json, testing::Harness, value::Msgpack, Context, Phase, Protocol, Resource, TaskRequest};
use axum::{
    body::Bytes,
    extract::{Path, Query},
    http::{HeaderMap, Method, StatusCode},
    routing::any,
    Router,
};
use serde_json::Value;
use webhook_plugin::Webhook;

/// Answers every request on `/echo` with what it received, as canonical JSON (sorted keys), so
/// that the answer text is comparable across clients.
async fn echo(method: Method, headers: HeaderMap, Query(query): Query<Vec<(String, String)>>, body: Bytes) -> String {
    let body: Value =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into())) };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    json!({
        "method": method.as_str(),
        "query": query,
        "body": body,
        "authorization": header("authorization"),
        "content_type": header("content-type"),
    })
    .to_string()
}

/// A local server on 127.0.0.1 with `/echo`, `/status/<code>` and `/slow`, on its own thread.
fn server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/echo", any(echo))
                .route(
                    "/status/{code}",
                    any(|Path(code): Path<u16>| async move { (StatusCode::from_u16(code).unwrap(), format!("answered {code}")) }),
                )
                .route(
                    "/slow",
                    any(|| async {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        "late"
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// `custom` as flytekit's `WebhookTask.get_custom` writes it.
fn custom(url: String, method: &str, data: Value) -> Value {
    json!({"url": url, "method": method, "headers": {}, "data": data, "show_data": false, "show_url": false, "timeout_sec": 10.0})
}

fn harness(protocol: Protocol) -> Harness {
    Harness::for_sync::<Webhook>(Context::for_tests(json!({}))).unwrap().protocol(protocol)
}

fn info(done: &Resource) -> BTreeMap<String, Value> {
    let Msgpack(info) = done.outputs.as_ref().expect("outputs").read::<Msgpack<BTreeMap<String, Value>>>("info").unwrap();
    info
}

#[test]
fn get_sends_data_as_query_parameters_with_placeholders_filled() {
    let addr = server();
    for protocol in [Protocol::V1, Protocol::V2] {
        let task = TaskRequest::new("webhook")
            .with_custom(custom(
                format!("http://{addr}/echo?fixed={{inputs.name}}"),
                "GET",
                json!({"n": "{inputs.n}", "flag": true, "k": 1}),
            ))
            .with_input("n", 3)
            .with_input("name", "ada");
        let done = harness(protocol).run(task).unwrap();
        assert_eq!((done.phase, &*done.message), (Phase::Succeeded, "Webhook was successfully invoked!"), "{protocol:?}");
        let info = info(&done);
        assert_eq!(info["status_code"], json!(200));
        let answer: Value = serde_json::from_str(info["response_data"].as_str().unwrap()).unwrap();
        assert_eq!(answer["method"], "GET");
        // A Struct number is a float in flytekit, so the query says 1.0; booleans are httpx's `true`.
        assert_eq!(answer["query"], json!([["fixed", "ada"], ["flag", "true"], ["k", "1.0"], ["n", "3"]]));
        assert!(!info.contains_key("input_data") && !info.contains_key("url"), "{info:?}");
    }
}

#[test]
fn post_sends_json_and_shows_data_and_url_when_asked() {
    let addr = server();
    let url = format!("http://{addr}/echo");
    let mut c = custom(url.clone(), "POST", json!({"who": "{inputs.name}", "count": "{inputs.n}", "text": "n is {inputs.n}"}));
    c["show_data"] = json!(true);
    c["show_url"] = json!(true);
    c["headers"] = json!({"Authorization": "Bearer {inputs.name}"});
    let done = harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(c).with_input("n", 3).with_input("name", "ada")).unwrap();
    assert_eq!(done.phase, Phase::Succeeded, "{}", done.message);
    let info = info(&done);
    let answer: Value = serde_json::from_str(info["response_data"].as_str().unwrap()).unwrap();
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["body"], json!({"who": "ada", "count": 3, "text": "n is 3"}));
    assert_eq!(answer["content_type"], "application/json");
    assert_eq!(answer["authorization"], "Bearer ada");
    assert_eq!(info["input_data"], json!({"who": "ada", "count": 3, "text": "n is 3"}));
    assert_eq!(info["url"], json!(url));
}

#[test]
fn a_status_other_than_200_fails_with_flytekits_message() {
    let addr = server();
    for code in [201, 404, 500] {
        let done = harness(Protocol::V1)
            .run(TaskRequest::new("webhook").with_custom(custom(format!("http://{addr}/status/{code}"), "POST", json!({}))))
            .unwrap();
        assert_eq!(done.phase, Phase::Failed);
        assert_eq!(done.message, format!("Webhook failed with status code {code}, response: answered {code}"));
    }
}

#[test]
fn a_refused_connection_fails_with_flytekits_message() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for protocol in [Protocol::V1, Protocol::V2] {
        let done = harness(protocol)
            .run(TaskRequest::new("webhook").with_custom(custom(format!("http://127.0.0.1:{port}/"), "GET", json!({}))))
            .unwrap();
        assert_eq!((done.phase, &*done.message), (Phase::Failed, "All connection attempts failed"));
    }
}

#[test]
fn a_missing_input_or_a_bad_url_fails_with_flytekits_message() {
    let done =
        harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(custom("http://h/{inputs.x}".into(), "GET", json!({})))).unwrap();
    assert_eq!((done.phase, &*done.message), (Phase::Failed, "Could not find the key x in {}."));
    let done = harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(custom("localhost/x".into(), "GET", json!({})))).unwrap();
    assert_eq!(done.message, "Request URL is missing an 'http://' or 'https://' protocol.");
}

#[test]
fn a_slow_endpoint_times_out() {
    let addr = server();
    let mut c = custom(format!("http://{addr}/slow"), "GET", json!({}));
    c["timeout_sec"] = json!(0.3);
    let done = harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(c)).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("timed out"), "{}", done.message);
}

#[test]
fn secrets_fill_secret_placeholders_from_the_connection_env_and_files() {
    let addr = server();
    let c = |header: &str| {
        let mut c = custom(format!("http://{addr}/echo"), "POST", json!({}));
        c["headers"] = json!({"Authorization": header});
        c
    };
    let authorization = |done: &Resource| -> Value {
        assert_eq!(done.phase, Phase::Succeeded, "{}", done.message);
        serde_json::from_str::<Value>(info(done)["response_data"].as_str().unwrap()).unwrap()["authorization"].clone()
    };
    // Flyte 2: the connection's secret.
    let ctx = Context::for_tests(json!({})).with_secret("token", "from-connection");
    let v2 = Harness::for_sync::<Webhook>(ctx).unwrap().protocol(Protocol::V2);
    assert_eq!(
        authorization(&v2.run(TaskRequest::new("webhook").with_custom(c("Bearer {secrets.hooks.token}"))).unwrap()),
        "Bearer from-connection"
    );
    // `_FSEC_<GROUP>_<KEY>`.
    std::env::set_var("_FSEC_WEBHOOKTEST_TOKEN", "from-env");
    let done = harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(c("Bearer {secrets.webhooktest.token}"))).unwrap();
    assert_eq!(authorization(&done), "Bearer from-env");
    // A file under the secrets directory.
    let dir = std::env::temp_dir().join(format!("webhook-secrets-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files").join("token"), "from-file\n").unwrap();
    let from_files = Harness::for_sync::<Webhook>(Context::for_tests(json!({})).with_secrets_dir(&dir)).unwrap();
    assert_eq!(
        authorization(&from_files.run(TaskRequest::new("webhook").with_custom(c("Bearer {secrets.files.token}"))).unwrap()),
        "Bearer from-file"
    );
    // A missing secret fails the task, naming where it looked.
    let done = harness(Protocol::V1).run(TaskRequest::new("webhook").with_custom(c("{secrets.nope.token}"))).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("_FSEC_NOPE_TOKEN"), "{}", done.message);
}
