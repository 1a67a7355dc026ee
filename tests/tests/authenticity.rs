//! RELIABILITY row 8, authenticity: `[verify]` refuses unsigned files, unknown keys, flipped
//! bytes, signatures of other files, downgrades and another ABI major *before anything maps the
//! file*. The proof is `marker.so`, whose ELF constructor appends to `$AGENT_HOST_TEST_MARKER`
//! whenever any process (the host or its check child) maps it: the marker must never appear for
//! a refused file, and appears once the same file is properly signed. The bytes loaded are the
//! bytes verified, whatever happens to the operator's file or the work directory meanwhile.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agent_host::{
    config::{Config, VerifyMode},
    loader::{LoadError, PluginFile},
};
use agent_host_tests::{fixture, loader_for, publish, test_config, unary, wait_refused, TestHost};
use agent_proto::flyteidl::{admin, core};
use minisign::KeyPair;

fn sign(key: &KeyPair, bytes: &[u8], comment: &str) -> String {
    minisign::sign(Some(&key.pk), &key.sk, std::io::Cursor::new(bytes), Some(comment), None).unwrap().into_string()
}

fn signature_mode(config: &mut Config, key: &KeyPair) {
    config.verify.mode = VerifyMode::Signature;
    config.verify.trusted_keys = vec![key.pk.to_base64()];
}

/// Writes `bytes` as `dir/name` with `signature` (if any) as `dir/name.minisig`.
fn place(dir: &Path, name: &str, bytes: &[u8], signature: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let sig = dir.join(format!("{name}.minisig"));
    match signature {
        Some(s) => std::fs::write(&sig, s).unwrap(),
        None => {
            let _ = std::fs::remove_file(&sig);
        }
    }
    path
}

#[tokio::test]
async fn refused_files_are_never_mapped_and_a_signed_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker-mapped");
    // Set before any plugin check runs: the check children inherit it.
    std::env::set_var("AGENT_HOST_TEST_MARKER", &marker);
    let (plugins, work) = (dir.path().join("plugins"), dir.path().join("work"));
    std::fs::create_dir_all(&plugins).unwrap();
    let trusted = KeyPair::generate_unencrypted_keypair().unwrap();
    let stranger = KeyPair::generate_unencrypted_keypair().unwrap();
    let mut config = test_config(&plugins, &work);
    signature_mode(&mut config, &trusted);
    let loader = loader_for(&config, &work);

    let bytes = std::fs::read(fixture("marker")).unwrap();
    let good_comment = "name=marker version=0.1.0 abi=1";
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let other = std::fs::read(fixture("good")).unwrap();
    // Serving already: echo 0.2.0. A signed "echo 0.1.0" is a replayed older build.
    let serving = vec![("echo".to_string(), "0.2.0".to_string())];
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        ("unsigned", bytes.clone(), None, "unsigned"),
        ("unknown key", bytes.clone(), Some(sign(&stranger, &bytes, good_comment)), "untrusted_key"),
        ("one byte flipped after signing", flipped, Some(sign(&trusted, &bytes, good_comment)), "bad_signature"),
        ("a signature of another file", bytes.clone(), Some(sign(&trusted, &other, good_comment)), "bad_signature"),
        ("a replay of an older build", bytes.clone(), Some(sign(&trusted, &bytes, "name=echo version=0.1.0 abi=1")), "downgrade"),
        ("another ABI major", bytes.clone(), Some(sign(&trusted, &bytes, "name=marker version=0.1.0 abi=2")), "abi_major"),
        ("no metadata in the trusted comment", bytes.clone(), Some(sign(&trusted, &bytes, "timestamp:1")), "signed_metadata"),
        ("garbage signature", bytes.clone(), Some("untrusted comment: x\nnot base64\n".into()), "bad_signature"),
    ];
    for (what, content, signature, reason) in cases {
        let path = place(&plugins, "marker.so", &content, signature.as_deref());
        let file = loader.read(&path).unwrap();
        let e = match loader.load_checked(&file, "{}".into(), &serving).await {
            Ok(p) => panic!("{what}: loaded {} {}", p.name(), p.version()),
            Err(e) => e,
        };
        assert_eq!(e.reason(), reason, "{what}: {e}");
        assert!(!marker.exists(), "{what}: refused, yet something mapped the file");
        assert!(std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0, "{what}: a private copy was written");
    }

    // The control: the same bytes, properly signed, load, and loading maps them.
    let path = place(&plugins, "marker.so", &bytes, Some(&sign(&trusted, &bytes, good_comment)));
    let file = loader.read(&path).unwrap();
    let plugin = loader.load_checked(&file, "{}".into(), &serving).await.expect("a signed marker loads");
    assert_eq!((plugin.name(), plugin.version()), ("marker", "0.1.0"));
    let lines = std::fs::read_to_string(&marker).expect("the constructor ran: the marker mechanism works");
    assert_eq!(lines.lines().count(), 2, "mapped by the check child and by the host: {lines}");
    assert_eq!(plugin.sha256, file.sha256, "the loaded digest is the verified digest");
}

#[tokio::test]
async fn the_bytes_loaded_are_the_bytes_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, work) = (dir.path().join("plugins"), dir.path().join("work"));
    std::fs::create_dir_all(&plugins).unwrap();
    let key = KeyPair::generate_unencrypted_keypair().unwrap();
    let mut config = test_config(&plugins, &work);
    signature_mode(&mut config, &key);
    let loader = loader_for(&config, &work);
    let v1 = std::fs::read(fixture("echo-v1")).unwrap();
    let path = place(&plugins, "echo.so", &v1, Some(&sign(&key, &v1, "name=echo version=0.1.0 abi=1")));
    let file = loader.read(&path).unwrap();
    // Swap the operator's file after the read (verification happens on the bytes read).
    std::fs::write(&path, std::fs::read(fixture("echo-v2")).unwrap()).unwrap();
    // And plant a same-size, different-content file where the private copy goes.
    std::fs::create_dir_all(&work).unwrap();
    let mut planted = v1.clone();
    planted[1000] ^= 0xff;
    std::fs::write(work.join(format!("{}.so", file.sha256)), &planted).unwrap();

    let plugin = loader.load_checked(&file, "{}".into(), &[]).await.expect("the verified bytes load");
    assert_eq!(plugin.version(), "0.1.0", "the swapped-in file was not loaded");
    assert_eq!(plugin.sha256, file.sha256);
    let copy = std::fs::read(work.join(format!("{}.so", file.sha256))).unwrap();
    assert!(copy == v1, "the planted private copy was replaced by the verified bytes");
}

#[tokio::test]
async fn allowlist_mode_accepts_listed_digests_only() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, work) = (dir.path().join("plugins"), dir.path().join("work"));
    std::fs::create_dir_all(&plugins).unwrap();
    let listed = PluginFile::read(&fixture("echo-v1")).unwrap();
    let mut config = test_config(&plugins, &work);
    config.verify.mode = VerifyMode::Allowlist;
    config.verify.sha256_allowlist = vec![listed.sha256.to_uppercase()];
    let loader = loader_for(&config, &work);
    loader.load(&listed, "{}".into()).await.expect("a listed digest loads");
    let unlisted = PluginFile::read(&fixture("echo-v2")).unwrap();
    let e = loader.load(&unlisted, "{}".into()).await.unwrap_err();
    assert!(matches!(e, LoadError::NotAllowlisted(ref d) if *d == unlisted.sha256), "{e}");
}

#[tokio::test]
async fn a_serving_host_refuses_unsigned_and_downgraded_files_and_keeps_serving() {
    let key = KeyPair::generate_unencrypted_keypair().unwrap();
    let pk = key.pk.to_base64();
    let host = TestHost::start_with(&[], |c| {
        c.verify.mode = VerifyMode::Signature;
        c.verify.trusted_keys = vec![pk];
        c.loader.stable_ms = 50;
        c.loader.rescan_interval_ms = 60_000;
    })
    .await;
    let dir = host.plugin_dir.clone();
    let (v1, v2) = (std::fs::read(fixture("echo-v1")).unwrap(), std::fs::read(fixture("echo-v2")).unwrap());
    let staging = tempfile::tempdir().unwrap();
    let stage = |name: &str, bytes: &[u8]| {
        let p = staging.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // An unsigned file is refused with its reason.
    publish(&stage("a", &v2), &dir, "echo.so");
    wait_refused(&host, "echo.so", "unsigned", Duration::from_secs(10)).await;
    // Adding the signature next to it is a change: the file is taken.
    publish(&stage("a.sig", sign(&key, &v2, "name=echo version=0.2.0 abi=1").as_bytes()), &dir, "echo.so.minisig");
    let ch = host.channel().await;
    let create = admin::CreateTaskRequest {
        template: Some(core::TaskTemplate { r#type: "echo_async".into(), ..Default::default() }),
        inputs: Some(core::LiteralMap::default()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while unary::<_, admin::CreateTaskResponse>(ch.clone(), "/flyteidl.service.AsyncAgentService/CreateTask", create.clone()).await.is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "the signed echo 0.2.0 was not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The signed older build is a downgrade: refused, 0.2.0 keeps serving.
    publish(&stage("b.sig", sign(&key, &v1, "name=echo version=0.1.0 abi=1").as_bytes()), &dir, "echo.so.minisig");
    publish(&stage("b", &v1), &dir, "echo.so");
    let status = wait_refused(&host, "echo.so", "downgrade", Duration::from_secs(10)).await;
    assert_eq!((status.state, status.version.as_deref()), ("serving", Some("0.2.0")));
    assert!(unary::<_, admin::CreateTaskResponse>(ch, "/flyteidl.service.AsyncAgentService/CreateTask", create).await.is_ok());
    let failures = agent_host_tests::metric(host.admin_addr, "agent_host_plugin_load_failures_total{reason=\"downgrade\"}").await;
    assert_eq!(failures, 1.0);
    host.stop().await;
}
