//! `agent-host status`: the plugin status of a running host, read from its admin port.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;

/// Fetches `http://<addr>/plugins` (plain HTTP/1.1; the admin port is local and unencrypted).
pub fn fetch(addr: &str) -> Result<Value, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("cannot reach the admin port {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET /plugins HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("the admin port answered something that is not HTTP")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the admin port answered {}", head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| format!("the status is not JSON: {e}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the status as a table.
pub fn render(status: &Value) -> String {
    let mut out = format!(
        "plugin dir {}   mapped libraries {} of {}\n",
        text(&status["plugin_dir"]),
        text(&status["mapped_libraries"]),
        text(&status["max_libraries"])
    );
    out.push_str(&format!("{:<28} {:<8} {:<14} {:<10} {:<12} {}\n", "FILE", "STATE", "PLUGIN", "VERSION", "SHA256", "LAST ERROR"));
    for f in status["files"].as_array().into_iter().flatten() {
        let file = text(&f["path"]);
        let file = file.rsplit('/').next().unwrap_or(&file).to_string();
        let sha: String = text(&f["sha256"]).chars().take(12).collect();
        let error = match (&f["error_reason"], &f["error"]) {
            (Value::Null, _) => "-".to_string(),
            (r, e) => format!("{}: {}", text(r), text(e)),
        };
        out.push_str(&format!(
            "{:<28} {:<8} {:<14} {:<10} {:<12} {}\n",
            file,
            text(&f["state"]),
            text(&f["plugin"]),
            text(&f["version"]),
            sha,
            error
        ));
        for a in f["agents"].as_array().into_iter().flatten() {
            out.push_str(&format!("    agent {}\n", text(a)));
        }
    }
    for d in status["draining"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "draining: {} {} (generation {}), {} calls in flight\n",
            text(&d["plugin"]),
            text(&d["version"]),
            text(&d["generation"]),
            text(&d["in_flight"])
        ));
    }
    for l in status["leaked"].as_array().into_iter().flatten() {
        let threads = match &l["threads"] {
            Value::Array(t) => format!("{} threads it started running", t.len()),
            _ => "threads not inspected".to_string(),
        };
        out.push_str(&format!(
            "leaked: {} {} (generation {}), {} calls in flight, shutdown returned {}, {}\n",
            text(&l["plugin"]),
            text(&l["version"]),
            text(&l["generation"]),
            text(&l["calls_in_flight"]),
            text(&l["shutdown_returned"]),
            threads
        ));
    }
    let watch = &status["watch"];
    if watch["mode"].is_string() {
        match &watch["error"] {
            Value::String(e) => {
                out.push_str(&format!("watch: {} (configured {}: {e})\n", text(&watch["mode"]), text(&watch["configured"])))
            }
            _ => out.push_str(&format!("watch: {}\n", text(&watch["mode"]))),
        }
    }
    out
}
