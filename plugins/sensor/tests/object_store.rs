//! FileSensor on `s3://` paths, against a local stand-in for S3 (HEAD object, ListObjectsV2).
//! Its own test binary: it sets the process's AWS_* environment (explicit keys, so no
//! credential provider looks anywhere else; the endpoint on 127.0.0.1).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use agent_plugin_api::{serde_json::json, testing::Harness, Context, Phase, TaskRequest};
use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
    Router,
};
use sensor_plugin::Sensor;

type Objects = Arc<Mutex<BTreeSet<String>>>;

/// Connections the stand-in accepted.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

async fn head_object(State(objects): State<Objects>, Path((_bucket, key)): Path<(String, String)>) -> Response {
    if objects.lock().unwrap().contains(&key) {
        (
            StatusCode::OK,
            [(header::CONTENT_LENGTH, "1"), (header::LAST_MODIFIED, "Mon, 30 Nov 2026 09:00:00 GMT"), (header::ETAG, "\"e1\"")],
        )
            .into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn list_objects(State(objects): State<Objects>, Path(bucket): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let contents: String = objects
        .lock()
        .unwrap()
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .map(|k| {
            format!(
                "<Contents><Key>{k}</Key><LastModified>2026-11-30T09:00:00.000Z</LastModified><ETag>\"e1\"</ETag><Size>1</Size></Contents>"
            )
        })
        .collect();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>{bucket}</Name><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
    );
    ([(header::CONTENT_TYPE, "application/xml")], xml).into_response()
}

/// The stand-in, started once; the environment points the S3 client at it.
fn s3() -> &'static (SocketAddr, Objects) {
    static S3: OnceLock<(SocketAddr, Objects)> = OnceLock::new();
    S3.get_or_init(|| {
        let objects = Objects::default();
        let state = objects.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let app = Router::new().route("/{bucket}", get(list_objects)).route("/{bucket}/{*key}", get(head_object)).with_state(state);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let listener = listener.tap_io(|_| {
                    CONNECTIONS.fetch_add(1, Ordering::SeqCst);
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        for (k, v) in [
            ("AWS_ENDPOINT", format!("http://{addr}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ] {
            std::env::set_var(k, v);
        }
        (addr, objects)
    })
}

fn file_sensor(path: &str) -> TaskRequest {
    TaskRequest::new("sensor")
        .with_custom(json!({"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor"}))
        .with_input("path", path)
}

fn poll(path: &str) -> Phase {
    let h = Harness::for_async::<Sensor>(Context::for_tests(json!({}))).unwrap();
    let job = h.create(file_sensor(path)).unwrap();
    h.get(&job).unwrap().phase
}

#[test]
fn s3_objects_and_prefixes_are_found_and_missing_ones_wait() {
    let (_, objects) = s3();
    assert_eq!(poll("s3://bucket/incoming/ready.csv"), Phase::Running);
    objects.lock().unwrap().insert("incoming/ready.csv".into());
    assert_eq!(poll("s3://bucket/incoming/ready.csv"), Phase::Succeeded, "an object");
    assert_eq!(poll("s3://bucket/incoming/"), Phase::Succeeded, "a prefix with objects under it");
    assert_eq!(poll("s3://bucket/outgoing"), Phase::Running, "an empty prefix");

    // One agent polling one bucket keeps its store, and with it the connection: flytekit's
    // s3fs does the same (fsspec keeps its filesystems). A store per poll opened a connection
    // (and, on https, a TLS session) each time.
    let h = Harness::for_async::<Sensor>(Context::for_tests(json!({}))).unwrap();
    let (ready, waiting) =
        (h.create(file_sensor("s3://bucket/incoming/ready.csv")).unwrap(), h.create(file_sensor("s3://bucket/later")).unwrap());
    let before = CONNECTIONS.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(h.get(&ready).unwrap().phase, Phase::Succeeded);
        assert_eq!(h.get(&waiting).unwrap().phase, Phase::Running);
    }
    assert_eq!(CONNECTIONS.load(Ordering::SeqCst) - before, 1, "ten polls (fifteen requests) of one bucket, one connection");
}
