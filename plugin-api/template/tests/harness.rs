//! My agent, driven the way Flyte drives it (see `agent_plugin_api::testing`).

use agent_plugin_api::{serde_json::json, testing::Harness, Context, Phase, Protocol, TaskRequest};
use my_agent::MyJobAgent;

fn harness(protocol: Protocol) -> Harness {
    // The plugin's config, as the host would pass its `[plugins.my_agent]` table.
    let ctx = Context::for_tests(json!({"greeting": "Hi"}));
    Harness::for_async::<MyJobAgent>(ctx).unwrap().protocol(protocol)
}

#[test]
fn greets_when_the_job_is_done() {
    for protocol in [Protocol::V1, Protocol::V2] {
        let task = TaskRequest::new("my_job").with_custom(json!({"seconds": 0})).with_input("name", "Flyte");
        let done = harness(protocol).run(task).unwrap();
        assert_eq!(done.phase, Phase::Succeeded, "{}", done.message);
        assert_eq!(done.outputs.unwrap().read::<String>("greeting").unwrap(), "Hi, Flyte!");
        assert_eq!(done.log_links[0].name, "Job console");
    }
}

#[test]
fn reports_running_then_can_be_aborted() {
    let harness = harness(Protocol::V1);
    let job = harness.create(TaskRequest::new("my_job").with_custom(json!({"seconds": 3600})).with_input("name", "Flyte")).unwrap();
    assert_eq!(harness.get(&job).unwrap().phase, Phase::Running);
    harness.abort(&job).unwrap();
}

#[test]
fn a_missing_input_fails_the_task() {
    let done = harness(Protocol::V1).run(TaskRequest::new("my_job")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("input `name` is missing"), "{}", done.message);
}
