//! The test harness itself: polling and its bound, both protocols, job failures, metadata
//! versions, and the sync-agent rules.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use agent_plugin_api::{
    serde_json,
    testing::{Harness, Job},
    AgentError, AsyncAgent, Context, ErrorKind, Literals, Phase, Protocol, Resource, SyncAgent, TaskRequest,
};
use serde::{Deserialize, Serialize};

/// Done after `polls` GetTasks; `custom.fail` makes `create` fail the job.
struct Countdown {
    gets: AtomicU32,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    polls: u32,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Custom {
    fail: Option<String>,
    retry: bool,
}

impl AsyncAgent for Countdown {
    const NAME: &'static str = "Countdown";
    const TASK_TYPE: &'static str = "countdown";
    type Meta = Meta;
    const META_VERSION: u32 = 2;

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Countdown { gets: AtomicU32::new(0) })
    }

    fn upgrade_meta(version: u32, meta: serde_json::Value) -> Result<Meta, AgentError> {
        assert!(version < 2);
        Ok(Meta { polls: meta["n"].as_u64().unwrap_or(0) as u32, key: "old".into() })
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<Meta, AgentError> {
        let custom: Custom = task.custom()?;
        match custom.fail {
            Some(m) if custom.retry => return Err(AgentError::retryable(m)),
            Some(m) => return Err(AgentError::permanent(m)),
            None => {}
        }
        let key = format!("{}|{}", task.idempotency_key()?.unwrap_or_default(), ctx.secret("g", "token").unwrap_or_default());
        Ok(Meta { polls: task.input("polls")?, key })
    }

    async fn get(&self, _ctx: &Context, meta: Meta) -> Result<Resource, AgentError> {
        let n = self.gets.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(if n >= meta.polls {
            Resource::succeeded(Literals::new().with("gets", i64::from(n)).with("key", meta.key))
        } else {
            Resource::running().with_message(format!("{n} of {}", meta.polls))
        })
    }

    async fn delete(&self, _ctx: &Context, _meta: Meta) -> Result<(), AgentError> {
        Ok(())
    }
}

fn harness(protocol: Protocol) -> Harness {
    Harness::for_async::<Countdown>(Context::for_tests(serde_json::json!({})).with_secret("token", "s3cr3t"))
        .unwrap()
        .protocol(protocol)
        .poll_interval(Duration::ZERO)
}

#[test]
fn polls_until_terminal_on_both_protocols() {
    for protocol in [Protocol::V1, Protocol::V2] {
        let done = harness(protocol).run(TaskRequest::new("countdown").with_input("polls", 3)).unwrap();
        assert_eq!(done.phase, Phase::Succeeded, "{protocol:?}");
        let outputs = done.outputs.unwrap();
        assert_eq!(outputs.read::<i64>("gets").unwrap(), 3);
        // Flyte 2 sends the connection's secrets; Flyte 1 has none on the wire.
        let secret = if protocol == Protocol::V2 { "s3cr3t" } else { "" };
        let expected = format!("test-project/development/test-execution/n0/countdown/0|{secret}");
        assert_eq!(outputs.read::<String>("key").unwrap(), expected);
    }
}

#[test]
fn max_polls_bounds_the_run() {
    let e = harness(Protocol::V1).max_polls(2).run(TaskRequest::new("countdown").with_input("polls", 5)).unwrap_err();
    assert!(e.message().contains("still in phase RUNNING after 2 GetTask calls"), "{e}");
}

#[test]
fn job_failures_in_create_surface_on_the_first_get() {
    let cases =
        [(serde_json::json!({"fail": "no"}), Phase::Failed), (serde_json::json!({"fail": "later", "retry": true}), Phase::RetryableFailed)];
    for (custom, phase) in cases {
        let h = harness(Protocol::V1);
        let job = h.create(TaskRequest::new("countdown").with_custom(custom)).unwrap();
        assert_eq!(h.get(&job).unwrap().phase, phase);
        h.abort(&job).unwrap();
    }
    // A missing input is a permanent failure naming it.
    let done = harness(Protocol::V2).run(TaskRequest::new("countdown")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.starts_with("input `polls` is missing"), "{}", done.message);
}

#[test]
fn metadata_versions() {
    let h = harness(Protocol::V1);
    // Unversioned metadata (version 0) goes through upgrade_meta.
    let old = h.get(&Job::from_meta(br#"{"n": 1}"#.to_vec())).unwrap();
    assert_eq!(old.outputs.unwrap().read::<String>("key").unwrap(), "old");
    // A newer format is refused with a precondition error.
    let e = h.get(&Job::from_meta(br#"{"meta_version": 3, "meta": {}}"#.to_vec())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Precondition);
    assert!(e.message().contains("format version 3"), "{e}");
    let job = h.create(TaskRequest::new("countdown").with_input("polls", 1)).unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&job.resource_meta).unwrap();
    assert_eq!(stored["meta_version"], 2);
}

/// Answers RUNNING (against the rules), or panics when told to.
struct Lazy;

impl SyncAgent for Lazy {
    const NAME: &'static str = "Lazy";
    const TASK_TYPE: &'static str = "lazy";

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Lazy)
    }

    async fn execute(&self, _ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        if task.input::<bool>("panic")? {
            panic!("boom");
        }
        Ok(Resource::running())
    }
}

#[test]
fn sync_agents_must_answer_terminal_and_panics_are_errors() {
    for protocol in [Protocol::V1, Protocol::V2] {
        let h = Harness::for_sync::<Lazy>(Context::for_tests(serde_json::json!({}))).unwrap().protocol(protocol);
        let e = h.run(TaskRequest::new("lazy").with_input("panic", false)).unwrap_err();
        assert!(e.message().contains("must answer with a terminal phase"), "{e}");
        let e = h.run(TaskRequest::new("lazy").with_input("panic", true)).unwrap_err();
        assert_eq!(e.message(), "the agent panicked: boom");
    }
}
