//! [`Conn`]: a client's connection to one member, checked to belong to the
//! client's cluster before it carries a request (see `pin`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Code, Status};

use super::mux::MuxStream;
use super::pin::{ClusterPin, Foreign};

/// How long opening a mux stream may take (connect, preface, answer).
const MUX_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
use raftkit_proto::pb::admin_client::AdminClient;
use raftkit_proto::pb::counter_client::CounterClient;
use raftkit_proto::pb::kv_client::KvClient;
use raftkit_proto::pb::mux_reply::Result as Reply;
use raftkit_proto::pb::mux_request::Call;
use raftkit_proto::pb::{
    CasReply, CasRequest, CounterGetReply, CounterGetRequest, DeleteReply, DeleteRequest,
    FetchAddReply, FetchAddRequest, GetReply, GetRequest, GroupRequest, MuxHello, PutReply,
    PutRequest,
};

/// A connection to one member: its channel (admin and unary calls) and,
/// unless the client asked for unary calls, the multiplexed call stream,
/// opened on first use and reopened after it ends. A member that does not
/// speak the mux stream (an older server) gets unary calls from then on.
/// The channel is one TCP connection (`pin::OneConnection`), checked once
/// ([`Conn::check_channel`]); each mux stream is checked as it opens.
/// Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    /// The member's address, for the mux stream.
    addr: String,
    mux: Option<Arc<MuxSlot>>,
    /// The cluster this connection's requests may go to.
    pin: Arc<ClusterPin>,
    /// How the mux stream is opened (plain or TLS, as the channel).
    dialer: crate::dial::Dialer,
    /// The channel's member stated the client's cluster (or none).
    channel_checked: Arc<AtomicBool>,
    /// Set when the member stated another cluster: nothing is sent to it.
    foreign: ForeignSlot,
}

/// See [`Conn::foreign_slot`].
pub(crate) type ForeignSlot = Arc<parking_lot::Mutex<Option<Foreign>>>;

/// Why a channel's check did not admit it.
#[derive(Debug)]
pub(crate) enum CheckError {
    /// The member belongs to another cluster.
    Foreign(Foreign),
    /// The member did not answer the check (nothing else was sent).
    Failed(Status),
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
    pub(crate) fn new(
        channel: Channel,
        addr: &str,
        mux: bool,
        pin: Arc<ClusterPin>,
        dialer: crate::dial::Dialer,
    ) -> Conn {
        Conn {
            channel,
            addr: addr.to_string(),
            mux: mux.then(Arc::default),
            pin,
            dialer,
            channel_checked: Arc::default(),
            foreign: Arc::default(),
        }
    }

    /// Where this connection records the other cluster its member stated
    /// (then no request was sent on it); one reference count to keep.
    pub(crate) fn foreign_slot(&self) -> ForeignSlot {
        self.foreign.clone()
    }

    fn admit(&self, stated: &str) -> Result<(), Foreign> {
        self.pin.admit(&self.addr, stated).inspect_err(|f| {
            tracing::warn!(addr = %self.addr, theirs = %f.theirs, ours = %f.ours, "member belongs to another cluster; not using it");
            *self.foreign.lock() = Some(f.clone());
        })
    }

    /// Asks the channel's member which cluster its replica of the group
    /// belongs to (once per channel; `timeout` bounds it). A member that
    /// does not host the group, or predates the identity call, states
    /// none and is accepted.
    pub(crate) async fn check_channel(
        &self,
        timeout: std::time::Duration,
    ) -> Result<(), CheckError> {
        if self.channel_checked.load(Ordering::Acquire) {
            return Ok(());
        }
        let req = GroupRequest {
            group: self.pin.group.clone(),
        };
        let stated =
            match tokio::time::timeout(timeout, AdminClient::new(self.channel()).identity(req))
                .await
            {
                Ok(Ok(r)) => r.into_inner().cluster_id,
                Ok(Err(s)) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {
                    String::new()
                }
                Ok(Err(s)) => return Err(CheckError::Failed(s)),
                Err(_) => {
                    return Err(CheckError::Failed(Status::unavailable(format!(
                        "{}: no identity within {timeout:?}",
                        self.addr
                    ))))
                }
            };
        self.admit(&stated).map_err(CheckError::Foreign)?;
        self.channel_checked.store(true, Ordering::Release);
        Ok(())
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
        let s = Arc::new(MuxStream::open(&self.dialer, &self.addr, MUX_OPEN_TIMEOUT).await?);
        // The stream is published only once its member stated the client's
        // cluster (or none): no call goes out on it before.
        let hello = Call::Hello(MuxHello {
            group: self.pin.group.clone(),
        });
        let stated = match tokio::time::timeout(MUX_OPEN_TIMEOUT, s.call(hello)).await {
            Ok(Ok(Reply::Hello(h))) => h.cluster_id,
            // A server from before the hello: it answers "no call".
            Ok(Err(e)) if e.code() == Code::InvalidArgument => String::new(),
            Ok(Ok(other)) => {
                return Err(Status::internal(format!(
                    "{}: the member answered hello with {other:?}",
                    self.addr
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "{}: no hello within {MUX_OPEN_TIMEOUT:?}",
                    self.addr
                )))
            }
        };
        if let Err(f) = self.admit(&stated) {
            return Err(Status::failed_precondition(f.to_string()));
        }
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
        let pin = Arc::new(ClusterPin::new("counter".into()));
        let conn = Conn::new(
            channel,
            &addr.to_string(),
            true,
            pin,
            crate::dial::Dialer::plain(),
        );
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
