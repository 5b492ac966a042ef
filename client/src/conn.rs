//! [`Conn`]: a client's connection to one member.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Code, Status};

use super::mux::MuxStream;

/// How long opening a mux stream may take (connect, preface, answer).
const MUX_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
use raftkit_proto::pb::counter_client::CounterClient;
use raftkit_proto::pb::kv_client::KvClient;
use raftkit_proto::pb::mux_reply::Result as Reply;
use raftkit_proto::pb::mux_request::Call;
use raftkit_proto::pb::{
    CasReply, CasRequest, CounterGetReply, CounterGetRequest, DeleteReply, DeleteRequest,
    FetchAddReply, FetchAddRequest, GetReply, GetRequest, PutReply, PutRequest,
};

/// A connection to one member: its channel (admin and unary calls) and,
/// unless the client asked for unary calls, the multiplexed call stream,
/// opened on first use and reopened after it ends. A member that does not
/// speak the mux stream (an older server) gets unary calls from then on.
/// Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    /// The member's address, for the mux stream.
    addr: String,
    mux: Option<Arc<MuxSlot>>,
}

#[derive(Default)]
struct MuxSlot {
    open: parking_lot::Mutex<Option<Arc<MuxStream>>>,
    /// Held while a stream is being opened, so concurrent callers share it.
    opening: tokio::sync::Mutex<()>,
    /// The member answered the stream's opening with `Unimplemented`.
    unsupported: AtomicBool,
}

impl MuxSlot {
    fn current(&self) -> Option<Arc<MuxStream>> {
        self.open.lock().clone().filter(|s| !s.is_closed())
    }
}

macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($req:ty) -> $reply:ty: $variant:ident via $client:ident::$unary:ident;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, req: $req) -> Result<$reply, Status> {
                if let Some(slot) = self.mux_slot() {
                    match self.stream(slot).await {
                        Ok(stream) => {
                            return match stream.call(Call::$variant(req)).await? {
                                Reply::$variant(r) => Ok(r),
                                other => Err(Status::internal(format!(
                                    "the member answered {} with {other:?}",
                                    stringify!($name)
                                ))),
                            }
                        }
                        // Nothing was sent: the stream never opened.
                        Err(s) if s.code() == Code::Unimplemented => {
                            slot.unsupported.store(true, Ordering::Relaxed);
                            tracing::info!(error = %s.message(), "member does not speak the mux stream; using one call per operation");
                        }
                        Err(s) => return Err(s),
                    }
                }
                $client::new(self.channel.clone())
                    .$unary(req)
                    .await
                    .map(|r| r.into_inner())
            }
        )*
    };
}

impl Conn {
    pub(crate) fn new(channel: Channel, addr: &str, mux: bool) -> Conn {
        Conn {
            channel,
            addr: addr.to_string(),
            mux: mux.then(Arc::default),
        }
    }

    /// The member's channel, for calls the mux stream does not carry.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The mux slot, unless this connection makes unary calls.
    fn mux_slot(&self) -> Option<&MuxSlot> {
        self.mux
            .as_deref()
            .filter(|s| !s.unsupported.load(Ordering::Relaxed))
    }

    /// Whether calls travel on the mux stream (false for unary clients and
    /// for members that do not speak the mux stream).
    pub fn uses_mux(&self) -> bool {
        self.mux_slot().is_some()
    }

    async fn stream(&self, slot: &MuxSlot) -> Result<Arc<MuxStream>, Status> {
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        let _opening = slot.opening.lock().await;
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        let s = Arc::new(MuxStream::open(&self.addr, MUX_OPEN_TIMEOUT).await?);
        *slot.open.lock() = Some(s.clone());
        Ok(s)
    }

    calls! {
        /// KV put.
        put(PutRequest) -> PutReply: Put via KvClient::put;
        /// KV get.
        get(GetRequest) -> GetReply: Get via KvClient::get;
        /// KV delete.
        delete(DeleteRequest) -> DeleteReply: Delete via KvClient::delete;
        /// KV compare-and-swap.
        cas(CasRequest) -> CasReply: Cas via KvClient::cas;
        /// Counter fetch-add.
        fetch_add(FetchAddRequest) -> FetchAddReply: FetchAdd via CounterClient::fetch_add;
        /// Counter get.
        counter_get(CounterGetRequest) -> CounterGetReply: CounterGet via CounterClient::get;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit_proto::pb::counter_server::{Counter, CounterServer};
    use std::sync::atomic::AtomicI64;
    use tonic::{Request, Response};

    /// A member from before the mux stream: Counter calls over gRPC only.
    #[derive(Default)]
    struct OldCounter(Arc<AtomicI64>);

    #[tonic::async_trait]
    impl Counter for OldCounter {
        async fn fetch_add(
            &self,
            r: Request<FetchAddRequest>,
        ) -> Result<Response<FetchAddReply>, Status> {
            let previous = self.0.fetch_add(r.into_inner().delta, Ordering::SeqCst);
            Ok(Response::new(FetchAddReply { previous }))
        }
        async fn get(
            &self,
            _r: Request<CounterGetRequest>,
        ) -> Result<Response<CounterGetReply>, Status> {
            Ok(Response::new(CounterGetReply {
                value: self.0.load(Ordering::SeqCst),
                read_index: 0,
                ..Default::default()
            }))
        }
    }

    #[tokio::test]
    async fn a_member_without_the_mux_service_gets_unary_calls() {
        let value = Arc::new(AtomicI64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CounterServer::new(OldCounter(value.clone())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let conn = Conn::new(channel, &addr.to_string(), true);
        assert!(conn.uses_mux());
        let add = |delta| FetchAddRequest {
            group: "counter".into(),
            delta,
            session: None,
        };
        // The first call finds out, and is still made (once): no error.
        assert_eq!(conn.fetch_add(add(5)).await.unwrap().previous, 0);
        assert!(!conn.uses_mux());
        assert_eq!(conn.fetch_add(add(2)).await.unwrap().previous, 5);
        let got = conn
            .counter_get(CounterGetRequest {
                group: "counter".into(),
                consistency: 0,
            })
            .await
            .unwrap();
        assert_eq!(got.value, 7, "each add applied exactly once");
        server.abort();
    }
}
