//! The chat agent against a local OpenAI-compatible server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use agent_plugin_api::{serde_json::json, testing::Harness, Context, Phase, Protocol, TaskRequest};
use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Json, Router};
use chat_plugin::Chat;
use serde_json::Value;

/// What the server saw: the body and the two headers the agent sets.
type Seen = Arc<Mutex<Vec<(Value, Option<String>, Option<String>)>>>;

async fn completions(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    seen.lock().unwrap().push((body.clone(), header("authorization"), header("openai-organization")));
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
    match prompt.as_str() {
        "rate limit" => (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"message": "slow down"}}))),
        "bad" => (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "model not found"}}))),
        _ => (
            StatusCode::OK,
            Json(json!({"id": "c1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("you said: {prompt}")}, "finish_reason": "stop"}]})),
        ),
    }
}

fn server() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let state = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), seen)
}

/// `custom` as `ChatGPTTask.get_custom` writes it.
fn task(message: &str) -> TaskRequest {
    TaskRequest::new("chatgpt")
        .with_custom(
            json!({"openai_organization": "org-123", "chatgpt_config": {"model": "gpt-4o-mini", "temperature": 0.7, "max_tokens": 64}}),
        )
        .with_input("message", message)
}

fn config(addr: SocketAddr) -> Value {
    json!({"base_url": format!("http://{addr}/v1/")})
}

#[test]
fn the_answer_is_output_o0_on_both_protocols() {
    let (addr, seen) = server();
    for protocol in [Protocol::V1, Protocol::V2] {
        // Flyte 2: the key comes with the task's connection (Flyte 1 sends none).
        let ctx = Context::for_tests(config(addr)).with_secret("FLYTE_OPENAI_API_KEY", "sk-connection");
        let done = Harness::for_sync::<Chat>(ctx).unwrap().protocol(protocol).run(task("hello")).unwrap();
        if protocol == Protocol::V1 {
            assert_eq!(done.phase, Phase::Failed, "no key on Flyte 1 without env or file");
            continue;
        }
        assert_eq!(done.phase, Phase::Succeeded, "{}", done.message);
        assert_eq!(done.outputs.unwrap().read::<String>("o0").unwrap(), "you said: hello");
    }
    let (body, authorization, org) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        body,
        json!({"model": "gpt-4o-mini", "temperature": 0.7, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]})
    );
    assert_eq!(authorization.as_deref(), Some("Bearer sk-connection"));
    assert_eq!(org.as_deref(), Some("org-123"));
}

#[test]
fn the_key_comes_from_fsec_env_or_a_file_as_in_flytekit() {
    let (addr, seen) = server();
    let dir = std::env::temp_dir().join(format!("chat-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("flyte_openai_api_key"), "sk-file\n").unwrap();
    let from_file = Harness::for_sync::<Chat>(Context::for_tests(config(addr)).with_secrets_dir(&dir)).unwrap();
    assert_eq!(from_file.run(task("a")).unwrap().phase, Phase::Succeeded);
    assert_eq!(seen.lock().unwrap()[0].1.as_deref(), Some("Bearer sk-file"));
    // A custom group and key, from the environment.
    std::env::set_var("_FSEC_LLM_TOKEN", "sk-env");
    let ctx = Context::for_tests(json!({"base_url": format!("http://{addr}/v1"), "secret_group": "llm", "secret_key": "token"}));
    assert_eq!(Harness::for_sync::<Chat>(ctx).unwrap().run(task("b")).unwrap().phase, Phase::Succeeded);
    assert_eq!(seen.lock().unwrap()[1].1.as_deref(), Some("Bearer sk-env"));
}

#[test]
fn a_missing_key_fails_unless_not_required() {
    let (addr, seen) = server();
    let dir = std::env::temp_dir().join(format!("chat-no-secrets-{}", std::process::id()));
    let done = Harness::for_sync::<Chat>(Context::for_tests(config(addr)).with_secrets_dir(&dir)).unwrap().run(task("x")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("_FSEC_FLYTE_OPENAI_API_KEY"), "{}", done.message);
    let ctx = Context::for_tests(json!({"base_url": format!("http://{addr}/v1"), "require_api_key": false})).with_secrets_dir(&dir);
    let done = Harness::for_sync::<Chat>(ctx).unwrap().run(task("x")).unwrap();
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(seen.lock().unwrap()[0].1, None, "no Authorization header without a key");
}

#[test]
fn api_errors_fail_for_good_or_for_a_retry() {
    let (addr, _) = server();
    let h = Harness::for_sync::<Chat>(Context::for_tests(config(addr)).with_secret("FLYTE_OPENAI_API_KEY", "k"))
        .unwrap()
        .protocol(Protocol::V2);
    let done = h.run(task("rate limit")).unwrap();
    assert_eq!((done.phase, &*done.message), (Phase::RetryableFailed, "the chat API answered 429: slow down"));
    let done = h.run(task("bad")).unwrap();
    assert_eq!((done.phase, &*done.message), (Phase::Failed, "the chat API answered 400: model not found"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ctx = Context::for_tests(json!({"base_url": format!("http://127.0.0.1:{port}/v1")})).with_secret("FLYTE_OPENAI_API_KEY", "k");
    let done = Harness::for_sync::<Chat>(ctx).unwrap().protocol(Protocol::V2).run(task("x")).unwrap();
    assert_eq!(done.phase, Phase::RetryableFailed, "{}", done.message);
    let no_model = TaskRequest::new("chatgpt").with_custom(json!({"chatgpt_config": {}})).with_input("message", "x");
    assert_eq!(h.run(no_model).unwrap().phase, Phase::Failed);
}
