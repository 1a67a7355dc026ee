//! RELIABILITY row 9, permissions: plugin files others could have written are refused, each with
//! its own reason, before anything is read or mapped; valid siblings still load; the layouts the
//! shipped deployments use (a Kubernetes emptyDir with fsGroup, the `..data` symlink swap, the
//! image's symlinks into its bundled plugins) are accepted.

use std::{
    os::unix::fs::{symlink, PermissionsExt},
    path::Path,
    time::Duration,
};

use agent_host::config::Config;
use agent_host_tests::{fixture, wait_refused, TestHost};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fast(c: &mut Config) {
    c.loader.stable_ms = 0;
    c.loader.rescan_interval_ms = 60_000;
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) {
    std::os::unix::fs::chown(path, uid, gid).expect("chown (the tests run as root)");
}

fn serving(host: &TestHost) -> Vec<String> {
    host.host.service.registry.snapshot().plugins.iter().map(|p| p.name().to_string()).collect()
}

#[tokio::test]
async fn files_others_could_have_written_are_refused_each_with_its_reason() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("good"), outside.path().join("good.so")).unwrap();
    let host = TestHost::start_with(&[], fast).await;
    let dir = host.plugin_dir.clone();
    let place = |name: &str| {
        let p = dir.join(format!(".{name}.tmp"));
        std::fs::copy(fixture("good"), &p).unwrap();
        p
    };
    let put = |tmp: std::path::PathBuf, name: &str| std::fs::rename(tmp, dir.join(name)).unwrap();
    let p = place("a");
    chmod(&p, 0o666);
    put(p, "world-writable.so");
    let p = place("b");
    chmod(&p, 0o664);
    chown(&p, None, Some(4242));
    put(p, "group-writable.so");
    let p = place("c");
    chown(&p, Some(4242), None);
    put(p, "foreign-owner.so");
    let p = place("d");
    chmod(&p, 0o4755);
    put(p, "setuid.so");
    symlink(outside.path().join("good.so"), dir.join("outside.so")).unwrap();
    mkfifo(&dir.join("fifo.so"));
    std::fs::create_dir(dir.join("directory.so")).unwrap();
    // A valid sibling (also reached through a symlink that stays inside the directory).
    std::fs::create_dir(dir.join("..2026_v1")).unwrap();
    std::fs::copy(fixture("echo-v1"), dir.join("..2026_v1/echo.so")).unwrap();
    symlink("..2026_v1/echo.so", dir.join("echo.so")).unwrap();

    let within = Duration::from_secs(10);
    for (file, reason) in [
        ("world-writable.so", "writable_by_others"),
        ("group-writable.so", "writable_by_others"),
        ("foreign-owner.so", "untrusted_owner"),
        ("setuid.so", "setuid"),
        ("outside.so", "symlink_outside"),
        ("fifo.so", "not_regular_file"),
        ("directory.so", "not_regular_file"),
    ] {
        let status = wait_refused(&host, file, reason, within).await;
        assert!(status.error.as_deref().is_some_and(|e| e.len() < 300), "one sentence: {status:?}");
    }
    let deadline = tokio::time::Instant::now() + within;
    while serving(&host) != ["echo"] {
        assert!(tokio::time::Instant::now() < deadline, "the valid sibling did not load: {:?}", serving(&host));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.health("").await.unwrap(), 1, "SERVING");
    // Fixing a file's mode is a change: it is taken.
    chmod(&dir.join("world-writable.so"), 0o644);
    let deadline = tokio::time::Instant::now() + within;
    while !serving(&host).contains(&"good".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "the fixed file was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.stop().await;
}

#[tokio::test]
async fn a_world_writable_directory_is_refused_unless_sticky_or_a_kubelet_volume() {
    let host = TestHost::start_with(&[("echo.so", fixture("echo-v1"))], fast).await;
    assert_eq!(serving(&host), ["echo"]);
    let dir = host.plugin_dir.clone();
    std::fs::copy(fixture("good"), dir.join("good.so")).unwrap();
    chmod(&dir, 0o777);
    wait_refused(&host, "good.so", "untrusted_dir", Duration::from_secs(10)).await;
    assert_eq!(serving(&host), ["echo"], "what serves keeps serving");
    // A Kubernetes emptyDir with fsGroup: 2777, group = the host's group.
    // SAFETY: getegid cannot fail.
    chown(&dir, None, Some(unsafe { libc::getegid() }));
    chmod(&dir, 0o2777);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serving(&host).len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "good.so was not loaded from a 2777 fsGroup directory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await;
}

#[tokio::test]
async fn symlink_roots_and_the_switch_off() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("good"), outside.path().join("good.so")).unwrap();
    let root = outside.path().to_path_buf();
    let host = TestHost::start_with(&[], move |c| {
        fast(c);
        c.permissions.symlink_roots = vec![root];
    })
    .await;
    symlink(outside.path().join("good.so"), host.plugin_dir.join("good.so")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serving(&host) != ["good"] {
        assert!(tokio::time::Instant::now() < deadline, "a symlink into a symlink root was refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.stop().await;

    let host = TestHost::start_with(&[], |c| {
        fast(c);
        c.permissions.check = false;
    })
    .await;
    let p = host.plugin_dir.join(".g");
    std::fs::copy(fixture("good"), &p).unwrap();
    chmod(&p, 0o666);
    std::fs::rename(&p, host.plugin_dir.join("good.so")).unwrap();
    mkfifo(&host.plugin_dir.join("fifo.so"));
    // Non-regular files are refused even with the checks off.
    wait_refused(&host, "fifo.so", "not_regular_file", Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serving(&host) != ["good"] {
        assert!(tokio::time::Instant::now() < deadline, "permissions.check = false still refused a 0666 file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await;
}
