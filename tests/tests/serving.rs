//! Serving through a host with the echo plugin: routing on task type and version, each error
//! code, and a panic inside an agent that the host survives.

use agent_host_tests::{echo_plugin, unary, unary_raw, TestHost};
use agent_proto::flyteidl::{admin, core};
use tonic::Code;

const CREATE: &str = "/flyteidl.service.AsyncAgentService/CreateTask";
const GET: &str = "/flyteidl.service.AsyncAgentService/GetTask";
const METRICS: &str = "/flyteidl.service.AsyncAgentService/GetTaskMetrics";

fn int(i: i64) -> core::Literal {
    use core::{literal, primitive, scalar};
    core::Literal {
        value: Some(literal::Value::Scalar(Box::new(core::Scalar {
            value: Some(scalar::Value::Primitive(core::Primitive { value: Some(primitive::Value::Integer(i)) })),
        }))),
        ..Default::default()
    }
}

fn create(task_type: &str, version: i32, custom: Option<prost_types_struct::Struct>) -> admin::CreateTaskRequest {
    admin::CreateTaskRequest {
        inputs: Some(core::LiteralMap { literals: [("x".to_string(), int(7))].into_iter().collect() }),
        template: Some(core::TaskTemplate { r#type: task_type.into(), task_type_version: version, custom, ..Default::default() }),
        output_prefix: "s3://bucket/out".into(),
        ..Default::default()
    }
}

mod prost_types_struct {
    pub use prost_types::{value::Kind, Struct, Value};

    pub fn one(key: &str, value: &str) -> Struct {
        Struct { fields: [(key.to_string(), Value { kind: Some(Kind::StringValue(value.into())) })].into_iter().collect() }
    }
}

fn category(name: &str, version: i32) -> Option<admin::TaskCategory> {
    Some(admin::TaskCategory { name: name.into(), version })
}

#[tokio::test]
async fn create_then_get_routes_to_the_agent_and_echoes() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let created: admin::CreateTaskResponse = unary(ch.clone(), CREATE, create("echo_async", 0, None)).await.unwrap();
    let get = admin::GetTaskRequest {
        task_category: category("echo_async", 0),
        resource_meta: created.resource_meta.clone(),
        ..Default::default()
    };
    let got: admin::GetTaskResponse = unary(ch.clone(), GET, get).await.unwrap();
    let resource = got.resource.unwrap();
    assert_eq!(resource.phase, core::task_execution::Phase::Succeeded as i32);
    assert_eq!(resource.outputs.unwrap().literals.get("x"), Some(&int(7)));
    // The deprecated task_type routes when no category is given (version 0).
    #[allow(deprecated)]
    let legacy = admin::GetTaskRequest { task_type: "echo_async".into(), resource_meta: created.resource_meta, ..Default::default() };
    let got: admin::GetTaskResponse = unary(ch, GET, legacy).await.unwrap();
    assert_eq!(got.resource.unwrap().phase, core::task_execution::Phase::Succeeded as i32);
    host.stop().await;
}

#[tokio::test]
async fn an_unknown_type_or_version_is_not_found_with_flytekits_message() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("nope", 0, None)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "Cannot find connector for task type: nope."));
    let err = unary::<_, admin::CreateTaskResponse>(ch, CREATE, create("echo_async", 1, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "version 1 of echo_async is not served: {err:?}");
    host.stop().await;
}

#[tokio::test]
async fn a_panicking_agent_answers_internal_and_the_host_keeps_serving() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let custom = Some(prost_types_struct::one("echo_panic", "kaboom"));
    for _ in 0..3 {
        let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, create("echo_async", 0, custom.clone())).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        for expected in ["echo", "0.1.0", "panicked", "kaboom"] {
            assert!(err.message().contains(expected), "{expected:?} missing from {:?}", err.message());
        }
    }
    let ok: Result<admin::CreateTaskResponse, _> = unary(ch, CREATE, create("echo_async", 0, None)).await;
    assert!(ok.is_ok(), "the next call succeeds: {ok:?}");
    host.stop().await;
}

#[tokio::test]
async fn agent_errors_unimplemented_methods_and_garbage_have_their_codes() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let err = unary::<_, admin::CreateTaskResponse>(
        ch.clone(),
        CREATE,
        create("echo_async", 0, Some(prost_types_struct::one("echo_error", "nope"))),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("plugin echo 0.1.0") && err.message().contains("nope"), "{}", err.message());

    let metrics = admin::GetTaskMetricsRequest { task_category: category("echo_sync", 0), ..Default::default() };
    let err = unary::<_, admin::GetTaskMetricsResponse>(ch.clone(), METRICS, metrics).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    let err = unary_raw(ch.clone(), CREATE, bytes::Bytes::from_static(b"\xff\xff\xff")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = unary::<_, admin::GetAgentResponse>(
        ch.clone(),
        "/flyteidl.service.AgentMetadataService/GetAgent",
        admin::GetAgentRequest { name: "nope".into() },
    )
    .await
    .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "Cannot find connector for name: nope."));

    let err = unary_raw(ch, "/flyteidl.service.AsyncAgentService/Nope", bytes::Bytes::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    host.stop().await;
}

fn string(s: String) -> core::Literal {
    use core::{literal, primitive, scalar};
    core::Literal {
        value: Some(literal::Value::Scalar(Box::new(core::Scalar {
            value: Some(scalar::Value::Primitive(core::Primitive { value: Some(primitive::Value::StringValue(s)) })),
        }))),
        ..Default::default()
    }
}

#[tokio::test]
async fn messages_over_the_size_limit_are_resource_exhausted_either_way() {
    const LIMIT: usize = 4096;
    let host = TestHost::start_with(&[("echo.so", echo_plugin())], |c| c.server.max_message_bytes = LIMIT).await;
    let ch = host.channel().await;
    let with_input = |len: usize| {
        let mut request = create("echo_async", 0, None);
        request.inputs = Some(core::LiteralMap { literals: [("s".to_string(), string("x".repeat(len)))].into_iter().collect() });
        request
    };
    // A request over the limit: refused at its length prefix.
    let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, with_input(LIMIT)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("server.max_message_bytes"), "{}", err.message());
    // A request under the limit whose answer is over it: echo keeps the input in its meta, in
    // base64 (a third larger), so the answer does not fit. Refused before any of it is sent.
    let request = with_input(LIMIT - 400);
    assert!(prost::Message::encoded_len(&request) < LIMIT);
    let err = unary::<_, admin::CreateTaskResponse>(ch.clone(), CREATE, request).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("answer") && err.message().contains("server.max_message_bytes"), "{}", err.message());
    // The connection serves on.
    let ok: Result<admin::CreateTaskResponse, _> = unary(ch, CREATE, with_input(10)).await;
    assert!(ok.is_ok(), "the next call succeeds: {ok:?}");
    host.stop().await;
}

#[tokio::test]
async fn list_agents_describes_every_agent_for_propeller() {
    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let list: admin::ListAgentsResponse =
        unary(host.channel().await, "/flyteidl.service.AgentMetadataService/ListAgents", admin::ListAgentsRequest {}).await.unwrap();
    let by_name: std::collections::BTreeMap<_, _> = list.agents.iter().map(|a| (a.name.as_str(), a)).collect();
    let sync = by_name["Echo Sync Agent"];
    assert!(sync.is_sync);
    #[allow(deprecated)]
    let types = &sync.supported_task_types;
    assert_eq!(types, &["echo_sync"]);
    assert_eq!(sync.supported_task_categories, vec![admin::TaskCategory { name: "echo_sync".into(), version: 0 }]);
    assert!(!by_name["Echo Async Agent"].is_sync);
    host.stop().await;
}

/// Where a nonblocking agent's call runs: its first step on the host's request thread (no thread
/// switch), and, once it has to wait, on its plugin's runtime; with `loader.inline_calls = false`
/// always on the plugin's runtime.
#[tokio::test]
async fn a_nonblocking_agent_starts_on_the_host_thread_unless_inline_calls_are_off() {
    use prost_types_struct::{Kind, Struct, Value};
    let thread_of = |resource: Option<admin::Resource>| -> String {
        let info = resource.and_then(|r| r.custom_info).expect("custom_info");
        match info.fields.get("thread").and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("no thread name in {other:?}"),
        }
    };
    let switches = |sleep_ms: Option<f64>| {
        let mut fields: std::collections::BTreeMap<String, Value> =
            [("echo_report_thread".to_string(), Value { kind: Some(Kind::BoolValue(true)) })].into_iter().collect();
        if let Some(ms) = sleep_ms {
            fields.insert("echo_sleep_ms".into(), Value { kind: Some(Kind::NumberValue(ms)) });
        }
        Some(Struct { fields })
    };
    let header = |custom| admin::CreateRequestHeader {
        template: Some(core::TaskTemplate { r#type: "echo_sync".into(), custom, ..Default::default() }),
        ..Default::default()
    };
    let run = |ch, custom| async move {
        let response = agent_host_tests::execute_sync(ch, header(custom), core::LiteralMap::default()).await.expect("answers");
        match response.res {
            Some(admin::execute_task_sync_response::Res::Header(h)) => thread_of(h.resource),
            other => panic!("not a header: {other:?}"),
        }
    };

    let host = TestHost::start(&[("echo.so", echo_plugin())]).await;
    let ch = host.channel().await;
    let quick = run(ch.clone(), switches(None)).await;
    assert_ne!(quick, "plugin-echo", "a call done in its first step runs on the host's thread");
    assert_eq!(run(ch.clone(), switches(Some(30.0))).await, "plugin-echo", "after waiting, the call goes on in the plugin's runtime");
    host.stop().await;

    let host = TestHost::start_with(&[("echo.so", echo_plugin())], |c| c.loader.inline_calls = false).await;
    let ch = host.channel().await;
    assert_eq!(run(ch, switches(None)).await, "plugin-echo", "inline_calls = false: every call runs on the plugin's runtime");
    host.stop().await;
}
