//! One socket write for the answers of a connection that are ready together.
//!
//! hyper runs each HTTP/2 stream as a task of its own, and each answer a stream sends wakes the
//! connection's task, which writes what h2 has queued and flushes. tokio runs a task woken by
//! the task that just ran next (its "LIFO slot"), so with many calls in flight on one
//! connection (FlytePropeller multiplexes its calls on one), the connection's task ran after
//! each answer and wrote it alone: one `writev`, and one pass through the kernel's TCP send
//! path, per answer. `tests/bench/threads.sh` counted 1.00 per call at 64 streams, a quarter
//! to a third of the server's CPU time per call.
//!
//! [`Batched`] sits between h2 and the socket and counts the HTTP/2 frames that pass: the
//! streams the client opened, and the streams whose end has been written. A write that does not
//! end every open stream, and is short of [`BATCH_BYTES`], waits: `Batched` answers `Pending`
//! and asks tokio to wake the connection's task once the tasks that are ready have run (the
//! deferred wake behind [`tokio::task::yield_now`]). The answers those tasks send then go out
//! with it, in one write. Nothing is held here: h2 keeps the bytes it could not write, as it
//! does when the socket is full. A write that ends every open stream goes out at once, so a
//! lone call pays nothing for this.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write of this many bytes or more goes out at once: enough for 15–20 small answers (a
/// GetTask answer with its headers and trailers is 200–300 bytes), and under h2's write buffer
/// (16 KiB), which h2 flushes when full. Measured in BENCHMARKS.md (fourteenth round).
pub const BATCH_BYTES: usize = 4096;

/// The client's connection preface (RFC 9113 §3.4), which comes before its first frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// A connection's transport whose small writes wait for the connection's other answers when
/// more are coming.
#[derive(Debug)]
pub struct Batched<T> {
    io: T,
    /// Frames read: streams the client opened or reset.
    read: Frames,
    /// Frames written: streams the server ended.
    written: Frames,
    /// The frames of the bytes offered but not written yet, read on from `written`: h2 offers
    /// what it could not write again, with more after it, so each offer is read only past
    /// what the previous one held.
    ahead: Frames,
    /// Bytes of the offer read into `ahead`.
    ahead_len: usize,
    /// Streams those bytes end.
    ahead_ends: u64,
    /// Streams opened (by the client's first HEADERS frame on a new stream id).
    opened: u64,
    /// Streams ended: the server wrote END_STREAM or RST_STREAM, or the client reset them.
    ended: u64,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// The wake tokio holds back until the tasks that are ready have run.
    deferred: Arc<Deferred>,
    /// `deferred` is with the scheduler and has not been seen to fire.
    armed: bool,
}

#[derive(Debug, Default)]
struct Deferred {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<T> Batched<T> {
    /// `io` with its writes batched, or (`enabled` false: `server.batch_writes = false`) passed
    /// through as they come.
    pub fn new(io: T, enabled: bool) -> Self {
        Self {
            io,
            read: if enabled { Frames::after_preface() } else { Frames { off: true, ..Frames::default() } },
            written: Frames::default(),
            ahead: Frames::default(),
            ahead_len: 0,
            ahead_ends: 0,
            opened: 0,
            ended: 0,
            last_stream: 0,
            deferred: Arc::default(),
            armed: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Streams the client opened whose end has not been written.
    pub fn open_streams(&self) -> u64 {
        self.opened.saturating_sub(self.ended)
    }

    /// Whether `bufs` go out now. If not, the task is woken again once the tasks that are
    /// ready have run.
    fn ready_to_write(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> bool {
        // The ready tasks have run since this connection last waited: what they answered is in.
        let waited = self.armed && self.deferred.fired.swap(false, Ordering::Acquire);
        if waited {
            self.armed = false;
        }
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if waited || self.read.off || total >= BATCH_BYTES {
            return true;
        }
        // The streams this write would end, counted past what the last offer held.
        if total < self.ahead_len {
            self.restart_ahead();
        }
        let Self { ahead, ahead_len, ahead_ends, .. } = self;
        let mut skip = *ahead_len;
        for buf in bufs {
            let take = skip.min(buf.len());
            skip -= take;
            ahead.feed(&buf[take..], |kind, flags, _| *ahead_ends += ends_stream(kind, flags) as u64);
        }
        *ahead_len = total;
        if self.ahead_ends >= self.open_streams() {
            return true;
        }
        {
            let mut task = self.deferred.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !self.armed {
            // tokio keeps a waker given to `yield_now` until it has run the tasks that are
            // ready and polled its I/O driver (outside a runtime it wakes it at once). Only its
            // first poll is needed, which hands over the waker.
            let waker = Waker::from(self.deferred.clone());
            let mut yielding = std::pin::pin!(tokio::task::yield_now());
            let _ = yielding.as_mut().poll(&mut Context::from_waker(&waker));
            self.armed = true;
        }
        false
    }

    /// Reads the next offer from the first byte not written.
    fn restart_ahead(&mut self) {
        self.ahead = self.written.clone();
        self.ahead_len = 0;
        self.ahead_ends = 0;
    }

    fn count_written(&mut self, bufs: &[IoSlice<'_>], mut n: usize) {
        if self.read.off {
            return;
        }
        if n == self.ahead_len {
            // All of the offer that was read ahead: its frames are known.
            self.written = self.ahead.clone();
            self.ended += self.ahead_ends;
            self.restart_ahead();
            return;
        }
        let Self { written, ended, .. } = self;
        for buf in bufs {
            let take = n.min(buf.len());
            written.feed(&buf[..take], |kind, flags, _| *ended += ends_stream(kind, flags) as u64);
            n -= take;
            if n == 0 {
                break;
            }
        }
        self.restart_ahead();
    }
}

/// Whether a frame the server writes ends its stream.
fn ends_stream(kind: u8, flags: u8) -> bool {
    matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 || kind == RST_STREAM
}

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let this = &mut *self;
            let (opened, ended, last) = (&mut this.opened, &mut this.ended, &mut this.last_stream);
            this.read.feed(&buf.filled()[before..], |kind, _, stream| match kind {
                // Client streams have odd ids, each higher than the last; a HEADERS frame on a
                // stream already open is its trailers.
                HEADERS if stream > *last => {
                    *last = stream;
                    *opened += 1;
                }
                RST_STREAM if stream != 0 => *ended += 1,
                _ => {}
            });
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let bufs = [IoSlice::new(buf)];
        if !self.ready_to_write(cx, &bufs) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.count_written(&bufs, n);
        }
        written
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if !self.ready_to_write(cx, bufs) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.count_written(bufs, n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Batched<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Where a byte stream is in its HTTP/2 frames (RFC 9113 §4.1: a 9-byte header of payload
/// length, type, flags and stream id, then the payload).
#[derive(Debug, Clone, Default)]
struct Frames {
    /// Preface bytes still to come.
    preface: usize,
    header: [u8; 9],
    /// Header bytes seen of the frame being read.
    have: usize,
    /// Payload bytes to skip.
    skip: usize,
    /// Not HTTP/2 (the preface did not match), or batching is off: nothing is counted, nothing
    /// waits.
    off: bool,
}

impl Frames {
    fn after_preface() -> Self {
        Frames { preface: PREFACE.len(), ..Frames::default() }
    }

    /// Reads `bytes`, calling `frame(type, flags, stream id)` for each frame header completed.
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() && !self.off {
            if self.preface > 0 {
                let at = PREFACE.len() - self.preface;
                let n = self.preface.min(bytes.len());
                if bytes[..n] != PREFACE[at..at + n] {
                    self.off = true;
                    return;
                }
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    let h = self.header;
                    self.have = 0;
                    self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    frame(h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0xAB, payload));
        f
    }

    fn frames_of(bytes: &[u8], split: usize, preface: bool) -> (Vec<(u8, u8, u32)>, bool) {
        let mut frames = if preface { Frames::after_preface() } else { Frames::default() };
        let mut seen = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            frames.feed(piece, |k, f, s| seen.push((k, f, s)));
        }
        (seen, frames.off)
    }

    #[test]
    fn frames_are_found_however_the_bytes_are_split() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, 18)); // SETTINGS
        bytes.extend(frame(HEADERS, 0x4, 1, 40));
        bytes.extend(frame(DATA, END_STREAM, 1, 300));
        bytes.extend(frame(HEADERS, 0x5, 3, 0));
        bytes.extend(frame(RST_STREAM, 0, 3, 4));
        let want = vec![(0x4, 0, 0), (HEADERS, 0x4, 1), (DATA, END_STREAM, 1), (HEADERS, 0x5, 3), (RST_STREAM, 0, 3)];
        for split in [1, 2, 5, 9, 10, 24, 25, 64, bytes.len()] {
            assert_eq!(frames_of(&bytes, split, true), (want.clone(), false), "split {split}");
        }
    }

    #[test]
    fn a_stream_that_is_not_http2_turns_counting_off() {
        let (seen, off) = frames_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 3, true);
        assert!(seen.is_empty());
        assert!(off);
    }

    #[test]
    fn the_stream_id_drops_its_reserved_bit() {
        let mut f = frame(HEADERS, 0, 5, 0);
        f[5] |= 0x80;
        assert_eq!(frames_of(&f, 4, false).0, vec![(HEADERS, 0, 5)]);
    }

    /// An in-memory transport that records each write that reached it.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        input: Vec<u8>,
        /// Takes at most this many bytes per write (a socket with little room).
        room: Option<usize>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(self.input.len());
            buf.put_slice(&self.input[..n]);
            self.input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = self.room.unwrap_or(usize::MAX).min(buf.len());
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection on which the client opened `streams` streams.
    async fn opened(streams: u32) -> Batched<Recorder> {
        opened_with(streams, true).await
    }

    async fn opened_with(streams: u32, enabled: bool) -> Batched<Recorder> {
        use tokio::io::AsyncReadExt;
        let mut input = PREFACE.to_vec();
        for s in 0..streams {
            input.extend(frame(HEADERS, 0x4, 2 * s + 1, 30));
            input.extend(frame(DATA, END_STREAM, 2 * s + 1, 100));
        }
        let len = input.len();
        let mut io = Batched::new(Recorder { input, ..Recorder::default() }, enabled);
        let mut sink = vec![0; len];
        io.read_exact(&mut sink).await.unwrap();
        if enabled {
            assert_eq!(io.open_streams(), streams as u64);
        }
        io
    }

    fn answer(stream: u32) -> Vec<u8> {
        let mut a = frame(HEADERS, 0x4, stream, 20);
        a.extend(frame(DATA, 0, stream, 150));
        a.extend(frame(HEADERS, 0x5, stream, 20));
        a
    }

    fn poll_write_once(io: &mut Batched<Recorder>, bytes: &[u8]) -> (Poll<io::Result<usize>>, Arc<Woken>) {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        (Pin::new(io).poll_write(&mut Context::from_waker(&waker), bytes), woken)
    }

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_that_ends_every_open_stream_goes_out_at_once() {
        let mut io = opened(1).await;
        let (written, _) = poll_write_once(&mut io, &answer(1));
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == answer(1).len()));
        assert_eq!(io.get_ref().writes.len(), 1);
        assert_eq!(io.open_streams(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_with_other_streams_open_waits_for_the_ready_tasks() {
        let mut io = opened(3).await;
        let (first, woken) = poll_write_once(&mut io, &answer(1));
        assert!(first.is_pending(), "two other streams are open: the write waits");
        assert!(io.get_ref().writes.is_empty());
        assert!(!woken.0.load(Ordering::SeqCst), "woken only once the ready tasks have run");
        // A ready task runs (the yield lets the scheduler run the others), then the connection
        // is woken and writes what has gathered meanwhile, in one write.
        tokio::task::yield_now().await;
        assert!(woken.0.load(Ordering::SeqCst), "the deferred wake came");
        let both = [answer(1), answer(3)].concat();
        let (second, _) = poll_write_once(&mut io, &both);
        assert!(matches!(second, Poll::Ready(Ok(n)) if n == both.len()));
        assert_eq!(io.get_ref().writes, vec![both]);
        assert_eq!(io.open_streams(), 1);
        // The last open stream's answer goes out at once.
        let (third, _) = poll_write_once(&mut io, &answer(5));
        assert!(third.is_ready());
        assert_eq!(io.open_streams(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turned_off_every_write_goes_out_at_once() {
        let mut io = opened_with(3, false).await;
        assert!(poll_write_once(&mut io, &answer(1)).0.is_ready());
        assert_eq!(io.get_ref().writes, vec![answer(1)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_long_write_goes_out_at_once() {
        let mut io = opened(2).await;
        let mut long = frame(HEADERS, 0x4, 1, 20);
        long.extend(frame(DATA, 0, 1, BATCH_BYTES));
        let (written, _) = poll_write_once(&mut io, &long);
        assert!(written.is_ready());
        assert_eq!(io.open_streams(), 2, "no stream ended");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_reset_ends_its_stream() {
        use tokio::io::AsyncReadExt;
        let mut io = opened(2).await;
        io.get_mut_input().extend(frame(RST_STREAM, 0, 3, 4));
        let mut sink = [0u8; 13];
        io.read_exact(&mut sink).await.unwrap();
        assert_eq!(io.open_streams(), 1);
        assert!(poll_write_once(&mut io, &answer(1)).0.is_ready());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn offers_that_grow_are_counted_once_and_partial_writes_where_they_stop() {
        let mut io = opened(4).await;
        let a = answer(1);
        assert!(poll_write_once(&mut io, &a).0.is_pending());
        let ab = [answer(1), answer(3)].concat();
        assert!(poll_write_once(&mut io, &ab).0.is_pending(), "two of four streams end: still waiting");
        assert_eq!((io.ahead_len, io.ahead_ends), (ab.len(), 2));
        // All four end: out at once, through a socket that takes a little at a time.
        io.io.room = Some(100);
        let mut rest = [answer(1), answer(3), answer(5), answer(7)].concat();
        while !rest.is_empty() {
            match poll_write_once(&mut io, &rest).0 {
                Poll::Ready(Ok(n)) => drop(rest.drain(..n)),
                other => panic!("the rest should go out at once: {other:?}"),
            }
            if !rest.is_empty() {
                assert!(io.open_streams() > 0);
            }
        }
        assert_eq!(io.open_streams(), 0);
        assert_eq!(io.get_ref().writes.concat(), [answer(1), answer(3), answer(5), answer(7)].concat());
    }

    /// An h2 server behind [`Batched`] answers `calls` calls sent together, each by a task of
    /// its own as hyper does, in full. (How few writes that takes is `tests/batching.rs`'s
    /// test, against the host itself.)
    async fn calls_through_batched(calls: usize) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(Batched::new(server_io, true)).await.unwrap();
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                // As hyper sends an answer: the headers, the body once the connection has
                // given the stream room for it, then the trailers.
                tokio::spawn(async move {
                    let mut send = respond.send_response(http::Response::new(()), false).unwrap();
                    send.reserve_capacity(150);
                    std::future::poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
                    send.send_data(bytes::Bytes::from_static(&[7; 150]), false).unwrap();
                    send.send_trailers(http::HeaderMap::new()).unwrap();
                });
            }
        });
        let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
        let client_conn = tokio::spawn(conn);
        let request = || http::Request::post("http://test/echo").body(()).unwrap();
        let answers: Vec<_> = (0..calls).map(|_| client.send_request(request(), true).unwrap().0).collect();
        for answer in answers {
            let mut body = answer.await.unwrap().into_body();
            assert_eq!(body.data().await.unwrap().unwrap(), [7; 150][..]);
            assert!(body.trailers().await.unwrap().is_some());
        }
        drop(client);
        client_conn.abort();
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn calls_sent_together_are_all_answered_through_a_batched_connection() {
        // On the runtime's one worker with the client, so the calls arrive together.
        tokio::spawn(calls_through_batched(64)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_call_is_answered_through_a_batched_connection() {
        calls_through_batched(1).await;
    }

    impl Batched<Recorder> {
        fn get_mut_input(&mut self) -> &mut Vec<u8> {
            &mut self.io.input
        }
    }
}
