//! Work the host does beside serving, at a lower scheduling priority than the serving threads.
//!
//! Reading, hashing and copying a plugin file of several MiB, and the `agent-host check` child
//! process, take tens of milliseconds of CPU per reload. On a small machine (the 2 cores this
//! was measured on) that work competes with the gRPC workers for the same cores, and every
//! request that waits for a core while it runs shows up in the tail latency of the reload. Run
//! at a higher nice value (`loader.background_nice`, 10 by default), the kernel lets a serving
//! thread that wakes up preempt it, and still gives it a share of a busy core (about a tenth
//! against a nice-0 thread at 10), so a reload completes under full load, only later. The first
//! scan, which readiness waits for, runs at the host's own priority (`Loader::serving`).
//!
//! Not here, on purpose: the plugin's `init` (the threads it starts would inherit the lower
//! priority and serve the plugin's calls with it), and work that holds a lock a serving thread
//! can need, where a preempted low-priority holder would make the serving thread wait for it:
//! `dlopen` (the dynamic loader's lock, taken by a thread's first access to a library's thread
//! locals), `malloc_trim` (an allocator arena's), and reading `/proc/self/smaps`, `maps` or
//! `mem` (the address space's lock, which `mmap` and `munmap` take for writing) in the memory
//! settle and the thread census.

/// The environment variable by which the host asks its `check` child to lower its priority.
pub const NICE_ENV: &str = "AGENT_HOST_NICE";

/// Lowers the calling thread's priority to `nice`, unless it is lower already (Linux keeps a
/// nice value per thread).
pub fn lower_to(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority/setpriority only read and change the scheduling priority of the
    // calling thread (a thread id is a valid PRIO_PROCESS target on Linux).
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is also a valid answer of getpriority; at worst the value is set again.
        if libc::getpriority(libc::PRIO_PROCESS, tid) < nice {
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's nice value (Linux), for tests.
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: reads the calling thread's scheduling priority.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Runs `work` on a new thread named `name` at nice value `nice`, and waits for its answer
/// without blocking the caller's runtime thread. `Err` if the thread cannot be started or
/// panicked.
pub async fn run<T: Send + 'static>(name: &str, nice: i32, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_to(nice);
            let _ = tx.send(work());
        })
        .map_err(|e| format!("cannot start a {name} thread: {e}"))?;
    rx.await.map_err(|_| format!("the {name} thread panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_at_background_priority_and_the_caller_keeps_its_own() {
        let before = current_nice();
        let nice = run("bg-test", 10, current_nice).await.unwrap();
        assert_eq!(nice, before.max(10));
        assert_eq!(current_nice(), before, "only the background thread is lowered");
    }

    #[tokio::test]
    async fn a_panic_in_background_work_is_an_error_not_a_crash() {
        let e = run("bg-panic", 10, || -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.contains("bg-panic"), "{e}");
    }
}
