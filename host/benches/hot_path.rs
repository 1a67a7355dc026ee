//! Micro-benchmarks of the host's hot path (issue 7): the routing decode, the call across the
//! FFI into the echo plugin and back, and encoding the answers the host builds itself.
//!
//!   cargo build --release -p agent-host -p echo-plugin && cargo bench -p agent-host --bench hot_path
//!
//! The FFI benchmarks load `target/release/libecho_plugin.so` (or `$ECHO_PLUGIN`) through the
//! host's own first scan (private copy, check in a child `agent-host` process, load, init);
//! without the file they are
//! skipped. Not run in CI (clippy compiles them).

use std::{hint::black_box, path::PathBuf, sync::Arc};

use agent_host::{config::Config, plugin::PluginVersion, reload::Reloader, route, rpc::Rpc, Host};
use agent_plugin_abi::method;
use agent_proto::flyteidl::{admin, core};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;

fn string(s: String) -> core::Literal {
    use core::{literal, primitive, scalar};
    core::Literal {
        value: Some(literal::Value::Scalar(Box::new(core::Scalar {
            value: Some(scalar::Value::Primitive(core::Primitive { value: Some(primitive::Value::StringValue(s)) })),
        }))),
        ..Default::default()
    }
}

fn integer(i: i64) -> core::Literal {
    use core::{literal, primitive, scalar};
    core::Literal {
        value: Some(literal::Value::Scalar(Box::new(core::Scalar {
            value: Some(scalar::Value::Primitive(core::Primitive { value: Some(primitive::Value::Integer(i)) })),
        }))),
        ..Default::default()
    }
}

/// A task template as flytekit registers one for an agent task.
fn template(task_type: &str) -> core::TaskTemplate {
    let custom = prost_types::Struct {
        fields: [
            ("query", "SELECT * FROM dataset.table WHERE ds = '{{ .inputs.ds }}'"),
            ("region", "us-east-1"),
            ("warehouse", "analytics"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v.into())) }))
        .collect(),
    };
    core::TaskTemplate {
        id: Some(core::Identifier {
            resource_type: core::ResourceType::Task as i32,
            project: "flytesnacks".into(),
            domain: "development".into(),
            name: "workflows.example.echo_task".into(),
            version: "v0.3.41-a1b2c3d4e5".into(),
            ..Default::default()
        }),
        r#type: task_type.into(),
        metadata: Some(core::TaskMetadata {
            runtime: Some(core::RuntimeMetadata { r#type: 1, version: "1.16.31".into(), flavor: "python".into() }),
            timeout: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            retries: Some(core::RetryStrategy { retries: 3 }),
            ..Default::default()
        }),
        custom: Some(custom),
        config: [("echo.region".to_string(), "us-east-1".to_string())].into(),
        ..Default::default()
    }
}

/// A CreateTask for `echo_async`: small inputs, or 1 MiB (1024 strings of 1 KiB) beside them.
fn create_request(large: bool) -> Bytes {
    let mut literals: std::collections::HashMap<String, core::Literal> =
        [("a".to_string(), integer(42)), ("b".to_string(), string("hello".into()))].into();
    if large {
        let rows = (0..1024).map(|i| string(format!("{i:04}").repeat(256))).collect();
        literals.insert(
            "rows".into(),
            core::Literal {
                value: Some(core::literal::Value::Collection(core::LiteralCollection { literals: rows })),
                ..Default::default()
            },
        );
    }
    let req = admin::CreateTaskRequest {
        inputs: Some(core::LiteralMap { literals: literals.into_iter().collect() }),
        template: Some(template("echo_async")),
        output_prefix: "s3://my-s3-bucket/metadata/propeller/flytesnacks-development-f6a8c2e4b1d3e5f7a9c1/n0/data/0".into(),
        task_execution_metadata: Some(admin::TaskExecutionMetadata {
            namespace: "flytesnacks-development".into(),
            k8s_service_account: "default".into(),
            labels: [("execution-id".to_string(), "f6a8c2e4b1d3e5f7a9c1".to_string())].into(),
            ..Default::default()
        }),
    };
    Bytes::from(req.encode_to_vec())
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for (name, body) in [("create_realistic", create_request(false)), ("create_1mib", create_request(true))] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("task_key", name), &body, |b, body| {
            b.iter(|| route::task_key(Rpc::V1Create, black_box(body)).expect("routes"))
        });
    }
    #[allow(deprecated)]
    let get = Bytes::from(
        admin::GetTaskRequest {
            resource_meta: vec![b'x'; 200].into(),
            task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    g.throughput(Throughput::Bytes(get.len() as u64));
    g.bench_with_input(BenchmarkId::new("task_key", "get"), &get, |b, body| {
        b.iter(|| route::task_key(Rpc::V1Get, black_box(body)).expect("routes"))
    });
    g.finish();
}

fn echo_plugin() -> Option<PathBuf> {
    let path = std::env::var_os("ECHO_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libecho_plugin.so"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!("{} not built: skipping the FFI benchmarks (cargo build --release -p echo-plugin)", path.display());
        None
    }
}

/// A host that loaded the echo plugin as `serve` does (private copy, child check, load, init).
fn load_echo(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> (Arc<Host>, Arc<PluginVersion>) {
    let dir = std::env::temp_dir().join(format!("agent-host-bench-{}", std::process::id()));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("a temporary plugin directory");
    std::fs::copy(path, plugins.join("echo.so")).expect("copies the echo plugin");
    let mut config = Config::load(None, []).expect("the embedded config is valid");
    config.loader.plugin_dir = plugins;
    config.loader.work_dir = dir.join("work");
    config.loader.stable_ms = 0;
    config.log.level = "warn".into();
    let host = Host::new(config, PathBuf::from(env!("CARGO_BIN_EXE_agent-host")));
    rt.block_on(host.first_scan(&mut Reloader::default()));
    let plugin = host.service.registry.snapshot().plugins.first().cloned().expect("the echo plugin loads");
    // The library stays mapped after its files are gone; nothing rescans the directory.
    let _ = std::fs::remove_dir_all(&dir);
    (host, plugin)
}

fn ffi(c: &mut Criterion) {
    let Some(path) = echo_plugin() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (host, plugin) = load_echo(&rt, &path);
    let async_agent = plugin.agents().iter().position(|a| !a.is_sync).expect("echo has an async agent") as u32;
    let small = create_request(false);
    let created = rt.block_on(plugin.call(async_agent, method::V1_CREATE, small.clone())).expect("create");
    let meta = admin::CreateTaskResponse::decode(created).expect("decodes").resource_meta;
    let get = Bytes::from(
        admin::GetTaskRequest {
            resource_meta: meta,
            task_category: Some(admin::TaskCategory { name: "echo_async".into(), version: 0 }),
            ..Default::default()
        }
        .encode_to_vec(),
    );

    let mut g = c.benchmark_group("ffi");
    for (name, m, body) in [("create_realistic", method::V1_CREATE, small.clone()), ("get", method::V1_GET, get.clone())] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("call", name), |b| {
            b.iter(|| rt.block_on(plugin.call(async_agent, m, black_box(body.clone()))).expect("answers"))
        });
    }
    // 64 calls in flight from one host task, as 64 streams put them.
    g.throughput(Throughput::Elements(64));
    g.bench_function(BenchmarkId::new("call_x64", "get"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let calls: Vec<_> = (0..64).map(|_| plugin.call(async_agent, method::V1_GET, get.clone())).collect();
                for call in calls {
                    call.await.expect("answers");
                }
            })
        })
    });
    let large = create_request(true);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("call", "create_1mib"), |b| {
        b.iter(|| rt.block_on(plugin.call(async_agent, method::V1_CREATE, black_box(large.clone()))).expect("answers"))
    });
    g.finish();

    // The whole host side without the transport: route, registry, metrics, FFI, answer bytes.
    let service = host.service.clone();
    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(1));
    for (name, rpc, body) in [("create_realistic", Rpc::V1Create, small), ("get", Rpc::V1Get, get)] {
        g.bench_function(BenchmarkId::new("unary", name), |b| {
            b.iter(|| rt.block_on(service.unary(rpc, black_box(body.clone()))).expect("answers"))
        });
    }
    g.finish();

    // Answers the host encodes itself: ListAgents from the registry, and the ExecuteTaskSync
    // request joined from its two stream messages.
    let mut g = c.benchmark_group("encode");
    g.bench_function("list_agents", |b| b.iter(|| rt.block_on(service.unary(Rpc::V1ListAgents, Bytes::new())).expect("answers")));
    let header = admin::CreateRequestHeader { template: Some(template("echo_sync")), ..Default::default() }.encode_to_vec();
    let inputs = core::LiteralMap { literals: [("a".to_string(), integer(42))].into() }.encode_to_vec();
    g.bench_function("execute_request", |b| b.iter(|| route::execute_request(black_box(&header), black_box(&inputs))));
    g.finish();
}

criterion_group!(benches, routing, ffi);
criterion_main!(benches);
