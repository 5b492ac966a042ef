//! The client end of the `Mux` service (see `services::mux`): one stream
//! per member carries the calls of every task using the connection, each
//! call waiting for the reply with its id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::pb::mux_client::MuxClient;
use crate::pb::mux_reply::Result as Reply;
use crate::pb::mux_request::Call;
use crate::pb::{MuxReply, MuxRequest};
use crate::services::mux::into_result;
use crate::transport::net::MAX_GRPC_MESSAGE;

type Waiter = oneshot::Sender<MuxReply>;

#[derive(Default)]
struct Waiting {
    /// Why the stream ended; set once, after which no call is accepted.
    closed: Option<String>,
    calls: HashMap<u64, Waiter>,
}

/// One open mux stream to one member.
pub(crate) struct MuxStream {
    tx: mpsc::UnboundedSender<MuxRequest>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
}

impl MuxStream {
    /// Opens the stream on `channel` and starts the task that hands replies
    /// to their callers.
    pub(crate) async fn open(channel: Channel) -> Result<MuxStream, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut replies = MuxClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .calls(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let w = waiting.clone();
        tokio::spawn(async move {
            let why = loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
                        if let Some(waiter) = w.lock().calls.remove(&reply.id) {
                            let _ = waiter.send(reply);
                        }
                    }
                    Ok(None) => break "the member ended the stream".to_string(),
                    Err(s) => break s.message().to_string(),
                }
            };
            let mut w = w.lock();
            w.closed = Some(why);
            // Dropping the waiters wakes their callers with "connection lost".
            w.calls.clear();
        });
        Ok(MuxStream {
            tx,
            waiting,
            next_id: AtomicU64::new(1),
        })
    }

    /// Whether the stream has ended (a new one must be opened).
    pub(crate) fn is_closed(&self) -> bool {
        self.waiting.lock().closed.is_some()
    }

    /// Sends one call and waits for its reply. A stream that ends before the
    /// reply comes gives `Unavailable` without RaftKit metadata: for a write,
    /// the outcome is unknown.
    pub(crate) async fn call(&self, call: Call) -> Result<Reply, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = oneshot::channel();
        {
            let mut w = self.waiting.lock();
            if let Some(why) = &w.closed {
                return Err(Status::unavailable(format!("mux stream closed: {why}")));
            }
            w.calls.insert(id, wtx);
        }
        // Forgets the call if the caller gives up before the reply.
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        if self
            .tx
            .send(MuxRequest {
                id,
                call: Some(call),
            })
            .is_err()
        {
            return Err(Status::unavailable("mux stream closed"));
        }
        match wrx.await {
            Ok(reply) => into_result(reply),
            Err(_) => {
                let why = self.waiting.lock().closed.clone().unwrap_or_default();
                Err(Status::unavailable(format!(
                    "connection lost before the reply: {why}"
                )))
            }
        }
    }
}

struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().calls.remove(&self.id);
    }
}
