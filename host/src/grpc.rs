//! The gRPC surface: Flyte 1 and Flyte 2 services on one port, health and reflection beside.
//!
//! tonic's transport serves the port (HTTP/2, keepalive, client deadlines, graceful shutdown);
//! the host routes the paths itself ([`Router`]) and frames the messages of the calls answered
//! with one message itself ([`crate::framing`]): it reads only the routing fields and hands the
//! plugin the bytes as received (no decode, no re-encode, no copy). The log stream goes through
//! tonic's `Grpc` with a pass-through codec ([`RawCodec`]).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{Grpc, NamedService, ServerStreamingService},
    Code, Request, Response, Status,
};

use crate::{
    error::RpcError,
    framing,
    rpc::{service, Kind, Rpc},
    service::{ActiveCall, Service},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

/// A codec that moves message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // Splits the received buffer: no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// tonic refuses an over-size message with OUT_OF_RANGE; gRPC's other servers (grpc-core,
/// grpc-go, and so flytekit's) say RESOURCE_EXHAUSTED, which is what Flyte's clients expect.
/// This fixes the status of a response tonic built itself (trailers-only, status in the
/// headers): the log stream's request, the one tonic still reads.
fn fix_size_response(mut response: http::Response<Body>) -> http::Response<Body> {
    const OUT_OF_RANGE: &[u8] = b"11";
    const RESOURCE_EXHAUSTED: &str = "8";
    const _: () = assert!(Code::OutOfRange as i32 == 11 && Code::ResourceExhausted as i32 == 8);
    if response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == OUT_OF_RANGE) {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
    response
}

/// Serving limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message, either way.
    pub max_message_bytes: usize,
    /// Server cap on a call's duration (the client's own deadline is applied by tonic).
    pub call_timeout: Option<std::time::Duration>,
}

/// A service the host serves beside Flyte's (health, reflection): tonic's own server for it.
type Other = Arc<dyn Fn(http::Request<Body>) -> BoxFuture<Result<http::Response<Body>, Infallible>> + Send + Sync>;

/// Every gRPC path on the port, routed by the host: Flyte's services by [`Rpc::of`] to the
/// shared [`Service`], the others (health, reflection) by service name to their tonic servers.
///
/// tonic's own router (axum's, one route per service) cost about 4k instructions of a small
/// call's 50k (BENCHMARKS.md, ninth round): a route lookup, URL parameters stored in the
/// request's extensions, two more boxed futures. Matching the path directly costs next to none.
/// A path that names no served method is UNIMPLEMENTED, as with tonic's router.
#[derive(Clone)]
pub struct Router {
    service: Arc<Service>,
    limits: Limits,
    others: Arc<[(&'static str, Other)]>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("limits", &self.limits)
            .field("others", &self.others.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// Flyte's services, answered from `service`.
    pub fn new(service: Arc<Service>, limits: Limits) -> Self {
        Self { service, limits, others: Arc::new([]) }
    }

    /// Also serves `server` (a tonic server: its `poll_ready` is always ready) at its name.
    pub fn with<S>(mut self, server: S) -> Self
    where
        S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let call: Other = Arc::new(move |req| Box::pin(server.clone().call(req)));
        self.others = self.others.iter().cloned().chain([(S::NAME, call)]).collect();
        self
    }
}

impl tower_service::Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let Some((name, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            let refused = Status::unimplemented(format!("no gRPC service at {path}")).into_http();
            return Box::pin(std::future::ready(Ok(refused)));
        };
        let Some(rpc) = Rpc::of(name, method).filter(|r| r.abi_or_meta()) else {
            if let Some((_, other)) = self.others.iter().find(|(n, _)| *n == name) {
                return other(req);
            }
            let refused = if service::ALL.contains(&name) {
                Status::unimplemented(format!("method {path} not found"))
            } else {
                Status::unimplemented(format!("service {name} not found"))
            };
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        if self.service.drain.is_draining() {
            return Box::pin(std::future::ready(Ok(RpcError::Draining.into_status().into_http())));
        }
        let active = self.service.begin();
        let (service, limit) = (self.service.clone(), self.limits.max_message_bytes);
        let grpc = move || Grpc::new(RawCodec).max_decoding_message_size(limit).max_encoding_message_size(limit);
        // One future per kind, each boxed once with the limits around it: no enum of the three
        // kinds' states, and no layer of combinators moving the call's state again.
        let cap = self.limits.call_timeout;
        match rpc.kind() {
            Kind::Unary => Box::pin(Limited::new(
                async move {
                    let (parts, body) = req.into_parts();
                    let answer = match framing::request_message(&parts.headers, body, limit).await {
                        Ok(message) => service.unary(rpc, message).await.map_err(RpcError::into_status),
                        Err(status) => Err(status),
                    };
                    framing::response(answer, limit)
                },
                cap,
                active,
            )),
            Kind::ServerStream => {
                Box::pin(Limited::new(async move { grpc().server_streaming(Logs { service, rpc }, req).await }, cap, active))
            }
            Kind::Bidi => Box::pin(Limited::new(
                async move {
                    let (parts, body) = req.into_parts();
                    let answer = match framing::Incoming::new(&parts.headers, body, limit) {
                        Ok(incoming) => service.execute(incoming).await,
                        Err(status) => Err(status),
                    };
                    framing::response(answer, limit)
                },
                cap,
                active,
            )),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call with the server's limits around it: the cap on its duration
    /// (`server.call_timeout_ms`) and the end of the shutdown grace period. Dropping the call
    /// (either limit) cancels the plugin's task.
    ///
    /// The call is polled first (it is `biased`, as `tokio::select!` would say): one answered at
    /// its first poll, the usual case for a nonblocking agent, never reads the clock, registers
    /// no timer and no drain waiter. Both are set up at the call's first wait.
    struct Limited<F> {
        #[pin]
        call: F,
        cap: Option<std::time::Duration>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        stopped: Option<BoxFuture<()>>,
        active: ActiveCall,
    }
}

impl<F> Limited<F> {
    fn new(call: F, cap: Option<std::time::Duration>, active: ActiveCall) -> Self {
        Limited { call, cap, deadline: None, stopped: None, active }
    }
}

impl<F: Future<Output = http::Response<Body>>> Future for Limited<F> {
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.call.poll(cx) {
            return Poll::Ready(Ok(fix_size_response(response)));
        }
        if this.stopped.is_none() {
            // The call's first wait.
            *this.deadline = this.cap.map(|cap| Box::pin(tokio::time::sleep(cap)));
            *this.stopped = Some(Box::pin(this.active.service().drain.stopped()));
        }
        if let Some(deadline) = this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let cap = this.cap.unwrap_or_default().as_millis();
                let message = format!("the call ran past the server's limit of {cap} ms (server.call_timeout_ms)");
                return Poll::Ready(Ok(Status::deadline_exceeded(message).into_http()));
            }
        }
        if this.stopped.as_mut().is_some_and(|stopped| stopped.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(Ok(RpcError::Draining.into_status().into_http()));
        }
        Poll::Pending
    }
}

impl Rpc {
    /// Every RPC in [`Rpc`] is served; kept as a hook for per-deployment switches.
    fn abi_or_meta(self) -> bool {
        true
    }
}

struct Logs {
    service: Arc<Service>,
    rpc: Rpc,
}

impl ServerStreamingService<Bytes> for Logs {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (service, rpc) = (self.service.clone(), self.rpc);
        Box::pin(async move {
            let (plugin, mut stream) = service.open_stream(rpc, request.into_inner()).await.map_err(RpcError::into_status)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Status>>(4);
            let drain = service.drain.clone();
            let active = service.begin();
            tokio::spawn(async move {
                // Holding the version keeps it alive (and its shutdown pending) while streaming.
                let (_plugin, _active) = (plugin, active);
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        () = tx.closed() => break,
                        () = drain.stopped() => {
                            let _ = tx.send(Err(RpcError::Draining.into_status())).await;
                            break;
                        }
                    };
                    let (item, last) = match item {
                        None => break,
                        Some(Ok(bytes)) => (Ok(bytes), false),
                        Some(Err(e)) => (Err(Status::internal(format!("log stream failed: {}", e.message))), true),
                    };
                    if tx.send(item).await.is_err() || last {
                        break;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as BoxStream))
        })
    }
}
