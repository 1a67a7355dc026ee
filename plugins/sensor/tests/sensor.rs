//! The sensor agent driven the way Flyte drives it.

use agent_plugin_api::{serde_json::json, testing::Harness, Context, Phase, Protocol, TaskRequest};
use sensor_plugin::Sensor;

fn file_sensor(path: &str) -> TaskRequest {
    TaskRequest::new("sensor")
        .with_custom(json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor", "sensor_config": null}))
        .with_input("path", path)
}

fn harness(protocol: Protocol) -> Harness {
    Harness::for_async::<Sensor>(Context::for_tests(json!({}))).unwrap().protocol(protocol)
}

#[test]
fn an_existing_path_succeeds_on_the_first_poll() {
    let dir = std::env::temp_dir();
    let file = dir.join(format!("sensor-test-{}", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    for protocol in [Protocol::V1, Protocol::V2] {
        let h = harness(protocol);
        let job = h.create(file_sensor(file.to_str().unwrap())).unwrap();
        assert_eq!(h.get(&job).unwrap().phase, Phase::Succeeded);
        let job = h.create(file_sensor(&format!("file://{}", dir.display()))).unwrap();
        assert_eq!(h.get(&job).unwrap().phase, Phase::Succeeded, "a directory, as a file:// URI");
    }
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_missing_path_keeps_running_until_it_appears() {
    let file = std::env::temp_dir().join(format!("sensor-later-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let h = harness(Protocol::V1);
    let job = h.create(file_sensor(file.to_str().unwrap())).unwrap();
    assert_eq!(h.get(&job).unwrap().phase, Phase::Running);
    assert_eq!(h.get(&job).unwrap().phase, Phase::Running);
    std::fs::write(&file, "now").unwrap();
    let done = h.get(&job).unwrap();
    assert_eq!(done.phase, Phase::Succeeded);
    h.abort(&job).unwrap();
    std::fs::remove_file(file).unwrap();
}

#[test]
fn the_resource_meta_keeps_flytekits_fields() {
    let job = harness(Protocol::V1).create(file_sensor("/nowhere")).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&job.resource_meta).unwrap();
    assert_eq!(
        meta["meta"],
        json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor", "sensor_config": null, "inputs": {"path": "/nowhere"}})
    );
}

#[test]
fn an_unknown_sensor_fails_naming_the_sensors_served() {
    let task = TaskRequest::new("sensor")
        .with_custom(json!({"sensor_module": "my_project.sensors", "sensor_name": "QueueSensor"}))
        .with_input("path", "/x");
    let done = harness(Protocol::V1).run(task).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("my_project.sensors.QueueSensor"), "{}", done.message);
    assert!(done.message.contains("flytekit.sensor.file_sensor.FileSensor"), "{}", done.message);
}

#[test]
fn unsupported_schemes_and_a_missing_path_input_fail_clearly() {
    // (Object-store URIs: tests/object_store.rs, against a local S3 stand-in.)
    let done = harness(Protocol::V1).run(file_sensor("ftp://host/key")).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.contains("ftp:// paths are not supported"), "{}", done.message);
    let no_path =
        TaskRequest::new("sensor").with_custom(json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor"}));
    let done = harness(Protocol::V1).run(no_path).unwrap();
    assert_eq!(done.phase, Phase::Failed);
    assert!(done.message.starts_with("input `path` is missing"), "{}", done.message);
}
