//! Reload benchmark: how long from publishing a new plugin version (rename into the plugin
//! directory) to the first call it serves, and how resident memory grows per reload.
//!
//! Run through `tests/bench/reload.sh`, which builds the release host and two echo builds.
//! Usage: bench-reload HOST_EXE ECHO_V1 ECHO_V2 [SWAPS] [RSS_RELOADS]

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_host_tests::{host_files, unary};
use agent_proto::flyteidl::{admin, core};
use tonic::transport::Channel;

struct Host {
    child: Child,
    grpc: String,
    _dir: tempfile::TempDir,
    plugin_dir: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(exe: &Path, v1: &Path, stable_ms: u64) -> Host {
    let loader = format!("stable_ms = {stable_ms}\nmax_libraries = 100000");
    let (dir, plugin_dir, config) = host_files(&[("echo.so", v1.to_path_buf())], "", &loader, "[log]\nlevel = \"warn\"\n");
    let mut child =
        Command::new(exe).arg("serve").arg("--config").arg(&config).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let grpc = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("the host prints its address").to_string();
    Host { child, grpc, _dir: dir, plugin_dir }
}

async fn version(ch: &Channel) -> Option<String> {
    let req = admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: "echo_async".into(), ..Default::default() }),
        ..Default::default()
    };
    let r: admin::CreateTaskResponse = unary(ch.clone(), "/flyteidl.service.AsyncAgentService/CreateTask", req).await.ok()?;
    let text = String::from_utf8_lossy(&r.resource_meta).to_string();
    text.split("\"created_by\":\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string)
}

async fn connect(host: &Host) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{}", host.grpc)).unwrap().connect().await {
            if version(&ch).await.is_some() {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "the host did not serve echo");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn publish(source: &Path, dir: &Path) {
    let tmp = dir.join(".echo.so.tmp");
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("echo.so")).unwrap();
}

/// (VmRSS, RssAnon, RssFile) in KiB.
fn rss(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

async fn swaps(exe: &Path, v1: &Path, v2: &Path, stable_ms: u64, count: usize) -> Vec<Duration> {
    let host = start(exe, v1, stable_ms);
    let ch = connect(&host).await;
    let mut waits = Vec::with_capacity(count);
    for i in 0..count {
        let (source, want) = if i % 2 == 0 { (v2, "0.2.0") } else { (v1, "0.1.0") };
        publish(source, &host.plugin_dir);
        let t = Instant::now();
        while version(&ch).await.as_deref() != Some(want) {
            assert!(t.elapsed() < Duration::from_secs(30), "swap {i} never served");
        }
        waits.push(t.elapsed());
    }
    waits.sort();
    waits
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench-reload HOST_EXE ECHO_V1 ECHO_V2 [SWAPS] [RSS_RELOADS]");
        std::process::exit(2);
    }
    let (exe, v1, v2) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]), PathBuf::from(&args[3]));
    let n: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(100);
    let reloads: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(500);

    for stable in [300, 0] {
        let w = swaps(&exe, &v1, &v2, stable, n).await;
        println!(
            "rename -> first call served by the new version, stable_ms = {stable}, {n} swaps: median {}, p99 {}, max {}",
            ms(w[w.len() / 2]),
            ms(w[(w.len() * 99 / 100).min(w.len() - 1)]),
            ms(w[w.len() - 1])
        );
    }

    let host = start(&exe, &v1, 0);
    let ch = connect(&host).await;
    let pid = host.child.id();
    let before = rss(pid);
    for i in 0..reloads {
        let (source, want) = if i % 2 == 0 { (&v2, "0.2.0") } else { (&v1, "0.1.0") };
        publish(source, &host.plugin_dir);
        while version(&ch).await.as_deref() != Some(want) {}
    }
    let after = rss(pid);
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / reloads as f64;
    println!(
        "RSS over {reloads} reloads: {} -> {} KiB (+{:.0} KiB per reload; anonymous +{:.1} KiB, file-backed +{:.0} KiB per reload)",
        before.0,
        after.0,
        per(before.0, after.0),
        per(before.1, after.1),
        per(before.2, after.2)
    );
}
