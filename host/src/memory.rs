//! The host's use of glibc's allocator, tuned for a server that reads whole plugin files and
//! may be sent large messages.
//!
//! Two opposite costs. A large buffer served by its own `mmap` costs a page fault for every
//! page each time it is allocated: a 1 MiB CreateTask goes through several such buffers (the
//! request, the plugin's answer, tonic's encode buffer), and the faults were 40 % of the time
//! such a call took. A buffer served from a heap costs nothing to reuse, but the heap keeps the
//! pages when it is freed: glibc's default raises its mmap threshold to the size of the first
//! large buffer freed, and then a plugin file read (several MiB) stays resident after the load
//! (measured: 6 MiB of idle RSS kept after loading the example plugins).
//!
//! So large buffers come from the heaps, which keep their free pages while calls come
//! ([`tune_allocator`] sets both thresholds high), and the host hands the free pages back at
//! quiet moments: after a load, and once calls stop ([`trim_when_idle`]).
/// Held while the loader maps a plugin library, and while pages are dropped.
///
/// While `dlopen` maps a library, the dynamic loader first maps the whole file read-only, then
/// maps its segments over parts of that range and writes the relocated data into them. A trim
/// that read `/proc/self/smaps` before the segments were mapped would see one clean read-only
/// mapping of the file, and its `madvise(MADV_DONTNEED)` on that range afterwards would throw
/// away the library's written data (its statics, relocated pointers). Only the loader maps the
/// files the trim looks at (the private copies), so this lock rules that out.
pub static MAPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations at least this big get their own mapping: glibc's largest dynamic threshold,
/// and the default `server.max_message_bytes`.
const MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;

/// A heap gives back the free memory at its top on `free` only past this much: calls reuse
/// their buffers' pages, and [`trim_when_idle`] gives them back when calls stop.
const TRIM_THRESHOLD: i32 = 64 * 1024 * 1024;

/// Sets the allocator up for the server; call once, before other threads start.
///
/// One heap for every thread, unless the operator set `MALLOC_ARENA_MAX` or glibc's
/// `arena_max` tunable. By default glibc gives threads heaps of their own, and `malloc_trim`
/// hands back the free pages inside every heap but the free memory at the *top* of the main
/// heap only: a thread's heap never shrinks below [`TRIM_THRESHOLD`] of free top. The request
/// threads and each plugin's runtime thread free their large buffers there, so after a burst
/// of 1 MiB calls 13–55 MiB stayed resident in most runs (a test in `tests/tests/production.rs`
/// keeps this from coming back). Allocations small enough for glibc's per-thread cache do not
/// take the heap's lock at all; the rest are a few per call.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator_chose = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
        // SAFETY: mallopt only changes allocator parameters; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            if !operator_chose {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
    }
}

/// Gives the heaps' free pages back once calls stop: checks every `every`, and trims when
/// calls were started since the last trim but none during the last `every`, and none is
/// running. A steady load is never interrupted; a host that went quiet is back to its idle
/// size within two periods.
pub async fn trim_when_idle(service: std::sync::Arc<crate::service::Service>, every: std::time::Duration) {
    trim_when_idle_with(service, every, release_free_memory).await
}

async fn trim_when_idle_with(service: std::sync::Arc<crate::service::Service>, every: std::time::Duration, trim: fn()) {
    let mut seen = service.calls_started();
    let mut trimmed_at = seen;
    loop {
        tokio::time::sleep(every).await;
        let now = service.calls_started();
        if now == seen && now != trimmed_at && service.active_calls() == 0 {
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!(calls = now, "calls stopped: gave the heaps' free pages back");
            trimmed_at = now;
        }
        seen = now;
    }
}

/// Reads `file` to its end into a buffer of its own anonymous mapping, unmapped when the last
/// `Bytes` of it drops. Plugin files (several MiB, read at every load) are kept out of the
/// heaps this way: with the heaps keeping their free pages for calls (see the module
/// documentation), a file read into a heap buffer stayed resident after the load (5 MiB of idle
/// RSS with the example plugins).
///
/// `each_piece` sees the bytes as they arrive, at most 256 KiB at a time, while they are still
/// in the CPU's caches (the loader hashes them there instead of reading the file's megabytes
/// back from memory afterwards).
pub fn read_into_own_mapping(file: &mut std::fs::File, size_hint: u64, mut each_piece: impl FnMut(&[u8])) -> std::io::Result<bytes::Bytes> {
    use std::io::Read;
    const PIECE: usize = 256 * 1024;
    let mut buf = MappedBuffer::new(usize::try_from(size_hint).unwrap_or(usize::MAX).saturating_add(1))?;
    loop {
        if buf.len == buf.cap {
            buf.grow()?;
        }
        // SAFETY: `len..cap` lies inside the mapping, which is readable and writable.
        let spare = unsafe { std::slice::from_raw_parts_mut(buf.ptr.add(buf.len), (buf.cap - buf.len).min(PIECE)) };
        match file.read(spare) {
            Ok(0) => return Ok(bytes::Bytes::from_owner(buf)),
            Ok(n) => {
                each_piece(&spare[..n]);
                buf.len += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Bytes in an anonymous private mapping of their own.
struct MappedBuffer {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

// SAFETY: the mapping is owned by this value alone; `&MappedBuffer` only gives out `&[u8]`.
unsafe impl Send for MappedBuffer {}
// SAFETY: as above.
unsafe impl Sync for MappedBuffer {}

impl MappedBuffer {
    fn new(at_least: usize) -> std::io::Result<MappedBuffer> {
        let cap = at_least.max(1).checked_next_multiple_of(4096).ok_or(std::io::ErrorKind::OutOfMemory)?;
        // Populated at once: the read fills every page anyway, and faulting the whole buffer in
        // with the mapping costs less than a fault per page. Reading the five example plugins
        // (22 MB) took 11.1-11.3 ms instead of 12.9-13.0 ms (medians of 40, pinned).
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedBuffer { ptr: ptr.cast(), len: 0, cap })
    }

    /// Doubles the mapping (the file grew while it was read), keeping its content.
    fn grow(&mut self) -> std::io::Result<()> {
        let cap = self.cap.checked_mul(2).ok_or(std::io::ErrorKind::OutOfMemory)?;
        // SAFETY: `ptr`/`cap` is this value's mapping; MREMAP_MAYMOVE returns its new address.
        let ptr = unsafe { libc::mremap(self.ptr.cast(), self.cap, cap, libc::MREMAP_MAYMOVE) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        (self.ptr, self.cap) = (ptr.cast(), cap);
        Ok(())
    }
}

impl AsRef<[u8]> for MappedBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping were written by `read`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps this value's own mapping, once; nothing borrows it any more.
        unsafe {
            libc::munmap(self.ptr.cast(), self.cap);
        }
    }
}

/// Returns the heaps' free pages to the system (after a plugin load, which allocates and frees
/// a few MiB).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free heap pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmaps the resident pages of `file`'s read-only mappings that are still exact copies of the
/// file (no page of the mapping was ever written), so the process's resident set holds only what
/// it uses from now on; a later access maps the page again from the page cache (a minor fault).
///
/// Loading and initialising a library touches much of its code once (relocations, the plugin's
/// `init`), and the kernel maps 64 KiB around every page fault of a file mapping: right after a
/// load, most of a plugin's code is resident though a call uses a small part of it. Mappings
/// with a written page (RELRO after relocation, data) are left alone: dropping those pages would
/// lose what was written. Returns the bytes that were resident in the dropped mappings.
pub fn drop_clean_file_pages(file: &std::path::Path) -> usize {
    let file = file.to_string_lossy();
    drop_clean_pages_where(|path| path == file)
}

/// [`drop_clean_file_pages`] for the files under `dir` (the private copies of every loaded
/// plugin), and this executable if `with_exe`. Run after loads settle: a plugin's runtime
/// threads start and touch code after its `init` returned.
pub fn drop_clean_library_pages(dir: &std::path::Path, with_exe: bool) -> usize {
    let exe = if with_exe {
        std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        String::new()
    };
    // The kernel names mappings by their resolved path.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let dir = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    drop_clean_pages_where(|path| (!exe.is_empty() && path == exe) || path.starts_with(&dir))
}

fn drop_clean_pages_where(wanted: impl Fn(&str) -> bool) -> usize {
    #[cfg(target_os = "linux")]
    {
        let _mapping = MAPPING.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
        let mut dropped = 0;
        for (start, end, resident) in clean_read_only_mappings(&smaps, &wanted) {
            // SAFETY: the range is a whole read-only, private file mapping of `file` with no
            // anonymous (written) page: dropping its pages only makes the next access re-read
            // the same bytes from the file.
            let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            if rc == 0 {
                dropped += resident;
            }
        }
        dropped
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = wanted;
        0
    }
}

/// (start, end, resident bytes) of the mappings in `smaps` of the files `wanted` accepts that
/// are private, not writable, and have no anonymous page.
fn clean_read_only_mappings(smaps: &str, wanted: &impl Fn(&str) -> bool) -> Vec<(usize, usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-').filter(|(a, _)| a.bytes().all(|c| c.is_ascii_hexdigit()) && !a.is_empty()) {
            current = None;
            let perms = words.next().unwrap_or_default();
            // offset, device, inode, then the path (which may end with " (deleted)").
            let path = words.nth(3).map(|_| line.splitn(6, char::is_whitespace).last().unwrap_or_default().trim_start());
            let ours = path.is_some_and(|p| wanted(p.strip_suffix(" (deleted)").unwrap_or(p)));
            if ours && perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    current = Some((a, b, 0));
                }
            }
        } else if let Some((a, b, _)) = current {
            let kib = |rest: &str| rest.trim().trim_end_matches("kB").trim().parse::<usize>().unwrap_or(usize::MAX);
            if let Some(rest) = line.strip_prefix("Rss:") {
                current = Some((a, b, kib(rest).saturating_mul(1024)));
            } else if let Some(rest) = line.strip_prefix("Anonymous:") {
                if kib(rest) == 0 {
                    found.extend(current);
                }
                current = None;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000010000 r--p 00000000 00:2f 123 /w/abc.so (deleted)
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f0000010000-7f0000030000 r-xp 00010000 00:2f 123 /w/abc.so (deleted)
Size:                128 kB
Rss:                 100 kB
Anonymous:             0 kB
7f0000030000-7f0000031000 r--p 00030000 00:2f 123 /w/abc.so (deleted)
Rss:                   4 kB
Anonymous:             4 kB
7f0000031000-7f0000032000 rw-p 00031000 00:2f 123 /w/abc.so (deleted)
Rss:                   4 kB
Anonymous:             0 kB
7f0000040000-7f0000050000 r-xp 00000000 00:2f 124 /w/other.so
Rss:                  64 kB
Anonymous:             0 kB
7f0000060000-7f0000061000 rw-p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_file_are_chosen() {
        let found = clean_read_only_mappings(SMAPS, &|p: &str| p == "/w/abc.so");
        // Not the written RELRO page, not the writable data, not another file.
        assert_eq!(found, vec![(0x7f0000000000, 0x7f0000010000, 64 * 1024), (0x7f0000010000, 0x7f0000030000, 100 * 1024)]);
        assert_eq!(clean_read_only_mappings(SMAPS, &|p: &str| p == "/w/other.so"), vec![(0x7f0000040000, 0x7f0000050000, 64 * 1024)]);
        assert!(clean_read_only_mappings(SMAPS, &|p: &str| p == "/w/ab").is_empty());
    }

    #[test]
    fn dropping_the_pages_of_our_own_executable_keeps_it_running() {
        let exe = std::fs::read_link("/proc/self/exe").expect("our executable");
        let dropped = drop_clean_file_pages(&exe);
        assert!(dropped > 0, "the test binary's code was resident and is dropped");
        // The code still runs (its pages come back from the page cache).
        assert_eq!(clean_read_only_mappings(SMAPS, &|p: &str| p.starts_with("/w/")).len(), 3);
    }
}

#[cfg(test)]
mod idle_trim_tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        time::Duration,
    };

    use crate::service::Service;

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_when_calls_stop_and_never_under_load() {
        let service = Arc::new(Service::default());
        let every = Duration::from_secs(2);
        tokio::spawn(super::trim_when_idle_with(service.clone(), every, count));
        let tick = || tokio::time::sleep(every);
        // Nothing served yet: nothing to give back.
        for _ in 0..3 {
            tick().await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0, "no trim before any call");
        // Calls in every period: no trim, however long it lasts.
        for _ in 0..5 {
            drop(service.begin());
            tick().await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0, "no trim while calls keep coming");
        // Calls stop: one trim, within two periods, and no more while it stays quiet.
        for _ in 0..2 {
            tick().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "one trim once calls stopped");
        for _ in 0..5 {
            tick().await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "a quiet host is trimmed once");
        // A call that runs across periods (a long stream) holds the trim off until it ends.
        let long = service.begin();
        for _ in 0..4 {
            tick().await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "no trim while a call runs");
        drop(long);
        for _ in 0..2 {
            tick().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 2, "trimmed after the long call ended");
    }
}

#[cfg(test)]
mod mapped_read_tests {
    use std::io::Write;

    #[test]
    fn reads_whole_files_whatever_the_size_hint() {
        let dir = std::env::temp_dir().join(format!("agent-host-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (len, hint) in
            [(0usize, 0u64), (1, 1), (5000, 5000), (5000, 10), (3 * 4096 + 7, 0), (100_000, 200_000), (600_000, 600_000), (600_000, 1)]
        {
            let path = dir.join(format!("f{len}-{hint}"));
            let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::File::create(&path).unwrap().write_all(&content).unwrap();
            let mut seen = Vec::new();
            let bytes = super::read_into_own_mapping(&mut std::fs::File::open(&path).unwrap(), hint, |piece| seen.extend_from_slice(piece))
                .unwrap();
            assert_eq!(&bytes[..], &content[..], "len {len}, hint {hint}");
            assert_eq!(seen, content, "the pieces, in order, are the file");
            // Slices outlive the handle they came from; the mapping goes with the last one.
            let tail = bytes.slice(len / 2..);
            drop(bytes);
            assert_eq!(&tail[..], &content[len / 2..]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
