//! The `Mux` service: many client calls over one long-lived stream.
//!
//! A unary gRPC call costs a whole HTTP/2 stream (request headers, response
//! headers and trailers, stream state and a task on each side) and, with one
//! call in flight per connection, its own socket reads and writes. Over a
//! mux stream each call is one length-prefixed message, and the replies of
//! calls that finish together leave in one write. The calls themselves run
//! through the same service code as the unary ones, so redirects, sessions
//! and errors behave identically (errors travel as [`MuxError`], the status
//! the unary call would have returned).

use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::counter::CounterService;
use super::kv::KvService;
use super::{status_from_wire, status_to_wire};
use crate::pb::counter_server::Counter;
use crate::pb::kv_server::Kv;
use crate::pb::mux_reply::Result as Reply;
use crate::pb::mux_request::Call;
use crate::pb::mux_server::Mux;
use crate::pb::{MuxReply, MuxRequest};

/// Calls one stream may have running at once; the stream is not read
/// further until some finish (backpressure on a client that floods).
pub const MAX_IN_FLIGHT_PER_STREAM: usize = 4096;

pub struct MuxService {
    kv: Arc<KvService>,
    counter: Arc<CounterService>,
}

impl MuxService {
    pub fn new(kv: Arc<KvService>, counter: Arc<CounterService>) -> Self {
        MuxService { kv, counter }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<MuxReply, Status>> + Send>>;

#[tonic::async_trait]
impl Mux for MuxService {
    type CallsStream = ReplyStream;

    async fn calls(
        &self,
        request: Request<Streaming<MuxRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let (kv, counter) = (self.kv.clone(), self.counter.clone());
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    biased;
                    Some(reply) = running.next(), if !running.is_empty() => {
                        if tx.send(Ok(reply)).await.is_err() {
                            return; // the client went away; running calls are dropped
                        }
                    }
                    m = inbound.message(), if reading && running.len() < MAX_IN_FLIGHT_PER_STREAM => {
                        match m {
                            Ok(Some(req)) => running.push(dispatch(kv.clone(), counter.clone(), req)),
                            // The client finished sending (or the stream broke):
                            // answer what is running, then end.
                            Ok(None) | Err(_) => reading = false,
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn dispatch(kv: Arc<KvService>, counter: Arc<CounterService>, req: MuxRequest) -> MuxReply {
    let result = match req.call {
        Some(Call::Put(r)) => kv
            .put(Request::new(r))
            .await
            .map(|r| Reply::Put(r.into_inner())),
        Some(Call::Get(r)) => kv
            .get(Request::new(r))
            .await
            .map(|r| Reply::Get(r.into_inner())),
        Some(Call::Delete(r)) => kv
            .delete(Request::new(r))
            .await
            .map(|r| Reply::Delete(r.into_inner())),
        Some(Call::Cas(r)) => kv
            .cas(Request::new(r))
            .await
            .map(|r| Reply::Cas(r.into_inner())),
        Some(Call::FetchAdd(r)) => counter
            .fetch_add(Request::new(r))
            .await
            .map(|r| Reply::FetchAdd(r.into_inner())),
        Some(Call::CounterGet(r)) => counter
            .get(Request::new(r))
            .await
            .map(|r| Reply::CounterGet(r.into_inner())),
        None => Err(Status::invalid_argument(
            "mux request carries no call (a newer client than this server?)",
        )),
    };
    MuxReply {
        id: req.id,
        result: Some(result.unwrap_or_else(|s| Reply::Error(status_to_wire(&s)))),
    }
}

/// The reply's result, or the status the call failed with.
pub fn into_result(reply: MuxReply) -> Result<Reply, Status> {
    match reply.result {
        Some(Reply::Error(e)) => Err(status_from_wire(e)),
        Some(r) => Ok(r),
        None => Err(Status::internal(
            "mux reply carries no result (a newer server than this client?)",
        )),
    }
}
