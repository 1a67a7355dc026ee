//! `agent-host exec`: the built binary runs a task through the echo plugin the way Flyte
//! would, through the real loader, and reports each phase, the outputs and the exit status.

use std::{path::Path, process::Command};

use agent_host_tests::{echo_plugin, host_exe};

struct Run {
    status: i32,
    stdout: String,
}

/// Runs `agent-host exec <echo> ARGS` with its private copies under `dir`.
fn exec(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(host_exe())
        .arg("exec")
        .arg(echo_plugin())
        .args(args)
        .current_dir(dir)
        .env("AGENT_HOST__LOADER__WORK_DIR", dir.join("work"))
        .env("AGENT_HOST__LOG__LEVEL", "warn")
        .output()
        .expect("running agent-host exec");
    let run = Run { status: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned() };
    eprintln!("exec {args:?} → {}\n{}{}", run.status, run.stdout, String::from_utf8_lossy(&out.stderr));
    run
}

fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("inputs.json"), r#"{"x": 7, "names": ["a", "b"], "info": {"$msgpack": {"status_code": 200}}}"#).unwrap();
    std::fs::write(dir.path().join("fail.json"), r#"{"custom": {"echo_error": "boom"}}"#).unwrap();
    dir
}

const OUTPUTS: &str = r#""outputs":{"info":{"$msgpack":{"status_code":200}},"names":["a","b"],"x":7}"#;

#[test]
fn async_agent_runs_create_then_get_to_success() {
    let dir = files();
    let run = exec(dir.path(), &["--task-type", "echo_async", "--inputs", "inputs.json", "--poll-interval-ms", "10"]);
    assert_eq!(run.status, 0);
    assert!(run.stdout.contains("loaded plugin echo 0.1.0"), "{}", run.stdout);
    assert!(run.stdout.contains("agent \"Echo Async Agent\" (async) serves echo_async v0"), "{}", run.stdout);
    assert!(run.stdout.contains("CreateTask: resource meta"), "{}", run.stdout);
    assert!(run.stdout.contains("GetTask #1: SUCCEEDED: echo 0.1.0"), "{}", run.stdout);
    assert!(run.stdout.contains("\"x\": 7"), "{}", run.stdout);

    let json = exec(dir.path(), &["--task-type", "echo_async", "--inputs", "inputs.json", "--json"]);
    assert_eq!(json.status, 0);
    assert!(json.stdout.contains(r#""outcome":"succeeded""#) && json.stdout.contains(OUTPUTS), "{}", json.stdout);
}

#[test]
fn sync_agent_runs_execute_task_sync() {
    let dir = files();
    let run = exec(dir.path(), &["--task-type", "echo_sync", "--inputs", "inputs.json", "--json"]);
    assert_eq!(run.status, 0);
    assert!(run.stdout.contains(r#""step":"ExecuteTaskSync""#) && run.stdout.contains(OUTPUTS), "{}", run.stdout);
}

#[test]
fn abort_sends_delete_task() {
    let dir = files();
    let run = exec(dir.path(), &["--task-type", "echo_async", "--abort-after", "0"]);
    assert_eq!(run.status, 1);
    assert!(run.stdout.contains("DeleteTask: done (aborted)"), "{}", run.stdout);
}

#[test]
fn a_failed_call_shows_the_status_a_client_would_get() {
    let dir = files();
    let run = exec(dir.path(), &["--task-type", "echo_async", "--template", "fail.json"]);
    assert_eq!(run.status, 1);
    assert!(run.stdout.contains("error: Internal: plugin echo 0.1.0: failed to create echo_async task: boom"), "{}", run.stdout);
}

#[test]
fn an_unknown_task_type_does_not_run() {
    let dir = files();
    let run = exec(dir.path(), &["--task-type", "nope"]);
    assert_eq!(run.status, 2);
    assert!(run.stdout.contains("it serves: echo_sync v0, echo_async v0"), "{}", run.stdout);
}
