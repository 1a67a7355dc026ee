//! The echo agents driven in-process the way Flyte drives them, on both protocols.

use agent_plugin_api::{
    serde_json,
    testing::{Harness, Job},
    value::Msgpack,
    Context, ErrorKind, Phase, Protocol, TaskRequest,
};
use echo_plugin::{EchoAsync, EchoSync};
use std::collections::BTreeMap;

fn context() -> Context {
    Context::for_tests(serde_json::json!({}))
}

fn task(task_type: &str) -> TaskRequest {
    TaskRequest::new(task_type)
        .with_input("n", 7)
        .with_input("names", vec!["a", "b"])
        .with_input("info", Msgpack(BTreeMap::from([("status_code", 200)])))
}

#[test]
fn both_agents_echo_their_inputs_on_both_protocols() {
    for protocol in [Protocol::V1, Protocol::V2] {
        let sync = Harness::for_sync::<EchoSync>(context()).unwrap().protocol(protocol);
        let asynchronous = Harness::for_async::<EchoAsync>(context()).unwrap().protocol(protocol);
        for (harness, task_type) in [(&sync, "echo_sync"), (&asynchronous, "echo_async")] {
            let done = harness.run(task(task_type)).unwrap();
            assert_eq!(done.phase, Phase::Succeeded, "{task_type} on {protocol:?}");
            assert_eq!(done.custom_info["plugin"], "echo");
            let outputs = done.outputs.unwrap();
            assert_eq!(outputs.read::<i64>("n").unwrap(), 7);
            assert_eq!(outputs.read::<Vec<String>>("names").unwrap(), ["a", "b"]);
            let Msgpack(info) = outputs.read::<Msgpack<BTreeMap<String, i64>>>("info").unwrap();
            assert_eq!(info["status_code"], 200);
        }
    }
}

#[test]
fn abort_deletes_and_deleting_again_succeeds() {
    let harness = Harness::for_async::<EchoAsync>(context()).unwrap();
    let job = harness.create(task("echo_async")).unwrap();
    harness.abort(&job).unwrap();
}

#[test]
fn an_agent_error_fails_the_call() {
    let harness = Harness::for_async::<EchoAsync>(context()).unwrap();
    let e = harness.run(task("echo_async").with_custom(serde_json::json!({"echo_error": "boom"}))).unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Internal, "boom"));
}

#[test]
fn metadata_written_before_versioning_still_reads() {
    // What echo 0.1.0 stored: its meta as plain JSON, the literal 7 protobuf-encoded.
    let seven = agent_plugin_api::encode_message(&agent_plugin_api::value::IntoLiteral::into_literal(7i64));
    let old = serde_json::json!({"created_by": "0.1.0", "inputs": [["n", seven]]});
    let harness = Harness::for_async::<EchoAsync>(context()).unwrap();
    let done = harness.get(&Job::from_meta(serde_json::to_vec(&old).unwrap())).unwrap();
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(done.custom_info["created_by"], "0.1.0");
    assert_eq!(done.outputs.unwrap().read::<i64>("n").unwrap(), 7);
}

#[test]
fn format_version_1_metadata_reads_and_new_metadata_is_base64() {
    // What echo wrote as format version 1: each literal's bytes as a JSON array of numbers.
    let seven = agent_plugin_api::encode_message(&agent_plugin_api::value::IntoLiteral::into_literal(7i64));
    let v1 = serde_json::json!({"meta_version": 1, "meta": {"created_by": "0.1.0", "inputs": [["n", seven.clone()]]}});
    let harness = Harness::for_async::<EchoAsync>(context()).unwrap();
    let done = harness.get(&Job::from_meta(serde_json::to_vec(&v1).unwrap())).unwrap();
    assert_eq!(done.outputs.unwrap().read::<i64>("n").unwrap(), 7);

    // Format version 2: the same literal as one base64 string.
    let job = harness.create(task("echo_async")).unwrap();
    let written: serde_json::Value = serde_json::from_slice(&job.resource_meta).unwrap();
    assert_eq!(written["meta_version"], 2);
    let first = &written["meta"]["inputs"][0];
    assert!(first[1].is_string(), "bytes as base64 text: {first}");
    let done = harness.get(&job).unwrap();
    assert_eq!(done.phase, Phase::Succeeded);
}
