//! Live upgrade: plugins added, upgraded, refused and removed in the watched directory while the
//! host serves, with no restart and no failed call.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_host::config::{Config, WatchMode};
use agent_host_tests::{fixture, unary, TestHost};
use agent_proto::flyteidl::{admin, core};
use tonic::{transport::Channel, Code};

const CREATE: &str = "/flyteidl.service.AsyncAgentService/CreateTask";
const GET: &str = "/flyteidl.service.AsyncAgentService/GetTask";

fn fast(config: &mut Config) {
    config.loader.stable_ms = 50;
    config.loader.rescan_interval_ms = 60_000;
}

fn create_request(custom: Option<prost_types::Struct>) -> admin::CreateTaskRequest {
    admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: "echo_async".into(), custom, ..Default::default() }),
        inputs: Some(core::LiteralMap::default()),
        ..Default::default()
    }
}

/// The version that created a task: echo writes it into its resource meta.
fn created_by(meta: &[u8]) -> String {
    let text = std::str::from_utf8(meta).expect("echo's meta is JSON");
    let start = text.find("\"created_by\":\"").expect("echo's meta names its version") + 14;
    text[start..].split('"').next().unwrap().to_string()
}

/// The echo version serving CreateTask right now (None: no echo served).
async fn serving_version(ch: &Channel) -> Result<String, tonic::Status> {
    let r: admin::CreateTaskResponse = unary(ch.clone(), CREATE, create_request(None)).await?;
    Ok(created_by(&r.resource_meta))
}

async fn wait_for(ch: &Channel, want: Option<&str>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = serving_version(ch).await;
        match (&now, want) {
            (Ok(v), Some(w)) if v == w => return start.elapsed(),
            (Err(s), None) if s.code() == Code::NotFound => return start.elapsed(),
            _ => {}
        }
        assert!(start.elapsed() < within, "still {now:?} after {within:?}, waiting for {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `source` as `dir/name` the way operators should: temp name, then rename.
fn publish(source: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn v1() -> PathBuf {
    fixture("echo-v1")
}

fn v2() -> PathBuf {
    fixture("echo-v2")
}

#[tokio::test]
async fn an_upgrade_by_rename_serves_the_new_version_and_reads_the_old_meta() {
    let host = TestHost::start_with(&[("echo.so", v1())], fast).await;
    let ch = host.channel().await;
    let old: admin::CreateTaskResponse = unary(ch.clone(), CREATE, create_request(None)).await.unwrap();
    assert_eq!(created_by(&old.resource_meta), "0.1.0");

    publish(&v2(), &host.plugin_dir, "echo.so");
    let took = wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "the new version took {took:?}");

    // The meta written by 0.1.0 is read by 0.2.0.
    let get = admin::GetTaskRequest {
        task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
        resource_meta: old.resource_meta,
        ..Default::default()
    };
    let got: admin::GetTaskResponse = unary(ch.clone(), GET, get).await.unwrap();
    let resource = got.resource.unwrap();
    assert_eq!(resource.phase, core::task_execution::Phase::Succeeded as i32);
    let info = resource.custom_info.unwrap().fields;
    let text = |k: &str| match info.get(k).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!((text("plugin_version"), text("created_by")), ("0.2.0".to_string(), "0.1.0".to_string()));
    host.stop().await;
}

#[tokio::test]
async fn a_copy_in_place_is_picked_up_and_the_same_content_is_not_reloaded() {
    let host = TestHost::start_with(&[("echo.so", v1())], fast).await;
    let ch = host.channel().await;
    // `cp` over the file truncates and rewrites it in place: the host maps only its own copy.
    std::fs::copy(v2(), host.plugin_dir.join("echo.so")).unwrap();
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    let generation = host.host.service.registry.snapshot().plugins[0].generation;
    // Rewriting the same bytes changes the mtime, not the content: nothing is reloaded.
    std::fs::copy(v2(), host.plugin_dir.join("echo.so")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(host.host.service.registry.snapshot().plugins[0].generation, generation);
    host.stop().await;
}

#[tokio::test]
async fn a_failed_upgrade_keeps_the_serving_version_and_reports_why() {
    let host = TestHost::start_with(&[("echo.so", v1())], fast).await;
    let ch = host.channel().await;
    let path = host.plugin_dir.join("echo.so");
    let bytes = std::fs::read(v2()).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("crashed", bytes[..100_000].to_vec()),
        ("init_failed", std::fs::read(fixture("init-error")).unwrap()),
        ("panic_abort", std::fs::read(fixture("good-abort")).unwrap()),
    ];
    for (reason, content) in cases {
        let tmp = host.plugin_dir.join(".x.tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let start = Instant::now();
        loop {
            // Every call keeps succeeding on the old version meanwhile.
            assert_eq!(serving_version(&ch).await.unwrap(), "0.1.0");
            let status = host.host.statuses.lock().unwrap().get(&path).cloned().unwrap();
            if status.error_reason == Some(reason) {
                assert_eq!((status.state, status.version.as_deref()), ("serving", Some("0.1.0")));
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no {reason} refusal reported: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A plugin in another file claiming echo's task types is a conflict; echo keeps them.
    publish(&v2(), &host.plugin_dir, "other-echo.so");
    let other = host.plugin_dir.join("other-echo.so");
    let start = Instant::now();
    while host.host.statuses.lock().unwrap().get(&other).and_then(|s| s.error_reason) != Some("conflict") {
        assert!(start.elapsed() < Duration::from_secs(10), "no conflict reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving_version(&ch).await.unwrap(), "0.1.0");
    host.stop().await;
}

#[tokio::test]
async fn a_file_still_being_written_is_not_loaded_until_it_settles() {
    let host = TestHost::start_with(&[], |c| {
        c.loader.stable_ms = 300;
        c.loader.rescan_interval_ms = 60_000;
    })
    .await;
    let ch = host.channel().await;
    let bytes = std::fs::read(v1()).unwrap();
    let path = host.plugin_dir.join("echo.so");
    // Written in 64 KiB pieces, 25 ms apart: never quiet for 300 ms until the end.
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in bytes.chunks(64 * 1024) {
        std::io::Write::write_all(&mut file, chunk).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(host.host.service.registry.snapshot().plugins.is_empty(), "a half-written file was loaded");
    }
    drop(file);
    wait_for(&ch, Some("0.1.0"), Duration::from_secs(5)).await;
    let statuses = host.host.statuses.lock().unwrap().clone();
    assert_eq!(statuses.get(&path).map(|s| (s.state, s.error_reason)), Some(("serving", None)), "loaded once, never refused");
    host.stop().await;
}

#[tokio::test]
async fn add_remove_and_add_again() {
    let host = TestHost::start_with(&[], fast).await;
    let ch = host.channel().await;
    assert_eq!(serving_version(&ch).await.unwrap_err().code(), Code::NotFound);
    publish(&v1(), &host.plugin_dir, "echo.so");
    wait_for(&ch, Some("0.1.0"), Duration::from_secs(5)).await;
    std::fs::remove_file(host.plugin_dir.join("echo.so")).unwrap();
    wait_for(&ch, None, Duration::from_secs(5)).await;
    assert!(host.host.statuses.lock().unwrap().is_empty(), "a removed file leaves no status");
    publish(&v2(), &host.plugin_dir, "echo.so");
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    host.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_style_data_symlink_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let host = TestHost::start_with(&[], fast).await;
    let ch = host.channel().await;
    let dir = &host.plugin_dir;
    // As a ConfigMap/Secret volume lays it out: echo.so -> ..data/echo.so, ..data -> ..v1.
    for (version, source) in [("..v1", v1()), ("..v2", v2())] {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::copy(source, dir.join(version).join("echo.so")).unwrap();
    }
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/echo.so", dir.join("echo.so")).unwrap();
    wait_for(&ch, Some("0.1.0"), Duration::from_secs(5)).await;
    // The update: a new ..data link renamed over the old one. No event names echo.so.
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    host.stop().await;
}

#[tokio::test]
async fn poll_mode_sees_changes_without_events() {
    let host = TestHost::start_with(&[("echo.so", v1())], |c| {
        c.loader.watch = WatchMode::Poll;
        c.loader.poll_interval_ms = 100;
        c.loader.stable_ms = 50;
    })
    .await;
    let ch = host.channel().await;
    publish(&v2(), &host.plugin_dir, "echo.so");
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    host.stop().await;
}

#[tokio::test]
async fn sighup_rescans_at_once() {
    let host = TestHost::start_with(&[("echo.so", v1())], |c| {
        c.loader.watch = WatchMode::Poll;
        c.loader.poll_interval_ms = 3_600_000;
        c.loader.stable_ms = 0;
    })
    .await;
    let ch = host.channel().await;
    publish(&v2(), &host.plugin_dir, "echo.so");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(serving_version(&ch).await.unwrap(), "0.1.0", "no rescan without a trigger in poll mode");
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    host.stop().await;
}

#[tokio::test]
async fn a_call_in_flight_finishes_on_the_version_it_started_on() {
    let host = TestHost::start_with(&[("echo.so", v1())], fast).await;
    let ch = host.channel().await;
    let slow = create_request(Some(prost_types::Struct {
        fields: [("echo_sleep_ms".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(1500.0)) })]
            .into_iter()
            .collect(),
    }));
    let in_flight = tokio::spawn(unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, slow));
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&v2(), &host.plugin_dir, "echo.so");
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(5)).await;
    // The old version is draining with the slow call in it.
    let draining = host.host.draining.lock().unwrap().clone();
    assert!(draining.iter().any(|(_, v, _, calls)| v == "0.1.0" && *calls >= 1), "{draining:?}");
    let done = in_flight.await.unwrap().expect("the call in flight succeeds across the upgrade");
    assert_eq!(created_by(&done.resource_meta), "0.1.0");
    host.stop().await;
}

#[tokio::test]
async fn the_status_command_shows_serving_and_refused_files() {
    let host = TestHost::start_with(&[("echo.so", v1()), ("broken.so", fixture("init-error"))], fast).await;
    let addr = host.admin_addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(agent_host_tests::host_exe()).args(["status", "--addr", &addr]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let line =
        |file: &str| text.lines().find(|l| l.starts_with(file)).unwrap_or_else(|| panic!("no line for {file} in\n{text}")).to_string();
    assert!(line("echo.so").contains("serving") && line("echo.so").contains("0.1.0"), "{text}");
    assert!(line("broken.so").contains("refused") && line("broken.so").contains("init_failed"), "{text}");
    assert!(text.contains("agent Echo Async Agent (echo_async v0)"), "{text}");
    assert!(text.lines().any(|l| l == "watch: notify"), "{text}");
    host.stop().await;
}

#[tokio::test]
async fn a_burst_of_renames_loads_only_the_last_file_once() {
    // RELIABILITY row 6: 50 publications in quick succession (each a complete file, renamed
    // into place); only the one left standing when the directory settles is loaded.
    let host = TestHost::start_with(&[("echo.so", v1())], |c| {
        c.loader.stable_ms = 300;
        c.loader.rescan_interval_ms = 60_000;
    })
    .await;
    let ch = host.channel().await;
    let loads =
        |text: &str| text.lines().find_map(|l| l.strip_prefix("agent_host_plugin_loads_total{plugin=\"echo\"} ")).map(str::to_string);
    let before = loads(&agent_host_tests::http_get(host.admin_addr, "/metrics").await.1);
    assert_eq!(before.as_deref(), Some("1"));
    let (a, b) = (v1(), v2());
    let mut widest_gap = Duration::ZERO;
    let mut last = Instant::now();
    for i in 0..50 {
        publish(if i % 2 == 0 { &a } else { &b }, &host.plugin_dir, "echo.so");
        widest_gap = widest_gap.max(last.elapsed());
        last = Instant::now();
    }
    wait_for(&ch, Some("0.2.0"), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = loads(&agent_host_tests::http_get(host.admin_addr, "/metrics").await.1);
    if widest_gap < Duration::from_millis(200) {
        assert_eq!(after.as_deref(), Some("2"), "a burst with gaps under {widest_gap:?} loaded intermediate files");
    } else {
        // A machine too busy to keep every gap well under the quiet period may load some of
        // them; the last file is still the one serving (checked above).
        println!("a gap of {widest_gap:?} in the burst: loads {after:?}");
    }
    host.stop().await;
}
