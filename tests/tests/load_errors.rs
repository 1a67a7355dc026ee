//! The load-error matrix: every broken plugin file is refused with its own reason, by the
//! host's real loader (private copy, child-process check, in-process load), and never takes
//! the host down. abi_stable's `testing/1 - loading errors` is the model.

use std::path::Path;

use agent_host::loader::{LoadError, Loader, PluginFile};
use agent_host_tests::{echo_plugin, fixture, host_exe, TestHost};

/// The host's loader with the default configuration (permission checks on, no verification).
fn loader(work_dir: &Path) -> Loader {
    agent_host_tests::loader_for(&agent_host::config::Config::load(None, []).unwrap(), work_dir)
}

async fn refusal(path: &Path) -> LoadError {
    let work = tempfile::tempdir().unwrap();
    let file = PluginFile::read(path).expect("the fixture is readable");
    match loader(work.path()).load(&file, "{}".into()).await {
        Ok(p) => panic!("{} loaded as plugin {}; it must be refused", path.display(), p.name()),
        Err(e) => e,
    }
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test]
async fn a_valid_plugin_loads_and_describes_itself() {
    let work = tempfile::tempdir().unwrap();
    let file = PluginFile::read(&fixture("good")).unwrap();
    let plugin = loader(work.path()).load(&file, "{}".into()).await.expect("good.so loads");
    assert_eq!(plugin.name(), "good");
    assert_eq!(plugin.agents()[0].categories[0].name, "good");
    assert_eq!(plugin.sha256, file.sha256);
}

#[tokio::test]
async fn random_bytes_are_refused_by_the_dynamic_loader() {
    let dir = tempfile::tempdir().unwrap();
    let e = refusal(&write_temp(dir.path(), "random.so", &[0x5a; 4096])).await;
    assert_eq!(e.reason(), "open_error", "{e}");
}

#[tokio::test]
async fn an_empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = refusal(&write_temp(dir.path(), "empty.so", b"")).await;
    assert_eq!(e.reason(), "open_error", "{e}");
}

#[tokio::test]
async fn a_truncated_library_is_refused_without_crashing_the_host() {
    // Cut inside the mapped segments: the ELF headers are intact, so dlopen maps the file and
    // touches pages past its end (SIGBUS). Only the check process dies.
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(echo_plugin()).unwrap();
    let e = refusal(&write_temp(dir.path(), "truncated.so", &whole[..100_000])).await;
    assert!(matches!(e, LoadError::Crashed(_)), "expected a crash absorbed by the check process, got {:?}: {e}", e.reason());
}

#[tokio::test]
async fn a_library_without_a_root_module_is_not_a_plugin() {
    let e = refusal(&fixture("not-a-plugin")).await;
    assert_eq!(e.reason(), "not_a_plugin", "{e}");
}

#[tokio::test]
async fn a_root_module_with_another_layout_is_refused() {
    let e = refusal(&fixture("layout-mismatch")).await;
    assert_eq!(e.reason(), "abi_instability", "{e}");
    assert!(e.to_string().len() < 500, "the refusal is one readable sentence, not abi_stable's page: {e}");
}

#[tokio::test]
async fn another_abi_major_is_refused_before_init() {
    let e = refusal(&fixture("abi-major")).await;
    assert!(matches!(e, LoadError::AbiMajor(2)), "{e}");
}

#[tokio::test]
async fn a_panic_abort_build_is_refused() {
    let e = refusal(&fixture("good-abort")).await;
    assert!(matches!(e, LoadError::PanicAbort), "{e}");
}

#[tokio::test]
async fn an_init_panic_is_caught_and_refused() {
    let e = refusal(&fixture("init-panic")).await;
    assert_eq!(e.reason(), "init_failed", "{e}");
    assert!(e.to_string().contains("boom at init"), "{e}");
}

#[tokio::test]
async fn an_init_error_is_refused_with_the_agents_message() {
    let e = refusal(&fixture("init-error")).await;
    assert_eq!(e.reason(), "init_failed", "{e}");
    assert!(e.to_string().contains("missing setting `endpoint`"), "{e}");
}

#[tokio::test]
async fn the_check_command_reports_refusals_as_json() {
    let out = std::process::Command::new(host_exe()).args(["check", "--json"]).arg(fixture("not-a-plugin")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains(r#""reason":"not_a_plugin""#), "{report}");
    let out = std::process::Command::new(host_exe()).args(["check", "--json"]).arg(echo_plugin()).output().unwrap();
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    for expected in [r#""name":"echo""#, r#""abi":"1.1""#, "echo_async", "echo_sync", r#""panic_strategy":"unwind""#] {
        assert!(report.contains(expected), "missing {expected} in {report}");
    }
}

#[tokio::test]
async fn bad_plugins_beside_a_good_one_leave_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(echo_plugin()).unwrap();
    let truncated = write_temp(dir.path(), "t.so", &whole[..100_000]);
    let host = TestHost::start(&[
        ("echo.so", echo_plugin()),
        ("truncated.so", truncated),
        ("abort.so", fixture("good-abort")),
        ("init-panic.so", fixture("init-panic")),
        ("not-a-plugin.so", fixture("not-a-plugin")),
    ])
    .await;
    assert_eq!(host.health("").await.unwrap(), 1, "SERVING despite the bad files");
    let snapshot = host.host.service.registry.snapshot();
    let names: Vec<_> = snapshot.plugins.iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["echo"]);
    let statuses = host.host.statuses.lock().unwrap().clone();
    let reason = |f: &str| statuses.get(&host.plugin_dir.join(f)).and_then(|s| s.error_reason);
    assert_eq!(reason("truncated.so"), Some("crashed"));
    assert_eq!(reason("abort.so"), Some("panic_abort"));
    assert_eq!(reason("init-panic.so"), Some("init_failed"));
    assert_eq!(reason("not-a-plugin.so"), Some("not_a_plugin"));
    assert_eq!(statuses.get(&host.plugin_dir.join("echo.so")).map(|s| s.state), Some("serving"));
    host.stop().await;
}

#[tokio::test]
async fn a_second_plugin_claiming_a_served_task_type_is_a_conflict() {
    let host = TestHost::start(&[("a-echo.so", echo_plugin()), ("b-echo.so", echo_plugin())]).await;
    let statuses = host.host.statuses.lock().unwrap().clone();
    let b = statuses.get(&host.plugin_dir.join("b-echo.so")).unwrap();
    assert_eq!(b.error_reason, Some("conflict"));
    assert!(b.error.as_deref().unwrap().contains("already served by plugin echo"), "{:?}", b.error);
    assert_eq!(statuses.get(&host.plugin_dir.join("a-echo.so")).unwrap().state, "serving");
    // The two files were prepared together, with one private copy of their one content: the
    // second was copied afresh before it was mapped, never handed the library already loaded.
    assert_eq!(host.host.loader.mapped_libraries(), 2);
    host.stop().await;
}
