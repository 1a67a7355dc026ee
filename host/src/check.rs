//! `agent-host check FILE`: load a plugin library in this (throwaway) process and describe it.
//!
//! The host runs this in a child process before mapping a plugin itself, so that a library that
//! crashes the loader takes down only the child. Operators run it to vet a file before
//! publishing it.

use std::path::Path;

use serde_json::json;

use crate::loader::{self, LoadError};

/// Checks `file`; prints the description (or the refusal) and returns the exit code.
pub fn run(file: &Path, as_json: bool) -> i32 {
    // Run by the host's loader: at the priority it asks for (its background priority).
    if let Some(nice) = std::env::var(crate::background::NICE_ENV).ok().and_then(|v| v.parse().ok()) {
        crate::background::lower_to(nice);
    }
    let code = check(file, as_json);
    // Leave at once: the plugin's threads may still be winding down, and running thread-local
    // destructors under them could crash a process that has already given its answer.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

fn check(file: &Path, as_json: bool) -> i32 {
    match loader::open(file).and_then(|(module, d)| loader::init_for_check(module, &d.name, &d.version).map(|()| (module, d))) {
        Ok((_module, d)) => {
            let agents: Vec<_> = d
                .agents
                .iter()
                .map(|a| json!({"name": a.name, "is_sync": a.is_sync, "task_categories": a.categories.iter().map(|c| json!({"name": c.name, "version": c.version})).collect::<Vec<_>>()}))
                .collect();
            if as_json {
                let report = json!({"ok": true, "name": d.name, "version": d.version, "abi": format!("{}.{}", d.abi_major, d.abi_minor), "sdk_version": d.sdk_version, "panic_strategy": d.panic_strategy, "agents": agents});
                println!("{report}");
            } else {
                println!("plugin {} {} (ABI {}.{}, agent-plugin-api {})", d.name, d.version, d.abi_major, d.abi_minor, d.sdk_version);
                for a in &d.agents {
                    let kind = if a.is_sync { "sync" } else { "async" };
                    let cats: Vec<_> = a.categories.iter().map(|c| format!("{} v{}", c.name, c.version)).collect();
                    println!("  {kind} agent {:?}: {}", a.name, cats.join(", "));
                }
            }
            0
        }
        Err(e) => {
            report_refusal(file, &e, as_json);
            1
        }
    }
}

fn report_refusal(file: &Path, e: &LoadError, as_json: bool) {
    if as_json {
        println!("{}", json!({"ok": false, "reason": e.reason(), "message": e.detail(), "error": e.to_string()}));
    }
    eprintln!("{}: refused: {e}", file.display());
}
