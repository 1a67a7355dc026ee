//! Which threads a plugin library started and are still running (Linux, from `/proc`).
//!
//! What counts as "a thread the plugin started": a thread whose pthread start routine lies in
//! the library's code. Every thread a Rust plugin starts (`std::thread`, the SDK's runtime
//! workers, a runtime the plugin builds itself, its blocking pools) is created by the
//! plugin's own copy of `std`, whose start routine is compiled into the library; threads the
//! host starts have the host's start routine, even when they run plugin code.
//!
//! How it is read, without stopping anything: glibc keeps each thread's control block
//! (`struct pthread`, which records the start routine) at a fixed distance below the top of the
//! thread's stack mapping. The census learns that distance from its own thread
//! (`pthread_self()` against its own stack mapping), finds each other thread's stack from the
//! stack pointer the kernel reports in `/proc/self/task/<tid>/syscall`, and reads that thread's
//! control block through `/proc/self/mem` (a read of memory that vanished fails cleanly; it
//! never faults). On x86_64 a control block is recognised by its two self pointers, so a wrong
//! guess is never read as one.
//!
//! Limits, stated where the results are reported: threads a plugin starts through another
//! shared library (a C library it links dynamically) are not attributed to it; a thread that
//! spins in user space without ever entering the kernel has no stack pointer to read and is
//! left uninspected; threads on stacks they allocated themselves
//! (`pthread_attr_setstack`) are not found; other C libraries than glibc are not supported
//! (the census then reports itself unavailable, and only calls and shutdown are checked).

use std::{fs::File, os::unix::fs::FileExt, time::Duration};

/// The executable mappings of one plugin library.
#[derive(Debug, Clone, Default)]
pub(crate) struct Code {
    ranges: Vec<(usize, usize)>,
}

impl Code {
    /// [`Code::in_maps`] on the mappings read now (`None` when `/proc/self/maps` is unreadable).
    #[cfg(test)]
    fn of(addr: usize) -> Option<Code> {
        Code::in_maps(&mappings()?, addr)
    }

    /// The executable mappings of the file mapped at `addr` (an address in the library's
    /// code, e.g. one of its exported functions) among `maps`; `None` when `addr` is not in a
    /// mapped file.
    fn in_maps(maps: &[Mapping], addr: usize) -> Option<Code> {
        let hit = maps.iter().find(|m| m.start <= addr && addr < m.end && m.inode != 0)?;
        let ranges: Vec<_> = maps.iter().filter(|m| m.exec && m.dev == hit.dev && m.inode == hit.inode).map(|m| (m.start, m.end)).collect();
        (!ranges.is_empty()).then_some(Code { ranges })
    }

    fn contains(&self, v: usize) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= v && v < e)
    }
}

/// One line of `/proc/self/maps`.
#[derive(Debug)]
struct Mapping {
    start: usize,
    end: usize,
    exec: bool,
    dev: String,
    inode: u64,
}

fn mappings() -> Option<Vec<Mapping>> {
    let text = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(text.lines().filter_map(parse_mapping).collect())
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let perms = f.next()?;
    let _offset = f.next()?;
    let dev = f.next()?.to_string();
    let inode = f.next()?.parse().ok()?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        dev,
        inode,
    })
}

/// The threads found, per library asked about.
#[derive(Debug, Default, Clone)]
pub(crate) struct Census {
    /// For each library (in the order asked), the names of the live threads it started.
    pub(crate) started: Vec<Vec<String>>,
    /// Threads whose control block could not be read (see the module's limits).
    pub(crate) uninspected: usize,
}

/// Distance from the top of a thread's stack mapping down to its control block, learnt on the
/// calling thread (which must not be the process's main thread).
fn control_block_offset(maps: &[Mapping], mem: &File) -> Result<usize, String> {
    let local = 0u8;
    let here = std::ptr::addr_of!(local) as usize;
    let stack = maps.iter().find(|m| m.start <= here && here < m.end).ok_or("the census thread's stack is not in /proc/self/maps")?;
    // SAFETY: pthread_self has no preconditions.
    let pd = unsafe { libc::pthread_self() } as usize;
    if !(stack.start <= pd && pd < stack.end) {
        return Err("the thread control block is not on the thread's stack (not glibc?)".into());
    }
    let offset = stack.end - pd;
    if offset > 64 * 1024 {
        return Err(format!("unexpected thread control block layout ({offset} bytes below the stack top)"));
    }
    if !looks_like_control_block(mem, pd, stack.end) {
        return Err("unexpected thread control block layout".into());
    }
    Ok(offset)
}

/// Whether `[pd, end)` holds a thread control block (x86_64: its `tcb` and `self` fields
/// point to itself; elsewhere there is nothing as simple to check, and it is assumed).
fn looks_like_control_block(mem: &File, pd: usize, end: usize) -> bool {
    if cfg!(target_arch = "x86_64") {
        let mut head = [0u8; 24];
        if end - pd < head.len() || mem.read_exact_at(&mut head, pd as u64).is_err() {
            return false;
        }
        let word = |i: usize| usize::from_ne_bytes(head[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        word(0) == pd && word(2) == pd
    } else {
        true
    }
}

/// The stack pointer of thread `tid`, when it is stopped in the kernel (waiting, sleeping, in
/// a system call). A thread running in user space is sampled again a few times.
fn stack_pointer(tid: &str) -> Option<usize> {
    for _ in 0..10 {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.first() == Some(&"running") || fields.len() < 3 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let sp = fields[fields.len() - 2];
        return usize::from_str_radix(sp.trim_start_matches("0x"), 16).ok();
    }
    None
}

/// One pass over the process's threads: for each library in `libraries` (given by an address in
/// its code), the live threads it started. Blocks for a few milliseconds at most per thread
/// running in user space; run it off the async threads. Errors when the census cannot work here
/// at all.
pub(crate) fn census(libraries: &[usize]) -> Result<Census, String> {
    let maps = mappings().ok_or("/proc/self/maps is unreadable")?;
    // An address in no mapped file (never the case for a loaded library) finds nothing.
    let libraries: Vec<Code> = libraries.iter().map(|&a| Code::in_maps(&maps, a).unwrap_or_default()).collect();
    let mem = File::open("/proc/self/mem").map_err(|e| format!("/proc/self/mem: {e}"))?;
    let offset = control_block_offset(&maps, &mem)?;
    // SAFETY: gettid and getpid have no preconditions.
    let (me, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    let mut out = Census { started: vec![Vec::new(); libraries.len()], uninspected: 0 };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().to_string();
        // The main thread's control block is not on its stack, and plugins cannot start it.
        if tid == me.to_string() || tid == pid.to_string() {
            continue;
        }
        let Some(sp) = stack_pointer(&tid) else {
            // Gone meanwhile, or running in user space at every sample.
            if task.path().exists() {
                out.uninspected += 1;
            }
            continue;
        };
        let Some(stack) = maps.iter().find(|m| m.start <= sp && sp < m.end) else {
            out.uninspected += 1;
            continue;
        };
        let Some(pd) = stack.end.checked_sub(offset).filter(|pd| *pd >= stack.start) else {
            out.uninspected += 1;
            continue;
        };
        let mut block = vec![0u8; offset];
        if mem.read_exact_at(&mut block, pd as u64).is_err() || !looks_like_control_block(&mem, pd, stack.end) {
            out.uninspected += 1;
            continue;
        }
        let words = block.chunks_exact(std::mem::size_of::<usize>()).map(|w| usize::from_ne_bytes(w.try_into().expect("a word")));
        let mut found = vec![false; libraries.len()];
        for w in words {
            for (i, lib) in libraries.iter().enumerate() {
                found[i] |= lib.contains(w);
            }
        }
        if found.iter().any(|f| *f) {
            let name = std::fs::read_to_string(task.path().join("comm")).map(|n| n.trim().to_string()).unwrap_or_else(|_| tid.clone());
            for (i, f) in found.into_iter().enumerate() {
                if f {
                    out.started[i].push(name.clone());
                }
            }
        }
    }
    Ok(out)
}

/// [`census`], taken twice 50 ms apart when the first pass found threads (a thread that was
/// just leaving, e.g. a runtime worker at the end of a shutdown, is not counted).
pub(crate) fn settled_census(libraries: &[usize]) -> Result<Census, String> {
    let first = census(libraries)?;
    if first.started.iter().all(Vec::is_empty) {
        return Ok(first);
    }
    std::thread::sleep(Duration::from_millis(50));
    census(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_this_binary() {}

    #[test]
    fn threads_started_by_this_binary_are_found_while_they_run() {
        // This test binary plays the library: its own std starts the thread below.
        let code = in_this_binary as fn() as usize;
        assert!(Code::of(code).is_some(), "the test binary's code is mapped");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new().name("census-probe".into()).spawn(move || rx.recv()).unwrap();
        // Found: the census runs on another thread of ours (never the main thread).
        let found = std::thread::spawn(move || census(&[code, 0])).join().unwrap().expect("the census works here");
        assert!(found.started[0].iter().any(|n| n == "census-probe"), "{found:?}");
        assert!(found.started[1].is_empty(), "an empty library started nothing: {found:?}");
        drop(tx);
        t.join().unwrap().unwrap_err();
        let after = std::thread::spawn(move || census(&[code])).join().unwrap().unwrap();
        assert!(!after.started[0].iter().any(|n| n == "census-probe"), "{after:?}");
    }

    #[test]
    fn a_mapping_line_parses() {
        let m = parse_mapping("7f0e1c000000-7f0e1c021000 r-xp 00000000 fe:01 1234567    /tmp/x.so (deleted)").unwrap();
        assert_eq!((m.start, m.end, m.exec, m.dev.as_str(), m.inode), (0x7f0e1c000000, 0x7f0e1c021000, true, "fe:01", 1234567));
        let anon = parse_mapping("7ffd0000-7ffd1000 rw-p 00000000 00:00 0").unwrap();
        assert!(!anon.exec && anon.inode == 0);
    }
}
