//! RELIABILITY row 1: the echo plugin is replaced again and again (alternating two builds, by
//! rename and by `cp` in place) while clients keep a paced, mixed load running: CreateTask,
//! GetTask, ExecuteTaskSync, ListAgents and DeleteTask, plus a few GetTaskLogs streams held open
//! across the swaps. Zero failed calls; every answer comes from one version; each new version
//! serves promptly; latency during the swaps is compared with a no-swap baseline taken first.
//! (Its own test binary: it runs alone, so its timing is not disturbed by other tests.)
//!
//! The CI size runs by default. The size is set from the environment (the soak size is
//! `RELOAD_SWAPS=1000 RELOAD_RPS=500 RELOAD_BASELINE_SECS=30`, see `tests/soak/run.sh reload`):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `RELOAD_SWAPS` | 200 | plugin replacements |
//! | `RELOAD_RPS` | 250 | unary calls per second the clients aim at (paced, not flat out) |
//! | `RELOAD_BASELINE_SECS` | 5 | seconds of the same load before the first swap |
//! | `RELOAD_LOG_STREAMS` | 3 | GetTaskLogs streams kept open (each reopened after 20 lines) |
//! | `RELOAD_MAX_P99_RATIO` | unset | when set, p99 during the swaps must be at most this times the baseline's |
//! | `RELOAD_BACKGROUND_NICE` | config default | `loader.background_nice` (0: loads at the host's priority) |
//!
//! The p99 bound is not asserted at the CI size: on a shared 2-core runner the baseline's p99
//! over a few seconds is too noisy to compare against.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent_host_tests::{execute_sync, fixture, unary, TestHost};
use agent_proto::flyteidl::{admin, core};
use tonic::transport::Channel;

const CREATE: &str = "/flyteidl.service.AsyncAgentService/CreateTask";
const GET: &str = "/flyteidl.service.AsyncAgentService/GetTask";
const DELETE: &str = "/flyteidl.service.AsyncAgentService/DeleteTask";
const LOGS: &str = "/flyteidl.service.AsyncAgentService/GetTaskLogs";
const LIST: &str = "/flyteidl.service.AgentMetadataService/ListAgents";
const VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];
/// Unary calls in one round of [`round`].
const CALLS_PER_ROUND: u64 = 5;
/// Client tasks sharing the paced load.
const WORKERS: u64 = 10;
/// Lines read from one log stream before it is closed and another opened.
const LINES_PER_STREAM: usize = 20;

/// A size knob from the environment.
fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn template(task_type: &str) -> core::TaskTemplate {
    core::TaskTemplate { r#type: task_type.into(), ..Default::default() }
}

fn category() -> Option<admin::TaskCategory> {
    Some(admin::TaskCategory { name: "echo_async".into(), version: 0 })
}

fn info(resource: &admin::Resource, key: &str) -> String {
    match resource.custom_info.as_ref().and_then(|s| s.fields.get(key)).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    }
}

fn created_by(meta: &[u8]) -> String {
    let text = String::from_utf8_lossy(meta);
    text.split("\"created_by\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_string()
}

/// Times one call.
async fn timed<T>(latencies: &mut Vec<Duration>, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    latencies.push(started.elapsed());
    out
}

/// One round of mixed calls, each call's latency pushed to `latencies`; the first failure.
async fn round(ch: &Channel, latencies: &mut Vec<Duration>) -> Result<(), String> {
    let create = admin::CreateTaskRequest { template: Some(template("echo_async")), ..Default::default() };
    let created: admin::CreateTaskResponse =
        timed(latencies, unary(ch.clone(), CREATE, create)).await.map_err(|e| format!("CreateTask: {e:?}"))?;
    let v = created_by(&created.resource_meta);
    if !VERSIONS.contains(&v.as_str()) {
        return Err(format!("CreateTask answered by an unknown version {v:?}"));
    }
    let get = admin::GetTaskRequest { task_category: category(), resource_meta: created.resource_meta.clone(), ..Default::default() };
    let got: admin::GetTaskResponse = timed(latencies, unary(ch.clone(), GET, get)).await.map_err(|e| format!("GetTask: {e:?}"))?;
    let r = got.resource.unwrap_or_default();
    if r.phase != core::task_execution::Phase::Succeeded as i32 || info(&r, "created_by") != v {
        return Err(format!("GetTask answered {r:?}"));
    }
    let header = admin::CreateRequestHeader { template: Some(template("echo_sync")), ..Default::default() };
    let sync = timed(latencies, execute_sync(ch.clone(), header, core::LiteralMap::default()))
        .await
        .map_err(|e| format!("ExecuteTaskSync: {e:?}"))?;
    let resource = match sync.res {
        Some(admin::execute_task_sync_response::Res::Header(h)) => h.resource.unwrap_or_default(),
        other => return Err(format!("ExecuteTaskSync answered {other:?}")),
    };
    // One generation per answer: the message and the info name the same version.
    if resource.message != format!("echo {}", info(&resource, "plugin_version"))
        || !VERSIONS.contains(&info(&resource, "plugin_version").as_str())
    {
        return Err(format!("ExecuteTaskSync answered a mixed or unknown version: {resource:?}"));
    }
    let list: admin::ListAgentsResponse =
        timed(latencies, unary(ch.clone(), LIST, admin::ListAgentsRequest {})).await.map_err(|e| format!("ListAgents: {e:?}"))?;
    if list.agents.len() != 2 {
        return Err(format!("ListAgents answered {} agents", list.agents.len()));
    }
    let delete = admin::DeleteTaskRequest { task_category: category(), resource_meta: created.resource_meta, ..Default::default() };
    let _: admin::DeleteTaskResponse =
        timed(latencies, unary(ch.clone(), DELETE, delete)).await.map_err(|e| format!("DeleteTask: {e:?}"))?;
    Ok(())
}

/// One log tail: a job whose logs keep coming, read for [`LINES_PER_STREAM`] lines. Every line
/// must name the same version (a stream stays on the version serving when it was opened, whatever
/// the swaps after that; the job may have been created by the other one).
async fn log_tail(ch: &Channel) -> Result<(), String> {
    let number = prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(50.0)) };
    let custom = prost_types::Struct { fields: [("echo_log_every_ms".to_string(), number)].into_iter().collect() };
    let create = admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: "echo_async".into(), custom: Some(custom), ..Default::default() }),
        ..Default::default()
    };
    let created: admin::CreateTaskResponse = unary(ch.clone(), CREATE, create).await.map_err(|e| format!("CreateTask (logs): {e:?}"))?;
    let req = admin::GetTaskLogsRequest { task_category: category(), resource_meta: created.resource_meta, ..Default::default() };
    let mut client = tonic::client::Grpc::new(ch.clone());
    client.ready().await.map_err(|e| format!("GetTaskLogs: {e}"))?;
    let codec = tonic_prost::ProstCodec::<admin::GetTaskLogsRequest, admin::GetTaskLogsResponse>::default();
    let mut stream = client
        .server_streaming(tonic::Request::new(req), http::uri::PathAndQuery::from_static(LOGS), codec)
        .await
        .map_err(|e| format!("GetTaskLogs: {e:?}"))?
        .into_inner();
    let (mut lines, mut version) = (0, None::<String>);
    while lines < LINES_PER_STREAM {
        let part = stream.message().await.map_err(|e| format!("GetTaskLogs stream: {e:?}"))?.map(|m| m.part);
        match part {
            Some(Some(admin::get_task_logs_response::Part::Header(_))) => {}
            Some(Some(admin::get_task_logs_response::Part::Body(body))) => {
                for line in body.structured_lines {
                    let v = line.message.strip_prefix("echo ").and_then(|r| r.split(':').next()).unwrap_or_default().to_string();
                    if !VERSIONS.contains(&v.as_str()) || version.get_or_insert_with(|| v.clone()) != &v {
                        return Err(format!("a log stream of {version:?} gave {:?}", line.message));
                    }
                    lines += 1;
                }
            }
            other => return Err(format!("GetTaskLogs gave {other:?} after {lines} lines")),
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_no_call() {
    let swaps = knob("RELOAD_SWAPS", 200) as usize;
    let rps = knob("RELOAD_RPS", 250);
    let baseline_secs = knob("RELOAD_BASELINE_SECS", 5);
    let log_streams = knob("RELOAD_LOG_STREAMS", 3);
    let max_p99_ratio: Option<f64> =
        std::env::var("RELOAD_MAX_P99_RATIO").ok().map(|v| v.parse().unwrap_or_else(|_| panic!("RELOAD_MAX_P99_RATIO={v:?}")));

    let (v1, v2) = (fixture("echo-v1"), fixture("echo-v2"));
    let host = TestHost::start_with(&[("echo.so", v1.clone())], |c| {
        c.loader.stable_ms = 50;
        c.loader.rescan_interval_ms = 60_000;
        c.loader.max_libraries = c.loader.max_libraries.max(swaps + 16);
        if let Ok(nice) = std::env::var("RELOAD_BACKGROUND_NICE") {
            c.loader.background_nice = nice.parse().expect("RELOAD_BACKGROUND_NICE is a number");
        }
    })
    .await;
    let ch = host.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    // The swap in progress, for the latency record (BASELINE before the first).
    const BASELINE: usize = usize::MAX;
    let swap_at = Arc::new(AtomicUsize::new(BASELINE));
    let calls = Arc::new(AtomicU64::new(0));
    let streams_done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    // Paced load: each worker starts one round every `period`, so the clients aim at `rps`
    // whatever the latency (a round late by a hiccup starts at once, without a catch-up burst).
    let period = Duration::from_secs_f64((WORKERS * CALLS_PER_ROUND) as f64 / rps as f64);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (ch, stop, swap_at, calls, failures) = (ch.clone(), stop.clone(), swap_at.clone(), calls.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            tokio::time::sleep(period * w as u32 / WORKERS as u32).await;
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut before, mut during) = (Vec::new(), Vec::new());
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let at = swap_at.load(Ordering::Relaxed);
                let result = round(&ch, &mut latencies).await;
                calls.fetch_add(latencies.len() as u64, Ordering::Relaxed);
                if at == BASELINE {
                    before.append(&mut latencies);
                } else {
                    during.extend(latencies.drain(..).map(|d| (at, d)));
                }
                if let Err(e) = result {
                    failures.lock().unwrap().push(e);
                }
            }
            (before, during)
        }));
    }
    let mut tails = Vec::new();
    for _ in 0..log_streams {
        let (ch, stop, done, failures) = (ch.clone(), stop.clone(), streams_done.clone(), failures.clone());
        tails.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match log_tail(&ch).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    let baseline_started = Instant::now();
    let baseline_calls = calls.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(baseline_secs)).await;
    let baseline_rate = (calls.load(Ordering::Relaxed) - baseline_calls) as f64 / baseline_started.elapsed().as_secs_f64();

    let started = Instant::now();
    let calls_at_start = calls.load(Ordering::Relaxed);
    let path = host.plugin_dir.join("echo.so");
    let mut waits = Vec::new();
    for i in 0..swaps {
        swap_at.store(i, Ordering::Relaxed);
        let (source, want) = if i % 2 == 0 { (&v2, "0.2.0") } else { (&v1, "0.1.0") };
        if i % 4 == 3 {
            std::fs::copy(source, &path).unwrap();
        } else {
            let tmp = host.plugin_dir.join(".echo.so.tmp");
            std::fs::copy(source, &tmp).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        let written = Instant::now();
        loop {
            let serving = host.host.service.registry.snapshot().plugins.first().map(|p| p.version().to_string());
            if serving.as_deref() == Some(want) {
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(10), "swap {i}: {want} not served after 10 s (serving {serving:?})");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        waits.push(written.elapsed());
    }
    let elapsed = started.elapsed();
    let swap_calls = calls.load(Ordering::Relaxed) - calls_at_start;
    stop.store(true, Ordering::Relaxed);
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for w in workers {
        let (b, d) = w.await.unwrap();
        before.extend(b);
        during.extend(d);
    }
    for t in tails {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failures, the first ones: {:#?}", failures.len(), &failures[..failures.len().min(5)]);

    // p99 per tenth of the swaps, to tell a steady cost from one that grows with the generations.
    let tenths: Vec<String> = (0..10)
        .map(|k| {
            let mut part: Vec<Duration> = during.iter().filter(|(at, _)| at * 10 / swaps.max(1) == k).map(|(_, d)| *d).collect();
            part.sort();
            format!("{:.1}", percentile(&part, 0.99).as_secs_f64() * 1000.0)
        })
        .collect();
    let mut during: Vec<Duration> = during.into_iter().map(|(_, d)| d).collect();
    waits.sort();
    before.sort();
    during.sort();
    let (median, p99, max) = (percentile(&waits, 0.5), percentile(&waits, 0.99), waits[waits.len() - 1]);
    let rate = swap_calls as f64 / elapsed.as_secs_f64();
    let (base_p50, base_p99) = (percentile(&before, 0.5), percentile(&before, 0.99));
    let (swap_p50, swap_p99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    println!(
        "{swaps} swaps in {elapsed:.1?}: {} unary calls ({rate:.0} RPC/s, aiming at {rps}) and {} log streams of {LINES_PER_STREAM} lines, \
         0 failed; new version served after median {median:?}, p99 {p99:?}, max {max:?}",
        calls.load(Ordering::Relaxed),
        streams_done.load(Ordering::Relaxed),
    );
    println!(
        "latency: no-swap baseline ({baseline_secs} s, {baseline_rate:.0} RPC/s, {} calls) p50 {base_p50:?} p99 {base_p99:?}; \
         during swaps ({} calls) p50 {swap_p50:?} p99 {swap_p99:?}, max {:?}; p99 ratio {:.2}",
        before.len(),
        during.len(),
        during.last().copied().unwrap_or_default(),
        swap_p99.as_secs_f64() / base_p99.as_secs_f64().max(1e-9),
    );
    println!("p99 during swaps by tenth of the swaps, ms: {}", tenths.join(", "));
    // The bound: within 1 s of the file becoming stable (50 ms here).
    assert!(max < Duration::from_millis(1050), "a swap took {max:?}");
    assert!(rate >= 0.8 * rps as f64, "the load was {rate:.0} RPC/s, below 80 % of the {rps} RPC/s aimed at");
    assert!(streams_done.load(Ordering::Relaxed) > 0 || log_streams == 0, "no log stream completed");
    if let Some(ratio) = max_p99_ratio {
        assert!(
            swap_p99.as_secs_f64() <= ratio * base_p99.as_secs_f64(),
            "p99 {swap_p99:?} during swaps, over {ratio} x the baseline's {base_p99:?}"
        );
    }
    host.stop().await;
}
