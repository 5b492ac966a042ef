//! The client end of the mux stream (see `services::mux`): one stream per
//! member carries the calls of every task using the connection, each call
//! waiting for the reply with its id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::Status;

use raftkit_proto::mux::{into_result, read_frame, FrameWriter, MUX_PREFACE};
use raftkit_proto::pb::mux_reply::Result as Reply;
use raftkit_proto::pb::mux_request::Call;
use raftkit_proto::pb::{MuxReply, MuxRequest};

type Waiter = oneshot::Sender<MuxReply>;

#[derive(Default)]
struct Waiting {
    /// Why the stream ended; set once, after which no call is accepted.
    closed: Option<String>,
    calls: HashMap<u64, Waiter>,
}

/// One open mux stream to one member.
pub(crate) struct MuxStream {
    out: Arc<FrameWriter>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
}

impl MuxStream {
    /// Connects to `addr`, opens the stream and starts the task that hands
    /// replies to their callers. A member that does not acknowledge the
    /// preface (it does not speak the mux stream) gives `Unimplemented`:
    /// nothing was sent, unary calls are the way to reach it.
    pub(crate) async fn open(
        dialer: &crate::dial::Dialer,
        addr: &str,
        timeout: Duration,
    ) -> Result<MuxStream, Status> {
        let unavailable = |e: std::io::Error| Status::unavailable(format!("{addr}: {e}"));
        let opened = tokio::time::timeout(timeout, async {
            // The dial error names the address already.
            let mut tcp = dialer
                .connect(addr)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            tcp.write_all(MUX_PREFACE).await.map_err(unavailable)?;
            let mut ack = [0u8; 8];
            match tcp.read_exact(&mut ack).await {
                Ok(_) if &ack == MUX_PREFACE => Ok(tcp),
                Ok(_) | Err(_) => Err(Status::unimplemented(format!(
                    "{addr} does not speak the mux stream"
                ))),
            }
        })
        .await
        .map_err(|_| Status::unavailable(format!("{addr}: no mux stream within {timeout:?}")))??;
        // A plain connection keeps the direct send path; TLS goes through
        // the writer's task.
        let (rd, out): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, _) = match opened {
            crate::dial::Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (
                    Box::new(rd),
                    FrameWriter::new(wr, tokio::runtime::Handle::current()),
                )
            }
            tls @ crate::dial::Stream::Tls(_) => {
                let (rd, wr) = tokio::io::split(tls);
                (
                    Box::new(rd),
                    FrameWriter::over(wr, tokio::runtime::Handle::current()),
                )
            }
        };
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let w = waiting.clone();
        tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
            let mut buf = Vec::new();
            let why = loop {
                match read_frame(&mut rd, &mut buf).await {
                    Ok(true) => match MuxReply::decode(&buf[..]) {
                        Ok(reply) => {
                            if let Some(waiter) = w.lock().calls.remove(&reply.id) {
                                let _ = waiter.send(reply);
                            }
                        }
                        Err(e) => break format!("undecodable reply: {e}"),
                    },
                    Ok(false) => break "the member ended the stream".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let mut w = w.lock();
            w.closed = Some(why);
            // Dropping the waiters wakes their callers with "connection lost".
            w.calls.clear();
        });
        Ok(MuxStream {
            out,
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
        self.out.send(&MuxRequest {
            id,
            call: Some(call),
        });
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
