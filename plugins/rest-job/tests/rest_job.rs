//! The REST job agent against a local job service, driven the way Flyte drives it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use agent_plugin_api::{
    serde_json::json,
    testing::{Harness, Job},
    Context, Phase, Protocol, TaskRequest,
};
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Json, Router,
};
use rest_job_plugin::{JobMeta, RestJob};
use serde_json::Value;

/// A job service: `POST /jobs` (body `{"outcome": "...", ...}`), `GET /jobs/<id>` (PENDING,
/// then RUNNING, then the outcome), `DELETE /jobs/<id>`, `GET /jobs?key=<k>` (lookup).
#[derive(Default)]
struct Service {
    jobs: HashMap<String, (Value, u32, Option<String>)>,
    submissions: u32,
    cancels: Vec<String>,
    authorizations: Vec<Option<String>>,
    idempotency_keys: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Service>>;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn submit(State(s): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    s.authorizations.push(header(&headers, "authorization"));
    s.idempotency_keys.push(header(&headers, "idempotency-key"));
    if body["outcome"] == "REJECT" {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "rejected"})));
    }
    s.submissions += 1;
    let id = format!("job-{}", s.submissions);
    s.jobs.insert(id.clone(), (body, 0, header(&headers, "idempotency-key")));
    (StatusCode::CREATED, Json(json!({"job": {"id": id}})))
}

async fn lookup(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> (StatusCode, Json<Value>) {
    let s = s.lock().unwrap();
    let found = s.jobs.iter().find(|(_, (_, _, key))| key.as_deref() == q.get("key").map(String::as_str));
    match found {
        Some((id, _)) => (StatusCode::OK, Json(json!({"job": {"id": id}}))),
        None => (StatusCode::NOT_FOUND, Json(json!({}))),
    }
}

async fn status(State(s): State<Shared>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    let Some((body, polls, _)) = s.jobs.get_mut(&id) else { return (StatusCode::NOT_FOUND, Json(json!({"error": "no such job"}))) };
    *polls += 1;
    let state = match *polls {
        1 => "PENDING".to_string(),
        2 => "running".to_string(),
        _ => body["outcome"].as_str().unwrap_or("DONE").to_string(),
    };
    (
        StatusCode::OK,
        Json(json!({"status": {"state": state, "detail": format!("poll {polls}")}, "result": {"rows": 42, "table": body["table"]}})),
    )
}

async fn cancel(State(s): State<Shared>, Path(id): Path<String>) -> StatusCode {
    let mut s = s.lock().unwrap();
    match s.jobs.remove(&id) {
        Some(_) => {
            s.cancels.push(id);
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

fn service() -> (SocketAddr, Shared) {
    let shared = Shared::default();
    let state = shared.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/api/jobs", post(submit).get(lookup))
                .route("/api/jobs/{id}", get(status).delete(cancel))
                .with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), shared)
}

/// The plugin configuration: the service's base URL and how it reports; tasks carry their
/// requests in `custom`.
fn config(addr: SocketAddr) -> Value {
    json!({
        "base_url": format!("http://{addr}/api"),
        "defaults": {
            "job_id_path": "job.id",
            "state_path": "status.state",
            "message_path": "status.detail",
            "log_links": [{"name": "Job console", "uri": "https://console.example.com/jobs/{job_id}"}]
        }
    })
}

/// A task's `custom`: submit, status and cancel requests templated from the inputs.
fn task(outcome: &str) -> TaskRequest {
    TaskRequest::new("rest_job")
        .with_custom(json!({
            "submit": {"url": "/jobs", "body": {"outcome": outcome, "table": "{inputs.table}", "limit": "{inputs.limit}", "key": "{idempotency_key}"}},
            "status": {"url": "/jobs/{job_id}"},
            "cancel": {"url": "/jobs/{job_id}"},
            "outputs_path": "result"
        }))
        .with_input("table", "sales")
        .with_input("limit", 10)
}

fn secrets_dir(token: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rest-job-secrets-{}-{token}", std::process::id()));
    std::fs::create_dir_all(dir.join("rest_job")).unwrap();
    std::fs::write(dir.join("rest_job").join("api_token"), format!("{token}\n")).unwrap();
    dir
}

#[test]
fn a_job_runs_to_success_with_outputs_log_links_and_the_token() {
    let (addr, service) = service();
    for protocol in [Protocol::V1, Protocol::V2] {
        // Flyte 1: the token from a file; Flyte 2: from the task's connection.
        let ctx = Context::for_tests(config(addr)).with_secrets_dir(secrets_dir("file-token")).with_secret("api_token", "connection-token");
        let h = Harness::for_async::<RestJob>(ctx).unwrap().protocol(protocol);
        let job = h.create(task("DONE")).unwrap();
        let first = h.get(&job).unwrap();
        assert_eq!(first.phase, Phase::Running, "PENDING is not in any list: RUNNING");
        assert_eq!(first.log_links[0].uri, format!("https://console.example.com/jobs/job-{}", service.lock().unwrap().submissions));
        assert!(first.message.ends_with("PENDING: poll 1"), "{}", first.message);
        assert_eq!(h.get(&job).unwrap().phase, Phase::Running);
        let done = h.get(&job).unwrap();
        assert_eq!(done.phase, Phase::Succeeded, "{}", done.message);
        let outputs = done.outputs.unwrap();
        assert_eq!(outputs.read::<i64>("rows").unwrap(), 42);
        assert_eq!(outputs.read::<String>("table").unwrap(), "sales");
    }
    let s = service.lock().unwrap();
    assert_eq!(s.authorizations, [Some("Bearer file-token".into()), Some("Bearer connection-token".into())]);
    let (body, _, key) = s.jobs["job-1"].clone();
    assert_eq!(body["table"], "sales");
    assert_eq!(body["limit"], 10, "a lone placeholder keeps the input's type");
    assert_eq!(key.as_deref(), Some("test-project/development/test-execution/n0/rest_job/0"));
    assert_eq!(body["key"], "test-project/development/test-execution/n0/rest_job/0");
}

#[test]
fn create_is_idempotent_per_task_execution_id() {
    let (addr, service) = service();
    let h = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    let first = h.create(task("DONE")).unwrap();
    let again = h.create(task("DONE")).unwrap();
    assert_eq!(first.resource_meta, again.resource_meta, "the same job");
    assert_eq!(service.lock().unwrap().submissions, 1, "no second submission");

    // Another host process (no memory of the first): the lookup request finds the job.
    let mut with_lookup = task("DONE");
    let mut custom = agent_plugin_api::json::struct_to_json(with_lookup.template().unwrap().custom.as_ref().unwrap());
    custom["lookup"] = json!({"url": "/jobs?key={idempotency_key}"});
    with_lookup = with_lookup.with_custom(custom);
    let other = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    let found = other.create(with_lookup).unwrap();
    let meta = |job: &Job| serde_json::from_slice::<Value>(&job.resource_meta).unwrap()["meta"]["job_id"].clone();
    assert_eq!(meta(&found), meta(&first));
    assert_eq!(service.lock().unwrap().submissions, 1, "still no second submission");

    // A new attempt is a new key: a new job.
    let mut retry = task("DONE");
    *retry.metadata_mut() = agent_plugin_api::flyte::admin::TaskExecutionMetadata {
        task_execution_id: Some(agent_plugin_api::flyte::core::TaskExecutionIdentifier { retry_attempt: 1, ..Default::default() }),
        ..Default::default()
    };
    h.create(retry).unwrap();
    assert_eq!(service.lock().unwrap().submissions, 2);
}

#[test]
fn delete_cancels_and_succeeds_when_the_job_is_gone() {
    let (addr, service) = service();
    let h = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    let job = h.create(task("DONE")).unwrap();
    // DeleteTask twice: the second finds the job gone (404) and succeeds too.
    h.abort(&job).unwrap();
    assert_eq!(service.lock().unwrap().cancels, ["job-1"]);
    let gone = h.get(&job).unwrap();
    assert_eq!(gone.phase, Phase::Failed);
    assert!(gone.message.contains("job job-1 is gone"), "{}", gone.message);
}

#[test]
fn remote_states_map_to_phases_as_configured() {
    let (addr, _) = service();
    let h = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    // Default lists, any case.
    let done = h.run(task("error")).unwrap();
    assert_eq!((done.phase, &*done.message), (Phase::Failed, "job job-1: error: poll 3"));
    // A task's own mapping.
    let mut custom_states = task("PREEMPTED");
    let mut custom = agent_plugin_api::json::struct_to_json(custom_states.template().unwrap().custom.as_ref().unwrap());
    custom["states"] = json!({"succeeded": ["DONE"], "failed": ["BROKEN"], "retryable": ["PREEMPTED"]});
    custom_states = custom_states.with_custom(custom);
    let other = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    assert_eq!(other.run(custom_states).unwrap().phase, Phase::RetryableFailed);
}

#[test]
fn a_rejected_submission_fails_and_the_token_stays_home() {
    let (addr, service) = service();
    let ctx = Context::for_tests(config(addr)).with_secrets_dir(secrets_dir("secret"));
    let h = Harness::for_async::<RestJob>(ctx).unwrap();
    let done = h.run(task("REJECT")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert_eq!(done.message, "the submit request answered 400: {\"error\":\"rejected\"}");
    // An absolute URL outside the configured base URL gets no token.
    let mut elsewhere = task("DONE");
    let mut custom = agent_plugin_api::json::struct_to_json(elsewhere.template().unwrap().custom.as_ref().unwrap());
    custom["submit"]["url"] = json!(format!("http://localhost:{}/api/jobs", addr.port()));
    elsewhere = elsewhere.with_custom(custom);
    let other = Harness::for_async::<RestJob>(Context::for_tests(config(addr)).with_secrets_dir(secrets_dir("secret"))).unwrap();
    other.create(elsewhere).unwrap();
    assert_eq!(service.lock().unwrap().authorizations, [Some("Bearer secret".into()), None]);
}

#[test]
fn the_plugin_loads_without_configuration_and_says_what_is_missing() {
    let h = Harness::for_async::<RestJob>(Context::for_tests(json!({}))).unwrap();
    let done = h.run(TaskRequest::new("rest_job")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("no `submit` request"), "{}", done.message);
    assert!(Harness::for_async::<RestJob>(Context::for_tests(json!({"base_url": 3}))).is_err(), "a wrong config refuses the plugin");
}

#[test]
fn metadata_holds_what_get_and_delete_need() {
    let (addr, _) = service();
    let h = Harness::for_async::<RestJob>(Context::for_tests(config(addr))).unwrap();
    let job = h.create(task("DONE")).unwrap();
    let meta: JobMeta = serde_json::from_value(serde_json::from_slice::<Value>(&job.resource_meta).unwrap()["meta"].clone()).unwrap();
    assert_eq!(meta.job_id, "job-1");
    assert_eq!(meta.status.url, "/jobs/job-1");
    assert_eq!(meta.cancel.unwrap().url, "/jobs/job-1");
    assert_eq!(meta.log_links[0].uri, "https://console.example.com/jobs/job-1");
}
