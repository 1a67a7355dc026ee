//! The messages of the calls answered with one message (every unary call, and
//! ExecuteTaskSync), framed by the host itself rather than by tonic's generic `Grpc`.
//!
//! Their bytes are simple: the request body is gRPC messages (a compression flag, a four-byte
//! big-endian length, the message), the answer is one message in the same framing followed by a
//! `grpc-status` trailer. tonic's generic path spent about 3k instructions of a small call's 54k
//! on that (a decoder state machine, metadata maps built from the headers and back, an encoder
//! that copies the answer into its own buffer, a status turned into a header map for the
//! trailers; BENCHMARKS.md, ninth round). This module does the same work directly, and without
//! the copies:
//!
//! * a message that arrives within one DATA frame (every small request) is a slice of that
//!   frame, not a copy into a buffer; one spread over frames (the 1 MiB CreateTask) is gathered
//!   once into a buffer of exactly its length;
//! * the answer goes out as the plugin's bytes behind a five-byte prefix, not copied into an
//!   encode buffer (small answers are joined with their prefix into one frame, which is cheaper
//!   than two for h2).
//!
//! What a client sees is what tonic's path gives it, with two differences on purpose, both what
//! gRPC's other servers (grpc-core, grpc-go; so flytekit's) do: a message over
//! `server.max_message_bytes`, either way, is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and an
//! answer over the limit is refused before any of it is sent (tonic starts the answer, then fails
//! it in the trailers). The rest is tonic's behaviour, kept: no compression is accepted (a
//! `grpc-encoding` other than `identity` is UNIMPLEMENTED; a compressed message is INTERNAL), a
//! body that ends inside a message is INTERNAL, and so is a unary body with no message; a unary
//! call's messages after the first are read (and checked) but ignored. The log stream (server
//! streaming) still goes through tonic.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use tonic::{body::Body, Code, Status};

/// The gRPC length prefix: one flag byte, four length bytes.
const PREFIX: usize = 5;
/// Answers up to this size are copied behind their prefix into one DATA frame; larger ones go
/// out as the prefix and the plugin's own bytes.
const JOIN_BELOW: usize = 16 * 1024;

/// The one message of a unary request, read as tonic's `Grpc::unary` reads it (see the module
/// documentation): refused at once if compressed or over `limit`, without reading the rest.
pub async fn request_message(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Status> {
    let mut incoming = Incoming::new(headers, body, limit)?;
    let first = incoming.message().await?.ok_or_else(|| Status::internal("the request has no message"))?;
    // The rest of the body, as tonic reads it (for its trailers): further messages are ignored.
    while incoming.message().await?.is_some() {}
    Ok(first)
}

/// A request body, read as gRPC messages.
#[derive(Debug)]
pub struct Incoming {
    body: Body,
    messages: Messages,
    /// What is left of the last DATA frame.
    rest: Bytes,
}

impl Incoming {
    /// The messages of `body`; refused if the headers say it is compressed.
    pub fn new(headers: &HeaderMap, body: Body, limit: usize) -> Result<Self, Status> {
        if let Some(encoding) = headers.get("grpc-encoding") {
            if encoding.as_bytes() != b"identity" {
                let mut status = Status::unimplemented(format!(
                    "the request is compressed with {:?}, and this server accepts no compression",
                    String::from_utf8_lossy(encoding.as_bytes())
                ));
                status.metadata_mut().insert("grpc-accept-encoding", tonic::metadata::MetadataValue::from_static("identity"));
                return Err(status);
            }
        }
        Ok(Self { body, messages: Messages::new(limit), rest: Bytes::new() })
    }

    /// The next message; `None` once the body has ended.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.messages.next_in(&mut self.rest)? {
                return Ok(Some(message));
            }
            match std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.rest = data;
                    }
                }
                // The client went away after sending: tonic takes that as the end of the body.
                Some(Err(status)) if status.code() == Code::Cancelled => return self.messages.finish().map(|()| None),
                Some(Err(status)) => return Err(status),
                None => return self.messages.finish().map(|()| None),
            }
        }
    }
}

/// The answer to a unary call: `message` framed, or `status` as a trailers-only response.
pub fn response(answer: Result<Bytes, Status>, limit: usize) -> http::Response<Body> {
    let message = match answer {
        Ok(message) if message.len() > limit => {
            let status = Status::resource_exhausted(format!(
                "the answer of {} bytes is over this server's limit of {limit} bytes (server.max_message_bytes)",
                message.len()
            ));
            return status.into_http();
        }
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let mut response = http::Response::new(Body::new(OneMessage::new(message)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn prefix(len: usize) -> [u8; PREFIX] {
    let [a, b, c, d] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [0, a, b, c, d]
}

/// Splits a request body's bytes into gRPC messages, as they arrive.
#[derive(Debug)]
struct Messages {
    limit: usize,
    /// The length of the message being read, once its prefix is read.
    want: Option<usize>,
    /// A prefix or message that began in an earlier frame.
    partial: BytesMut,
}

impl Messages {
    fn new(limit: usize) -> Self {
        Self { limit, want: None, partial: BytesMut::new() }
    }

    /// Reads from `data` until a message is complete, and returns it; `None` when `data` ran
    /// out first (it is then empty, and what it held is kept for the next call).
    fn next_in(&mut self, data: &mut Bytes) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(len) = self.want {
                let message = if self.partial.is_empty() && data.len() >= len {
                    // All of it in this frame: a slice of it, no copy.
                    data.split_to(len)
                } else {
                    if self.partial.is_empty() {
                        self.partial.reserve(len);
                    }
                    let take = (len - self.partial.len()).min(data.len());
                    self.partial.put(data.split_to(take));
                    if self.partial.len() < len {
                        return Ok(None);
                    }
                    self.partial.split().freeze()
                };
                self.want = None;
                return Ok(Some(message));
            }
            if data.is_empty() {
                return Ok(None);
            }
            let mut head = [0; PREFIX];
            if self.partial.is_empty() && data.len() >= PREFIX {
                data.copy_to_slice(&mut head);
            } else {
                let take = (PREFIX - self.partial.len()).min(data.len());
                self.partial.put(data.split_to(take));
                if self.partial.len() < PREFIX {
                    return Ok(None);
                }
                self.partial.copy_to_slice(&mut head);
                self.partial.clear();
            }
            self.want = Some(self.length(head)?);
        }
    }

    /// The length a prefix announces, if the message may be read.
    fn length(&self, [flag, a, b, c, d]: [u8; PREFIX]) -> Result<usize, Status> {
        match flag {
            0 => {}
            // With no `grpc-encoding` (any other was refused), as gRPC's compression spec says.
            1 => return Err(Status::internal("the request has a compressed message but names no grpc-encoding")),
            f => return Err(Status::internal(format!("the request has a message with compression flag {f} (gRPC allows 0 and 1)"))),
        }
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.limit {
            return Err(Status::resource_exhausted(format!(
                "the request's message of {len} bytes is over this server's limit of {} bytes (server.max_message_bytes)",
                self.limit
            )));
        }
        Ok(len)
    }

    /// The body ended: an error if it ended inside a message.
    fn finish(&self) -> Result<(), Status> {
        if self.want.is_some() || !self.partial.is_empty() {
            return Err(Status::internal("the request ended inside a message"));
        }
        Ok(())
    }
}

/// A response body of one message, then `grpc-status: 0`.
#[derive(Debug)]
struct OneMessage {
    /// What is left to send: the prefix (when sent apart), the message.
    data: [Option<Bytes>; 2],
    trailers: bool,
}

impl OneMessage {
    fn new(message: Bytes) -> Self {
        let data = if message.len() < JOIN_BELOW {
            let mut joined = BytesMut::with_capacity(PREFIX + message.len());
            joined.put_slice(&prefix(message.len()));
            joined.put(message);
            [Some(joined.freeze()), None]
        } else {
            [Some(Bytes::copy_from_slice(&prefix(message.len()))), Some(message)]
        };
        Self { data, trailers: true }
    }
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(data) = this.data.iter_mut().find_map(Option::take) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if std::mem::take(&mut this.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        !self.trailers && self.data.iter().all(Option::is_none)
    }

    // No exact size: hyper would send it as a `content-length` header, which gRPC answers do
    // not carry (and which costs a header to encode on every answer).
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        messages.iter().flat_map(|m| prefix(m.len()).into_iter().chain(m.iter().copied())).collect()
    }

    /// Feeds `bytes` in pieces cut at `cuts`; the messages, or the first error.
    fn split(bytes: &[u8], cuts: &[usize], limit: usize) -> Result<Vec<Bytes>, Status> {
        let mut messages = Messages::new(limit);
        let mut out = vec![];
        let mut start = 0;
        for &end in cuts.iter().chain([&bytes.len()]) {
            let mut data = Bytes::copy_from_slice(&bytes[start..end]);
            while let Some(m) = messages.next_in(&mut data)? {
                out.push(m);
            }
            assert!(data.is_empty());
            start = end;
        }
        messages.finish()?;
        Ok(out)
    }

    #[test]
    fn messages_are_found_wherever_the_frames_cut_them() {
        let parts: [&[u8]; 4] = [b"first", b"", b"a longer third message", &[7; 300]];
        let bytes = framed(&parts);
        // Every single cut and a spread of double cuts, including inside prefixes.
        for a in 0..=bytes.len() {
            for b in (a..=bytes.len()).step_by(7) {
                let got = split(&bytes, &[a, b], 1024).expect("reads");
                assert_eq!(got, parts.iter().map(|p| Bytes::copy_from_slice(p)).collect::<Vec<_>>(), "cuts {a} {b}");
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(split(&bytes, &cuts, 1024).expect("reads").len(), 4);
    }

    #[test]
    fn a_message_within_one_frame_is_a_slice_of_it() {
        let frame = Bytes::from(framed(&[b"hello"]));
        let mut messages = Messages::new(1024);
        let message = messages.next_in(&mut frame.clone()).expect("reads").expect("a message");
        assert_eq!(message, &b"hello"[..]);
        assert_eq!(message.as_ptr(), frame[PREFIX..].as_ptr(), "copied, not sliced");
    }

    #[test]
    fn a_body_that_ends_inside_a_message_is_refused() {
        let bytes = framed(&[b"hello"]);
        for end in 1..bytes.len() {
            let status = split(&bytes[..end], &[], 1024).expect_err("ends early");
            assert_eq!(status.code(), Code::Internal, "ending at {end}");
        }
        assert_eq!(split(&[], &[], 1024).expect("empty body").len(), 0);
    }

    #[test]
    fn compression_flags_and_lengths_over_the_limit_are_refused() {
        let mut compressed = framed(&[b"x"]);
        compressed[0] = 1;
        assert_eq!(split(&compressed, &[], 1024).unwrap_err().code(), Code::Internal);
        compressed[0] = 2;
        assert_eq!(split(&compressed, &[], 1024).unwrap_err().code(), Code::Internal);
        let big = framed(&[&[0; 1025]]);
        // Refused at the prefix: before the message's bytes arrive.
        let status = split(&big[..PREFIX], &[], 1024).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("1025 bytes"), "{}", status.message());
        assert_eq!(split(&framed(&[&[0; 1024]]), &[], 1024).expect("at the limit").len(), 1);
    }

    async fn collect(response: http::Response<Body>) -> (HeaderMap, Vec<u8>, Option<HeaderMap>) {
        let (parts, mut body) = response.into_parts();
        let (mut data, mut trailers) = (vec![], None);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            match frame.expect("frame").into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        (parts.headers, data, trailers)
    }

    #[tokio::test]
    async fn answers_are_framed_with_an_ok_trailer_small_or_large() {
        for len in [0, 1, JOIN_BELOW - 1, JOIN_BELOW, 100_000] {
            let message = Bytes::from(vec![9; len]);
            let (headers, data, trailers) = collect(response(Ok(message.clone()), 1 << 20)).await;
            assert_eq!(headers["content-type"], "application/grpc");
            assert_eq!(data, framed(&[&message]), "len {len}");
            assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        }
    }

    #[tokio::test]
    async fn errors_and_answers_over_the_limit_are_trailers_only() {
        let (headers, data, trailers) = collect(response(Ok(Bytes::from(vec![0; 11])), 10)).await;
        assert_eq!(headers["grpc-status"], (Code::ResourceExhausted as i32).to_string().as_str());
        assert!(data.is_empty() && trailers.is_none());
        let (headers, data, _) = collect(response(Err(Status::not_found("no such job")), 10)).await;
        assert_eq!(headers["grpc-status"], (Code::NotFound as i32).to_string().as_str());
        assert_eq!(headers["grpc-message"], "no%20such%20job");
        assert!(data.is_empty());
    }
}
