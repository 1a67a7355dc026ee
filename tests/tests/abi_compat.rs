//! ABI compatibility: a plugin built against an older minor of the plugin ABI keeps loading
//! into the current host. `tests/frozen/good-abi-1.0.so` is a frozen, stripped release build of
//! `tests/fixtures/good` made against agent-plugin-abi 1.0.0, before 1.1 appended
//! `runtime_stats` (see tests/frozen/README.md).

use agent_host_tests::{echo_plugin, execute_sync, fixture, http_get, TestHost};
use agent_proto::flyteidl::{admin, core};

fn frozen_1_0() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("frozen/good-abi-1.0.so")
}

#[tokio::test]
async fn a_plugin_built_for_abi_1_0_serves_beside_current_ones() {
    let host = TestHost::start(&[("echo.so", echo_plugin()), ("old.so", frozen_1_0())]).await;
    let snapshot = host.host.service.registry.snapshot();
    let abi: Vec<_> = snapshot.plugins.iter().map(|p| (p.name().to_string(), p.abi())).collect();
    assert!(abi.contains(&("good".to_string(), "1.0".to_string())), "{abi:?}");
    assert!(abi.contains(&("echo".to_string(), format!("1.{}", agent_plugin_abi_minor()))), "{abi:?}");

    // It answers a call.
    let header = admin::CreateRequestHeader {
        template: Some(core::TaskTemplate { r#type: "good".into(), ..Default::default() }),
        ..Default::default()
    };
    let inputs = core::LiteralMap::default();
    let answer = execute_sync(host.channel().await, header, inputs).await.expect("the 1.0 plugin answers");
    let Some(admin::execute_task_sync_response::Res::Header(h)) = answer.res else { panic!("no header") };
    assert_eq!(h.resource.unwrap().phase, core::task_execution::Phase::Succeeded as i32);

    // What 1.1 appended is absent from the 1.0 plugin and present in the current one.
    let old = snapshot.plugins.iter().find(|p| p.name() == "good").unwrap();
    let new = snapshot.plugins.iter().find(|p| p.name() == "echo").unwrap();
    assert!(old.runtime_stats().is_none(), "a 1.0 plugin has no runtime_stats");
    let stats = new.runtime_stats().expect("a 1.1 plugin reports its runtime");
    assert_eq!(stats.workers, 1, "one worker by default (loader.worker_threads)");
    let (_, status) = http_get(host.admin_addr, "/plugins").await;
    assert!(status.contains("\"abi\":\"1.0\"") && status.contains("\"runtime\":null"), "{status}");
    host.stop().await;
}

#[tokio::test]
async fn a_changed_layout_is_still_refused_both_ways() {
    // The reverse check accepts only a plugin layout that is a prefix of the host's.
    let host = TestHost::start(&[("mismatch.so", fixture("layout-mismatch"))]).await;
    let statuses = host.host.statuses.lock().unwrap().clone();
    let reason = statuses.values().next().and_then(|s| s.error_reason);
    assert_eq!(reason, Some("abi_instability"));
    host.stop().await;
}

fn agent_plugin_abi_minor() -> u32 {
    // The host and the echo plugin are built from this workspace: the current minor.
    let cargo = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/abi/Cargo.toml")).unwrap();
    let version = cargo.lines().find_map(|l| l.strip_prefix("version = \"")).unwrap();
    version.split('.').nth(1).unwrap().parse().unwrap()
}
