//! Running in production: metrics, limits, deadlines, graceful shutdown, configuration errors.

use std::time::{Duration, Instant};

use agent_host_tests::{echo_plugin, http_get, unary, HostProcess, TestHost};
use agent_proto::flyteidl::{admin, core};
use tonic::{transport::Channel, Code};

const CREATE: &str = "/flyteidl.service.AsyncAgentService/CreateTask";
const GET: &str = "/flyteidl.service.AsyncAgentService/GetTask";
const METRICS: &str = "/flyteidl.service.AsyncAgentService/GetTaskMetrics";

fn create(task_type: &str, sleep_ms: Option<u64>) -> admin::CreateTaskRequest {
    let custom = sleep_ms.map(|ms| prost_types::Struct {
        fields: [("echo_sleep_ms".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(ms as f64)) })]
            .into_iter()
            .collect(),
    });
    admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: task_type.into(), custom, ..Default::default() }),
        inputs: Some(core::LiteralMap::default()),
        ..Default::default()
    }
}

/// Sleeps echo cut short (its `echo.cancelled_calls` metrics query).
async fn cancelled_in_plugin(ch: &Channel) -> f64 {
    let req = admin::GetTaskMetricsRequest {
        task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
        resource_meta: br#"{"created_by":"t","inputs":[]}"#.to_vec().into(),
        queries: vec!["echo.cancelled_calls".into()],
        ..Default::default()
    };
    let r: admin::GetTaskMetricsResponse = unary(ch.clone(), METRICS, req).await.unwrap();
    match r.results[0].data.as_ref().and_then(|d| d.fields.get("value")).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::NumberValue(n)) => n,
        other => panic!("no count: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_keep_flytekits_families_and_add_the_hosts() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let meta = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", None)).await.unwrap().resource_meta;
    let get = admin::GetTaskRequest {
        task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
        resource_meta: meta,
        ..Default::default()
    };
    let _: admin::GetTaskResponse = unary(ch.clone(), GET, get).await.unwrap();
    assert_eq!(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("nope", None)).await.unwrap_err().code(), Code::NotFound);

    let (status, text) = http_get(host.admin_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for line in [
        "flyte_connector_requests_success_total{task_type=\"echo_async\",operation=\"create\"} 1",
        "flyte_connector_requests_success_total{task_type=\"echo_async\",operation=\"get\"} 1",
        "flyte_connector_requests_failure_total{task_type=\"nope\",operation=\"create\",error_code=\"404\"} 1",
        "flyte_connector_request_latency_seconds_count{task_type=\"echo_async\",operation=\"create\"} 1",
        "flyte_connector_input_literal_bytes_count{task_type=\"echo_async\"} 1",
        "# TYPE flyte_connector_request_latency_seconds summary",
        "agent_host_plugin_loads_total{plugin=\"echo\"} 1",
        "agent_host_plugins_serving 1",
        "agent_host_calls_in_flight{plugin=\"echo\",agent=\"Echo Async Agent\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    host.stop().await;
}

#[tokio::test]
async fn an_agent_at_its_concurrency_limit_refuses_at_once_and_the_connection_stays_usable() {
    let host = TestHost::start_with(&[("echo.so", echo_plugin())], |c| c.server.max_calls_per_agent = 2).await;
    let ch = host.channel().await;
    let slow: Vec<_> =
        (0..2).map(|_| tokio::spawn(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", Some(1500))))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(t.elapsed() < Duration::from_millis(500), "refused at once, not queued");
    // Other agents are not limited by this one.
    let sync = create("echo_sync", None);
    assert!(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, sync).await.is_ok());
    for s in slow {
        s.await.unwrap().expect("the calls within the limit succeed");
    }
    assert!(
        unary::<_, admin::CreateTaskResponse>(ch, CREATE, create("echo_async", None)).await.is_ok(),
        "same connection, after the burst"
    );
    host.stop().await;
}

#[tokio::test]
async fn the_server_cap_ends_a_hung_call_and_cancels_it_in_the_plugin() {
    let host = TestHost::start_with(&[("echo.so", echo_plugin())], |c| c.server.call_timeout_ms = 300).await;
    let ch = host.channel().await;
    let before = cancelled_in_plugin(&ch).await;
    let t = Instant::now();
    let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", Some(10_000))).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "ended at the cap, took {:?}", t.elapsed());
    // The plugin's task was cancelled, not left sleeping.
    let deadline = Instant::now() + Duration::from_secs(2);
    while cancelled_in_plugin(&ch).await < before + 1.0 {
        assert!(Instant::now() < deadline, "the plugin task was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await;
}

#[tokio::test]
async fn a_client_deadline_cancels_the_plugin_task() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let before = cancelled_in_plugin(&ch).await;
    let mut req = tonic::Request::new(create("echo_async", Some(10_000)));
    req.set_timeout(Duration::from_millis(200));
    let mut client = tonic::client::Grpc::new(ch.clone());
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<admin::CreateTaskRequest, admin::CreateTaskResponse>::default();
    let err = client.unary(req, http::uri::PathAndQuery::from_static(CREATE), codec).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while cancelled_in_plugin(&ch).await < before + 1.0 {
        assert!(Instant::now() < deadline, "the plugin task was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await;
}

async fn watch_health(ch: Channel) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let mut client = tonic::client::Grpc::new(ch);
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<tonic_health::pb::HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Watch");
    client
        .server_streaming(tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: String::new() }), path, codec)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn sigterm_drains_calls_in_flight_then_exits_zero() {
    let mut host = HostProcess::start(&[("echo.so", echo_plugin())], "shutdown_grace_ms = 10000").await;
    let ch = host.channel().await.unwrap();
    let mut health = watch_health(ch.clone()).await;
    assert_eq!(health.message().await.unwrap().unwrap().status, 1, "SERVING before");
    let calls: Vec<_> = (0..10)
        .map(|i| tokio::spawn(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", Some(1000 + 100 * i)))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    host.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(2), health.message()).await.expect("a health transition").unwrap().unwrap();
    assert_eq!(next.status, 2, "NOT_SERVING");
    assert!(signalled.elapsed() < Duration::from_millis(100), "NOT_SERVING took {:?}", signalled.elapsed());
    // New connections are refused while the calls drain.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(std::net::TcpStream::connect(host.addr).is_err(), "the listener is closed");
    for c in calls {
        c.await.unwrap().expect("every call in flight completes");
    }
    let status = tokio::task::spawn_blocking(move || host.child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5), "exited {:?} after SIGTERM", signalled.elapsed());
}

#[tokio::test]
async fn a_short_grace_period_ends_long_calls_with_unavailable_and_exits_on_time() {
    let mut host = HostProcess::start(&[("echo.so", echo_plugin())], "shutdown_grace_ms = 500").await;
    let ch = host.channel().await.unwrap();
    let calls: Vec<_> =
        (0..5).map(|_| tokio::spawn(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", Some(5000))))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    host.signal("TERM");
    for c in calls {
        let err = c.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    let status = tokio::task::spawn_blocking(move || host.child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_millis(1500), "exited {:?} after SIGTERM with a 500 ms grace", signalled.elapsed());
}

#[test]
fn an_invalid_config_names_the_key_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nport = \"eighty\"\n").unwrap();
    let out = std::process::Command::new(agent_host_tests::host_exe()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.port"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started: {}", String::from_utf8_lossy(&out.stdout));
}
