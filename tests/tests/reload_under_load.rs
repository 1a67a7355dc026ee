//! RELIABILITY row 1 at CI size: the echo plugin is replaced 200 times (alternating two
//! builds, by rename and by `cp` in place) while a client keeps mixed traffic running. Zero
//! failed calls; every answer comes from one version; each new version serves promptly.
//! (Its own test binary: it runs alone, so its timing is not disturbed by other tests.)

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent_host_tests::{execute_sync, fixture, unary, TestHost};
use agent_proto::flyteidl::{admin, core};
use tonic::transport::Channel;

const SWAPS: usize = 200;
const CREATE: &str = "/flyteidl.service.AsyncAgentService/CreateTask";
const GET: &str = "/flyteidl.service.AsyncAgentService/GetTask";
const LIST: &str = "/flyteidl.service.AgentMetadataService/ListAgents";
const VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

fn template(task_type: &str) -> core::TaskTemplate {
    core::TaskTemplate { r#type: task_type.into(), ..Default::default() }
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

/// One round of mixed calls; returns the number of calls made, or the first failure.
async fn round(ch: &Channel) -> Result<u64, String> {
    let created: admin::CreateTaskResponse =
        unary(ch.clone(), CREATE, admin::CreateTaskRequest { template: Some(template("echo_async")), ..Default::default() })
            .await
            .map_err(|e| format!("CreateTask: {e:?}"))?;
    let v = created_by(&created.resource_meta);
    if !VERSIONS.contains(&v.as_str()) {
        return Err(format!("CreateTask answered by an unknown version {v:?}"));
    }
    let get = admin::GetTaskRequest {
        task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
        resource_meta: created.resource_meta,
        ..Default::default()
    };
    let got: admin::GetTaskResponse = unary(ch.clone(), GET, get).await.map_err(|e| format!("GetTask: {e:?}"))?;
    let r = got.resource.unwrap_or_default();
    if r.phase != core::task_execution::Phase::Succeeded as i32 || info(&r, "created_by") != v {
        return Err(format!("GetTask answered {r:?}"));
    }
    let header = admin::CreateRequestHeader { template: Some(template("echo_sync")), ..Default::default() };
    let sync = execute_sync(ch.clone(), header, core::LiteralMap::default()).await.map_err(|e| format!("ExecuteTaskSync: {e:?}"))?;
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
        unary(ch.clone(), LIST, admin::ListAgentsRequest {}).await.map_err(|e| format!("ListAgents: {e:?}"))?;
    if list.agents.len() != 2 {
        return Err(format!("ListAgents answered {} agents", list.agents.len()));
    }
    Ok(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_under_load_fail_no_call() {
    let (v1, v2) = (fixture("echo-v1"), fixture("echo-v2"));
    let host = TestHost::start_with(&[("echo.so", v1.clone())], |c| {
        c.loader.stable_ms = 50;
        c.loader.rescan_interval_ms = 60_000;
    })
    .await;
    let ch = host.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (ch, stop, calls, failures) = (ch.clone(), stop.clone(), calls.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match round(&ch).await {
                    Ok(n) => {
                        calls.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let started = Instant::now();
    let path = host.plugin_dir.join("echo.so");
    let mut waits = Vec::new();
    for i in 0..SWAPS {
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
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failed rounds, first: {:?}", failures.len(), failures.first());

    waits.sort();
    let (median, p99, max) = (waits[waits.len() / 2], waits[waits.len() * 99 / 100], waits[waits.len() - 1]);
    let rate = calls.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    println!("{SWAPS} swaps in {elapsed:.1?}: {} calls, {rate:.0} RPC/s, 0 failed; new version served after median {median:?}, p99 {p99:?}, max {max:?}", calls.load(Ordering::Relaxed));
    // The bound: within 1 s of the file becoming stable (50 ms here).
    assert!(max < Duration::from_millis(1050), "a swap took {max:?}");
    assert!(rate >= 200.0, "the load was {rate:.0} RPC/s, below the 200 RPC/s this test promises");
    host.stop().await;
}
