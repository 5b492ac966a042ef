//! Serving the mux stream: many client calls over one plain framed TCP
//! connection on the server's port, each tagged with an id its reply
//! repeats. The framing (preface, frames, [`FrameWriter`]) is the wire
//! protocol's, in `raftkit_proto::mux`, which also says why the stream
//! exists. Here each call runs through the same service code as the unary
//! ones, so redirects, sessions and errors behave identically; a write's
//! reply is encoded and sent by its done, on the thread that applied the
//! entry ([`super::propose_then`]).

use std::sync::Arc;

use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tonic::{Request, Status};

use super::counter::CounterService;
use super::kv::KvService;
use super::status_to_wire;
use crate::pb::counter_server::Counter;
use crate::pb::kv_server::Kv;
use crate::pb::mux_reply::Result as Reply;
use crate::pb::mux_request::Call;
use crate::pb::{MuxHelloReply, MuxReply, MuxRequest};

pub use raftkit_proto::mux::{
    into_result, read_frame, FrameWriter, MAX_FRAME, MAX_QUEUED_BYTES, MUX_PREFACE,
};

/// Calls one stream may have running at once; the stream is not read
/// further until some finish (backpressure on a client that floods).
pub const MAX_IN_FLIGHT_PER_STREAM: usize = 4096;

/// Serves one mux stream whose preface was read: acknowledges it, then
/// runs every call it reads until the client closes it.
pub async fn serve(tcp: tokio::net::TcpStream, kv: Arc<KvService>, counter: Arc<CounterService>) {
    let (rd, mut wr) = tcp.into_split();
    if wr.write_all(MUX_PREFACE).await.is_err() {
        return;
    }
    let out = FrameWriter::new(wr, tokio::runtime::Handle::current());
    serve_calls(rd, out, kv, counter).await;
}

/// Serves a mux stream over any connection (TLS) whose preface was read
/// and acknowledged.
pub async fn serve_stream<S>(stream: S, kv: Arc<KvService>, counter: Arc<CounterService>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let out = FrameWriter::over(wr, tokio::runtime::Handle::current());
    serve_calls(rd, out, kv, counter).await;
}

async fn serve_calls(
    rd: impl tokio::io::AsyncRead + Unpin,
    out: Arc<FrameWriter>,
    kv: Arc<KvService>,
    counter: Arc<CounterService>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
    let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
    let mut buf = Vec::new();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        match read_frame(&mut rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => return, // running calls still answer
            Err(e) => {
                tracing::debug!(error = %e, "mux stream ended");
                return;
            }
        }
        let req = match MuxRequest::decode(&buf[..]) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, "closing a mux stream: undecodable request");
                return;
            }
        };
        let (id, out) = (req.id, out.clone());
        call(&kv, &counter, req, move |result| {
            out.send(&MuxReply {
                id,
                result: Some(result.unwrap_or_else(|s| Reply::Error(status_to_wire(&s)))),
            });
            drop(permit);
        });
    }
}

/// Runs one call; `reply` gets its result. Writes answer from their done;
/// reads, which wait on a read barrier, run as a task.
fn call(
    kv: &Arc<KvService>,
    counter: &Arc<CounterService>,
    req: MuxRequest,
    reply: impl FnOnce(Result<Reply, Status>) + Send + 'static,
) {
    match req.call {
        Some(Call::Put(r)) => kv.put_then(r, |out| reply(out.map(Reply::Put))),
        Some(Call::Delete(r)) => kv.delete_then(r, |out| reply(out.map(Reply::Delete))),
        Some(Call::Cas(r)) => kv.cas_then(r, |out| reply(out.map(Reply::Cas))),
        Some(Call::FetchAdd(r)) => counter.fetch_add_then(r, |out| reply(out.map(Reply::FetchAdd))),
        Some(Call::Get(r)) => {
            let kv = kv.clone();
            tokio::spawn(async move {
                reply(
                    kv.get(Request::new(r))
                        .await
                        .map(|r| Reply::Get(r.into_inner())),
                )
            });
        }
        Some(Call::CounterGet(r)) => {
            let counter = counter.clone();
            tokio::spawn(async move {
                reply(
                    counter
                        .get(Request::new(r))
                        .await
                        .map(|r| Reply::CounterGet(r.into_inner())),
                )
            });
        }
        Some(Call::Hello(h)) => {
            // The replica's cluster, from whichever service hosts the group
            // (an atomic read); none stated when neither does.
            let id = kv
                .cluster_id(&h.group)
                .or_else(|_| counter.cluster_id(&h.group))
                .unwrap_or(0);
            reply(Ok(Reply::Hello(MuxHelloReply {
                cluster_id: super::cluster_hex(id),
            })))
        }
        None => reply(Err(Status::invalid_argument(
            "mux request carries no call (a newer client than this server?)",
        ))),
    }
}
