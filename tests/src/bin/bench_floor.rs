//! The floor of the side-by-side benchmark: a minimal tonic server that answers agent-host's
//! gRPC paths with fixed, valid response bytes and does no work (no decode, no routing, no
//! plugin), through tonic's router and its generic `Grpc` framing. What agent-host measures
//! against it is what the host adds on top of tonic's transport (h2c, the same runtime flavour),
//! less what the host saves by routing and framing its calls itself (BENCHMARKS.md, ninth round).
//!
//! Usage: bench-floor RESPONSES_DIR [ADDR]
//!
//! RESPONSES_DIR holds one file per method, `<Method>.bin` (e.g. `CreateTask.bin`,
//! `ListAgents.bin`): the protobuf bytes to answer with (tests/bench/compare.py writes the ones
//! agent-host answered, so both servers send the same sizes). `<Method>.large.bin`, when present,
//! answers requests over 64 KiB (the 1 MiB CreateTask). A missing file answers an empty message,
//! which is a valid encoding of every protobuf message. Prints `bench-floor listening grpc=ADDR`.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tonic::{
    body::Body,
    server::{Grpc, NamedService, StreamingService, UnaryService},
    Request, Response, Status, Streaming,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

/// Requests larger than this get the `.large.bin` answer.
const LARGE: usize = 64 * 1024;
/// The host's default `server.max_message_bytes`.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

// A pass-through codec (the one agent-host keeps for its log stream): the floor frames bytes
// through tonic's `Grpc`, with no decode and no encode, the way a minimal tonic server would.
// agent-host frames its calls itself (`agent_host::framing`), and routes without tonic's router.
use agent_host::grpc::RawCodec;

/// The fixed answers, by method name: (small, large).
type Answers = Arc<HashMap<String, (Bytes, Bytes)>>;

trait Name: Send + Sync + 'static {
    const NAME: &'static str;
}

macro_rules! names {
    ($($ty:ident = $name:expr;)*) => {$(
        enum $ty {}
        impl Name for $ty {
            const NAME: &'static str = $name;
        }
    )*};
}

names! {
    V1Async = "flyteidl.service.AsyncAgentService";
    V1Sync = "flyteidl.service.SyncAgentService";
    V1Metadata = "flyteidl.service.AgentMetadataService";
    V2Async = "flyteidl2.connector.AsyncConnectorService";
    V2Metadata = "flyteidl2.connector.ConnectorMetadataService";
}

struct Floor<N> {
    answers: Answers,
    _name: PhantomData<fn() -> N>,
}

impl<N> Clone for Floor<N> {
    fn clone(&self) -> Self {
        Floor { answers: self.answers.clone(), _name: PhantomData }
    }
}

impl<N: Name> NamedService for Floor<N> {
    const NAME: &'static str = N::NAME;
}

fn answer(answers: &Answers, method: &str, request_len: usize) -> Bytes {
    match answers.get(method) {
        Some((small, large)) => if request_len > LARGE { large } else { small }.clone(),
        None => Bytes::new(),
    }
}

impl<N: Name> tower_service::Service<http::Request<Body>> for Floor<N> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let answers = self.answers.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
            Ok(if method == "ExecuteTaskSync" {
                grpc.streaming(Stream { answers, method }, req).await
            } else {
                grpc.unary(Unary { answers, method }, req).await
            })
        })
    }
}

struct Unary {
    answers: Answers,
    method: String,
}

impl UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(answer(&self.answers, &self.method, request.get_ref().len()))))
    }
}

/// ExecuteTaskSync: reads the header and the inputs (as the host does), answers once.
struct Stream {
    answers: Answers,
    method: String,
}

impl StreamingService<Bytes> for Stream {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let (answers, method) = (self.answers.clone(), self.method.clone());
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let mut len = 0;
            for _ in 0..2 {
                match incoming.message().await? {
                    Some(m) => len += m.len(),
                    None => break,
                }
            }
            let bytes = answer(&answers, &method, len);
            Ok(Response::new(Box::pin(tokio_stream::once(Ok(bytes))) as BoxStream))
        })
    }
}

fn load(dir: &std::path::Path) -> Answers {
    let mut answers = HashMap::new();
    for method in [
        "ListAgents",
        "GetAgent",
        "CreateTask",
        "GetTask",
        "DeleteTask",
        "GetTaskMetrics",
        "ExecuteTaskSync",
        "ListConnectors",
        "GetConnector",
    ] {
        let read = |name: String| std::fs::read(dir.join(name)).map(Bytes::from).ok();
        let small = read(format!("{method}.bin")).unwrap_or_default();
        let large = read(format!("{method}.large.bin")).unwrap_or_else(|| small.clone());
        answers.insert(method.to_string(), (small, large));
    }
    Arc::new(answers)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: bench-floor RESPONSES_DIR [ADDR]");
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let answers = load(std::path::Path::new(&dir));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("bench-floor listening grpc={}", listener.local_addr().expect("bound"));
    macro_rules! floor {
        ($n:ty) => {
            Floor::<$n> { answers: answers.clone(), _name: PhantomData }
        };
    }
    tonic::transport::Server::builder()
        .add_service(floor!(V1Async))
        .add_service(floor!(V1Sync))
        .add_service(floor!(V1Metadata))
        .add_service(floor!(V2Async))
        .add_service(floor!(V2Metadata))
        // TCP_NODELAY, as agent-host sets it (tonic ignores `tcp_nodelay` with a caller's listener).
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .expect("serve");
}
