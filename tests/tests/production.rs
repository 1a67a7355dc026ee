//! Running in production: metrics, limits, deadlines, graceful shutdown, configuration errors.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent_host_tests::{echo_plugin, http_get, unary, TestHost};
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

// Row 10, graceful shutdown, at the RELIABILITY.md size: SIGTERM to the host process with 50
// unary calls in flight (each sleeping 1–3 s in the plugin) and 5 GetTaskLogs streams held open,
// once with a 25 s drain budget and once with 2 s. The host is started here rather than through
// `HostProcess`, so that its log (stderr) can be read afterwards for the plugin shutdown hooks.

const LOGS: &str = "/flyteidl.service.AsyncAgentService/GetTaskLogs";
const DRAIN_CALLS: usize = 50;
const DRAIN_STREAMS: usize = 5;
/// Calls and streams spread over this many connections (each gets its own GOAWAY).
const DRAIN_CONNECTIONS: usize = 5;

/// `agent-host serve` in a child process, its log in a file.
struct DrainHost {
    child: Option<std::process::Child>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl DrainHost {
    async fn start(grace_ms: u64) -> DrainHost {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::copy(echo_plugin(), plugins.join("echo.so")).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nhost = \"127.0.0.1\"\nport = 0\nmetrics_port = 0\nshutdown_grace_ms = {grace_ms}\n\
                 [loader]\nplugin_dir = {plugins:?}\nwork_dir = {:?}\n\
                 [log]\nlevel = \"info,agent_host::plugin=debug\"\n",
                dir.path().join("work")
            ),
        )
        .unwrap();
        let log = dir.path().join("host.log");
        let (child, addr, admin) = agent_host_tests::spawn_serve(&config, std::fs::File::create(&log).unwrap().into()).await;
        let me = DrainHost { child: Some(child), addr, admin, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(ch) = me.connect().await {
                let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
                let r: Result<tonic_health::pb::HealthCheckResponse, _> = unary(ch, "/grpc.health.v1.Health/Check", req).await;
                if r.map(|r| r.status == 1).unwrap_or(false) {
                    return me;
                }
            }
            assert!(Instant::now() < deadline, "agent-host did not become SERVING within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }
}

impl Drop for DrainHost {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CreateTask for echo_async with these `custom` switches.
fn create_with(switches: &[(&str, f64)]) -> admin::CreateTaskRequest {
    let number = |n: f64| prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(n)) };
    let custom = prost_types::Struct { fields: switches.iter().map(|(k, v)| (k.to_string(), number(*v))).collect() };
    admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: "echo_async".into(), custom: Some(custom), ..Default::default() }),
        inputs: Some(core::LiteralMap::default()),
        ..Default::default()
    }
}

/// What one log stream saw: lines before and after SIGTERM, how it ended and when.
struct StreamEnd {
    ticks_after_signal: usize,
    status: Option<tonic::Status>,
    ended: Instant,
}

/// Opens a GetTaskLogs stream on a job created with `echo_log_every_ms` and reads it until the
/// first tick (so it is open in the host before SIGTERM); the rest is read by a task.
async fn open_log_tail(ch: Channel, signalled: Arc<std::sync::OnceLock<Instant>>) -> tokio::task::JoinHandle<StreamEnd> {
    let created: admin::CreateTaskResponse = unary(ch.clone(), CREATE, create_with(&[("echo_log_every_ms", 200.0)])).await.unwrap();
    let req = admin::GetTaskLogsRequest {
        task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
        resource_meta: created.resource_meta,
        ..Default::default()
    };
    let mut client = tonic::client::Grpc::new(ch);
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<admin::GetTaskLogsRequest, admin::GetTaskLogsResponse>::default();
    let mut stream =
        client.server_streaming(tonic::Request::new(req), http::uri::PathAndQuery::from_static(LOGS), codec).await.unwrap().into_inner();
    let header = stream.message().await.unwrap().unwrap();
    assert!(matches!(header.part, Some(admin::get_task_logs_response::Part::Header(_))), "{header:?}");
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.part, Some(admin::get_task_logs_response::Part::Body(_))), "{first:?}");
    tokio::spawn(async move {
        let mut ticks_after_signal = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => ticks_after_signal += usize::from(signalled.get().is_some()),
                Ok(None) => return StreamEnd { ticks_after_signal, status: None, ended: Instant::now() },
                Err(status) => return StreamEnd { ticks_after_signal, status: Some(status), ended: Instant::now() },
            }
        }
    })
}

/// What the shutdown looked like from the clients.
struct Drained {
    /// Per call: its sleep, when it was sent, and how it ended (with when).
    calls: Vec<(u64, Instant, Result<String, Code>, Instant)>,
    streams: Vec<StreamEnd>,
    signalled: Instant,
    not_serving_after: Duration,
    exit_code: Option<i32>,
    exited_after: Duration,
    log: String,
}

/// Starts a host with `grace_ms`, puts 50 calls (sleeps spread over 1–3 s) and 5 log streams in
/// flight over 5 connections, sends SIGTERM, and records how everything ended.
async fn sigterm_with_work_in_flight(grace_ms: u64) -> Drained {
    let mut host = DrainHost::start(grace_ms).await;
    let mut channels = Vec::new();
    for _ in 0..DRAIN_CONNECTIONS {
        channels.push(host.connect().await.unwrap());
    }
    let mut health = watch_health(host.connect().await.unwrap()).await;
    assert_eq!(health.message().await.unwrap().unwrap().status, 1, "SERVING before");

    let signalled_at = Arc::new(std::sync::OnceLock::new());
    let mut streams = Vec::new();
    for i in 0..DRAIN_STREAMS {
        streams.push(open_log_tail(channels[i % DRAIN_CONNECTIONS].clone(), signalled_at.clone()).await);
    }
    let calls: Vec<_> = (0..DRAIN_CALLS)
        .map(|i| {
            let sleep_ms = 1000 + (2000 * i / (DRAIN_CALLS - 1)) as u64;
            let ch = channels[i % DRAIN_CONNECTIONS].clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = unary::<_, admin::CreateTaskResponse>(ch, CREATE, create_with(&[("echo_sleep_ms", sleep_ms as f64)])).await;
                let r = r.map(|c| String::from_utf8_lossy(&c.resource_meta).into_owned()).map_err(|e| e.code());
                (sleep_ms, sent, r, Instant::now())
            })
        })
        .collect();
    // Every call is running inside the plugin before the signal.
    let in_flight = "agent_host_calls_in_flight{plugin=\"echo\",agent=\"Echo Async Agent\"} ";
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent_host_tests::metric(host.admin, in_flight).await < DRAIN_CALLS as f64 {
        assert!(Instant::now() < deadline, "the {DRAIN_CALLS} calls did not all reach the plugin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    host.sigterm();
    let _ = signalled_at.set(signalled);
    let next = tokio::time::timeout(Duration::from_secs(2), health.message()).await.expect("a health transition").unwrap().unwrap();
    let not_serving_after = signalled.elapsed();
    assert_eq!(next.status, 2, "NOT_SERVING");
    // New connections are refused while the work drains.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(std::net::TcpStream::connect(host.addr).is_err(), "the listener is closed");

    let mut ended = Vec::new();
    for c in calls {
        ended.push(c.await.unwrap());
    }
    let mut stream_ends = Vec::new();
    for s in streams {
        stream_ends.push(s.await.unwrap());
    }
    let mut child = host.child.take().expect("running");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    let exited_after = signalled.elapsed();
    let log = std::fs::read_to_string(&host.log).unwrap_or_default();
    Drained { calls: ended, streams: stream_ends, signalled, not_serving_after, exit_code: status.code(), exited_after, log }
}

/// Checks the parts both budgets share: NOT_SERVING at once, every stream open through the
/// drain and ended with UNAVAILABLE at the deadline, exit 0 within the budget plus 1 s, and the
/// plugin version's shutdown hook run before the exit.
fn check_common(d: &Drained, grace: Duration) {
    assert!(d.not_serving_after < Duration::from_millis(100), "NOT_SERVING took {:?}", d.not_serving_after);
    for s in &d.streams {
        let status = s.status.as_ref().expect("a stream ends with a final status, not a bare end");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let at = s.ended - d.signalled;
        assert!(at + Duration::from_millis(100) >= grace && at < grace + Duration::from_secs(1), "a stream ended {at:?} after SIGTERM");
        assert!(s.ticks_after_signal > 0, "the stream stayed open during the drain");
    }
    assert_eq!(d.exit_code, Some(0), "exit status; log:\n{}", d.log);
    assert!(d.exited_after < grace + Duration::from_secs(1), "exited {:?} after SIGTERM with a {grace:?} budget", d.exited_after);
    let retired = d.log.lines().any(|l| l.contains("plugin version retired") && l.contains("echo@0.1.0"));
    assert!(retired, "the echo version's shutdown hook did not run; log:\n{}", d.log);
    assert!(!d.log.contains("still running at exit"), "{}", d.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_25_s_budget_completes_50_calls_and_ends_5_log_streams_at_the_deadline() {
    let grace = Duration::from_secs(25);
    let d = sigterm_with_work_in_flight(grace.as_millis() as u64).await;
    for (sleep_ms, _, result, _) in &d.calls {
        let meta = result.as_ref().unwrap_or_else(|code| panic!("the call sleeping {sleep_ms} ms ended with {code:?}"));
        assert!(meta.contains("\"created_by\":\"0.1.0\""), "{meta}");
    }
    let last_call = d.calls.iter().map(|c| c.3 - d.signalled).max().unwrap();
    check_common(&d, grace);
    println!(
        "25 s budget: NOT_SERVING after {:?}; {DRAIN_CALLS} calls OK, the last {last_call:?} after SIGTERM; {DRAIN_STREAMS} streams ended \
         UNAVAILABLE {:?}..{:?} after SIGTERM; exit 0 after {:?}",
        d.not_serving_after,
        d.streams.iter().map(|s| s.ended - d.signalled).min().unwrap(),
        d.streams.iter().map(|s| s.ended - d.signalled).max().unwrap(),
        d.exited_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_2_s_budget_exits_on_time_and_ends_unfinished_calls_with_unavailable() {
    let grace = Duration::from_secs(2);
    let d = sigterm_with_work_in_flight(grace.as_millis() as u64).await;
    let deadline = d.signalled + grace;
    let (mut ok, mut ended, mut unavailable) = (0, 0, 0);
    for (sleep_ms, sent, result, at) in &d.calls {
        let due = *sent + Duration::from_millis(*sleep_ms);
        match result {
            Ok(_) => {
                ok += 1;
                assert!(*at < deadline + Duration::from_millis(500), "the call sleeping {sleep_ms} ms answered OK after the deadline");
            }
            Err(code) => {
                ended += 1;
                unavailable += usize::from(*code == Code::Unavailable);
                assert!(matches!(code, Code::Unavailable | Code::Cancelled), "the call sleeping {sleep_ms} ms ended with {code:?}");
                assert!(due + Duration::from_millis(300) > deadline, "the call sleeping {sleep_ms} ms was due before the deadline");
            }
        }
        // Calls due well before the deadline complete; calls due well after it are ended.
        if due + Duration::from_millis(300) < deadline {
            assert!(result.is_ok(), "the call sleeping {sleep_ms} ms was due before the deadline: {result:?}");
        }
        if due > deadline + Duration::from_millis(300) {
            assert!(result.is_err(), "the call sleeping {sleep_ms} ms answered though due after the deadline");
        }
    }
    assert!(ok > 0 && ended > 0, "{ok} OK, {ended} ended");
    check_common(&d, grace);
    println!(
        "2 s budget: NOT_SERVING after {:?}; {ok} calls OK, {ended} ended ({unavailable} UNAVAILABLE, the rest CANCELLED); {DRAIN_STREAMS} streams ended \
         UNAVAILABLE {:?}..{:?} after SIGTERM; exit 0 after {:?}",
        d.not_serving_after,
        d.streams.iter().map(|s| s.ended - d.signalled).min().unwrap(),
        d.streams.iter().map(|s| s.ended - d.signalled).max().unwrap(),
        d.exited_after
    );
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

/// The anonymous resident memory of a process (heaps, stacks), in KiB (`RssAnon`). Pages of
/// code mapped from files are left out: they stay resident once used (the kernel takes them
/// back when it needs them), more of them in a debug build.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until `pid`'s anonymous resident memory is at most `limit` KiB; the last reading, and
/// whether it got there.
async fn resident_at_most(pid: u32, limit: u64, within: Duration) -> (u64, bool) {
    let deadline = Instant::now() + within;
    loop {
        let now = resident_kib(pid);
        if now <= limit || Instant::now() > deadline {
            return (now, now <= limit);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_freed_after_large_calls_goes_back_to_the_system_once_calls_stop() {
    // Each burst: 32 CreateTasks of 1 MiB at once; echo keeps each one's inputs in its
    // 1.4 MiB resource meta. Request, meta and answer buffers are freed by the host's request
    // threads and by the plugin's own runtime thread; once calls stop, the host gives the
    // freed pages back (an idle check every 2 s).
    let host = agent_host_tests::HostProcess::start(&[("echo.so", echo_plugin())], "").await;
    let pid = host.child.id();
    let strings: Vec<String> = (0..1024).map(|i| format!("{i:04}").repeat(256)).collect();
    let mut request = create("echo_async", None);
    let text = |s: String| core::Literal {
        value: Some(core::literal::Value::Scalar(Box::new(core::Scalar {
            value: Some(core::scalar::Value::Primitive(core::Primitive { value: Some(core::primitive::Value::StringValue(s)) })),
        }))),
        ..Default::default()
    };
    let rows = core::Literal {
        value: Some(core::literal::Value::Collection(core::LiteralCollection { literals: strings.into_iter().map(text).collect() })),
        ..Default::default()
    };
    request.inputs = Some(core::LiteralMap { literals: [("rows".to_string(), rows)].into_iter().collect() });
    // Idle after start (the host has trimmed what loading the plugin freed).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = resident_kib(pid);
    for burst in 1..=4 {
        let ch = host.channel().await.unwrap();
        let calls = (0..32).map(|_| {
            let (ch, request) = (ch.clone(), request.clone());
            tokio::spawn(async move { unary::<_, admin::CreateTaskResponse>(ch, CREATE, request).await })
        });
        let mut answered = 0;
        for call in calls.collect::<Vec<_>>() {
            let meta = call.await.unwrap().unwrap().resource_meta;
            assert!(meta.len() > 1 << 20, "the inputs are kept in the meta");
            answered += 1;
        }
        assert_eq!(answered, 32);
        drop(ch);
        let busy = resident_kib(pid);
        let (after, back) = resident_at_most(pid, idle + 6 * 1024, Duration::from_secs(10)).await;
        assert!(
            back,
            "burst {burst}: {after} KiB of anonymous memory resident 10 s after the calls ({busy} KiB right after them, {idle} KiB idle)"
        );
    }
}
