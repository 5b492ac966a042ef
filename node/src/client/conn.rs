//! [`Conn`]: a client's connection to one member.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::Status;

use super::mux::MuxStream;
use crate::pb::counter_client::CounterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::mux_reply::Result as Reply;
use crate::pb::mux_request::Call;
use crate::pb::{
    CasReply, CasRequest, CounterGetReply, CounterGetRequest, DeleteReply, DeleteRequest,
    FetchAddReply, FetchAddRequest, GetReply, GetRequest, PutReply, PutRequest,
};

/// A connection to one member: its channel (admin and unary calls) and,
/// unless the client asked for unary calls, the multiplexed call stream,
/// opened on first use and reopened after it ends. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    mux: Option<Arc<MuxSlot>>,
}

#[derive(Default)]
struct MuxSlot {
    open: parking_lot::Mutex<Option<Arc<MuxStream>>>,
    /// Held while a stream is being opened, so concurrent callers share it.
    opening: tokio::sync::Mutex<()>,
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
                match &self.mux {
                    Some(slot) => match self.stream(slot).await?.call(Call::$variant(req)).await? {
                        Reply::$variant(r) => Ok(r),
                        other => Err(Status::internal(format!(
                            "the member answered {} with {other:?}",
                            stringify!($name)
                        ))),
                    },
                    None => $client::new(self.channel.clone())
                        .$unary(req)
                        .await
                        .map(|r| r.into_inner()),
                }
            }
        )*
    };
}

impl Conn {
    pub(crate) fn new(channel: Channel, mux: bool) -> Conn {
        Conn {
            channel,
            mux: mux.then(Arc::default),
        }
    }

    /// The member's channel, for calls the mux stream does not carry.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    async fn stream(&self, slot: &MuxSlot) -> Result<Arc<MuxStream>, Status> {
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        let _opening = slot.opening.lock().await;
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        let s = Arc::new(MuxStream::open(self.channel.clone()).await?);
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
