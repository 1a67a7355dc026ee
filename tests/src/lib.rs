//! Support for agent-host's end-to-end tests: where the built artifacts are, a host started
//! in-process on 127.0.0.1:0 with a temporary plugin directory, and a small gRPC client.
//!
//! The artifacts (the `agent-host` binary, the example plugins and the fixture plugins under
//! `target/debug/fixtures/`) are built by `tests/build-fixtures.sh`, which `tests/run.sh` runs
//! before `cargo test`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_host::{config::Config, Host};
use tonic::{transport::Channel, Request, Status};

/// `target/debug` (or wherever this test binary was built).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/debug/deps/<test binary>
    exe.parent().and_then(Path::parent).expect("test binaries live in <target>/<profile>/deps").to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `bash tests/build-fixtures.sh` (tests/run.sh does) before `cargo test`", path.display());
    path
}

/// The `agent-host` binary (it runs plugin checks in a child process).
pub fn host_exe() -> PathBuf {
    built(target_dir().join("agent-host"))
}

/// The echo example plugin.
pub fn echo_plugin() -> PathBuf {
    built(target_dir().join("libecho_plugin.so"))
}

/// A fixture plugin by name (`good`, `init-panic`, …).
pub fn fixture(name: &str) -> PathBuf {
    built(target_dir().join("fixtures").join(format!("{name}.so")))
}

/// A host configuration for tests: loopback, the given directories, small defaults.
pub fn test_config(plugin_dir: &Path, work_dir: &Path) -> Config {
    let mut config = Config::load(None, []).expect("the embedded config is valid");
    config.server.host = "127.0.0.1".into();
    config.loader.plugin_dir = plugin_dir.to_path_buf();
    config.loader.work_dir = work_dir.to_path_buf();
    config
}

/// A host running in this process on 127.0.0.1:0.
pub struct TestHost {
    /// gRPC address.
    pub addr: std::net::SocketAddr,
    /// Admin (metrics/status) address.
    pub admin_addr: std::net::SocketAddr,
    /// The host's shared state.
    pub host: Arc<Host>,
    /// The plugin directory.
    pub plugin_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), agent_host::RunError>>>,
    _dir: tempfile::TempDir,
}

impl TestHost {
    /// Starts a host whose plugin directory holds `plugins` (file name, source file), and waits
    /// until it serves (its first scan is done).
    pub async fn start(plugins: &[(&str, PathBuf)]) -> TestHost {
        Self::start_with(plugins, |_| {}).await
    }

    /// [`TestHost::start`] serving TLS with these files.
    pub async fn start_tls(plugins: &[(&str, PathBuf)], tls: agent_host::tls::TlsConfig) -> TestHost {
        Self::start_with(plugins, |c| c.server.tls = Some(tls)).await
    }

    /// [`TestHost::start`] with a configuration adjusted by `tune`.
    pub async fn start_with(plugins: &[(&str, PathBuf)], tune: impl FnOnce(&mut Config)) -> TestHost {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("creating the plugin directory");
        for (name, source) in plugins {
            std::fs::copy(source, plugin_dir.join(name)).expect("copying a plugin");
        }
        let mut config = test_config(&plugin_dir, &dir.path().join("work"));
        tune(&mut config);
        let host = Host::new(config, host_exe());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a gRPC port");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding an admin port");
        let (addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent_host::run(host.clone(), grpc, Some(admin), async move {
            let _ = stopped.await;
        }));
        let me = TestHost { addr, admin_addr, host, plugin_dir, stop: Some(stop), task: Some(task), _dir: dir };
        me.wait_serving().await;
        me
    }

    /// A channel to the host.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connecting to the test host")
    }

    /// Health of `service` ("" for the server).
    pub async fn health(&self, service: &str) -> Result<i32, Status> {
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let resp: tonic_health::pb::HealthCheckResponse = unary(self.channel().await, "/grpc.health.v1.Health/Check", req).await?;
        Ok(resp.status)
    }

    async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let tls = self.host.config.server.tls.is_some();
        loop {
            if tls {
                // The gRPC port speaks TLS: the admin port's /readyz mirrors health "".
                if http_get(self.admin_addr, "/readyz").await.0.contains("200") {
                    return;
                }
            } else if let Ok(s) = self.health("").await {
                if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the test host did not become SERVING within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the host and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the host task ran").expect("the host stopped cleanly");
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts `agent-host serve --config <config>` with `stderr` as its log, and reads the
/// addresses it prints: (child, gRPC address, admin address).
pub async fn spawn_serve(config: &Path, stderr: std::process::Stdio) -> (std::process::Child, std::net::SocketAddr, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(host_exe())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting agent-host");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let field = |k: &str| -> std::net::SocketAddr {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_else(|| panic!("no {k} in {line:?}")).parse().unwrap()
    };
    (child, field("grpc="), field("metrics="))
}

/// One unary call with prost messages.
pub async fn unary<Req, Resp>(channel: Channel, path: &'static str, request: Req) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    client.unary(Request::new(request), http::uri::PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
}

/// Flyte 1's ExecuteTaskSync as propeller calls it: the header, then the inputs, then the
/// first response.
pub async fn execute_sync(
    channel: Channel,
    header: agent_proto::flyteidl::admin::CreateRequestHeader,
    inputs: agent_proto::flyteidl::core::LiteralMap,
) -> Result<agent_proto::flyteidl::admin::ExecuteTaskSyncResponse, Status> {
    use agent_proto::flyteidl::admin::{execute_task_sync_request::Part, ExecuteTaskSyncRequest, ExecuteTaskSyncResponse};
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let parts =
        vec![ExecuteTaskSyncRequest { part: Some(Part::Header(header)) }, ExecuteTaskSyncRequest { part: Some(Part::Inputs(inputs)) }];
    let codec = tonic_prost::ProstCodec::<ExecuteTaskSyncRequest, ExecuteTaskSyncResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/flyteidl.service.SyncAgentService/ExecuteTaskSync");
    let mut responses = client.streaming(Request::new(tokio_stream::iter(parts)), path, codec).await?.into_inner();
    responses.message().await?.ok_or_else(|| Status::internal("ExecuteTaskSync ended without a response"))
}

/// One unary call with raw bytes (for malformed requests).
pub async fn unary_raw(channel: Channel, path: &'static str, request: bytes::Bytes) -> Result<bytes::Bytes, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .unary(Request::new(request), http::uri::PathAndQuery::from_static(path), agent_host::grpc::RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// `GET http://<addr><path>`: (status line, body). Plain HTTP/1.1, for the admin port.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connecting to the admin port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The host binary running as a child process (for signals and exit codes).
pub struct HostProcess {
    /// The child.
    pub child: std::process::Child,
    /// gRPC address.
    pub addr: std::net::SocketAddr,
    /// Admin address.
    pub admin_addr: std::net::SocketAddr,
    /// The plugin directory.
    pub plugin_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The files of a host started as a process: a temporary directory holding a plugin directory
/// with `plugins` copied in, and a loopback `config.toml` (ports chosen by the system) with
/// `server` under `[server]`, `loader` under `[loader]`, then `rest`. Returns the directory (the
/// files live as long as it does), the plugin directory and the configuration file.
pub fn host_files(plugins: &[(&str, PathBuf)], server: &str, loader: &str, rest: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for (name, source) in plugins {
        std::fs::copy(source, plugin_dir.join(name)).unwrap();
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\nmetrics_port = 0\n{server}\n[loader]\nplugin_dir = {:?}\nwork_dir = {:?}\n{loader}\n{rest}",
            plugin_dir,
            dir.path().join("work")
        ),
    )
    .unwrap();
    (dir, plugin_dir, config)
}

impl HostProcess {
    /// Starts `agent-host serve` with `extra_config` (TOML appended to a loopback config) and
    /// these plugins, and waits until it serves.
    pub async fn start(plugins: &[(&str, PathBuf)], extra_config: &str) -> HostProcess {
        let (dir, plugin_dir, config) = host_files(plugins, extra_config, "", "");
        let (child, addr, admin_addr) = spawn_serve(&config, std::process::Stdio::inherit()).await;
        let me = HostProcess { child, addr, admin_addr, plugin_dir, _dir: dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if http_get(admin_addr, "/healthz").await.0.contains("200") {
                if let Ok(ch) = me.channel().await {
                    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
                    let r: Result<tonic_health::pb::HealthCheckResponse, _> = unary(ch, "/grpc.health.v1.Health/Check", req).await;
                    if r.map(|r| r.status == 1).unwrap_or(false) {
                        return me;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("agent-host did not become SERVING within 60 s");
    }

    /// A channel to the host.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await
    }

    /// Sends a signal (by name, e.g. "TERM").
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap().success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loader like the host's, with `[verify]` and `[permissions]` from `config` (for tests that
/// drive the loader directly).
pub fn loader_for(config: &Config, work_dir: &Path) -> agent_host::loader::Loader {
    use agent_host::{loader::LoaderSettings, verify};
    agent_host::loader::Loader::new(LoaderSettings {
        work_dir: work_dir.to_path_buf(),
        check_exe: host_exe(),
        check_timeout: Duration::from_secs(30),
        worker_threads: 1,
        no_inline_calls: !config.loader.inline_calls,
        background_nice: config.loader.background_nice,
        secrets_dir: "/etc/secrets".into(),
        secrets_env_prefix: "_FSEC_".into(),
        max_log_level: 3,
        files: verify::FilePolicy::new(&config.permissions, &config.loader.plugin_dir, &config.verify),
        verifier: Arc::new(verify::Verifier::new(&config.verify).expect("a valid [verify] configuration")),
    })
}

/// The value of the sample `line` (name and labels, exactly as exposed) in `/metrics`; 0 when
/// absent.
pub async fn metric(admin: std::net::SocketAddr, line: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Waits until the status of `file` (in the plugin directory) has `error_reason == reason`.
pub async fn wait_refused(host: &TestHost, file: &str, reason: &str, within: Duration) -> agent_host::scan::FileStatus {
    let path = host.plugin_dir.join(file);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = host.host.statuses.lock().unwrap().get(&path).cloned();
        if let Some(s) = &status {
            if s.error_reason == Some(reason) {
                return s.clone();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{file}: no {reason} refusal within {within:?}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies `source` to `dir/name` by a temporary name and a rename.
pub fn publish(source: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}
