//! The mux stream's framing: many client calls over one plain framed TCP
//! connection on a node's port, each tagged with an id its reply repeats.
//! Both ends use this module; the node serves calls
//! (`raftkit-node`'s `services::mux`) and the client multiplexes callers
//! (`raftkit-client`).
//!
//! Why not gRPC: a unary call costs a whole HTTP/2 stream, and a gRPC
//! bidirectional stream passes every reply through several tasks, each a
//! thread wake-up (~40 µs on these VMs, see docs/benchmarks.md). Here a
//! write's reply is encoded and sent by the thread that applied the entry,
//! with a non-blocking `send` when nothing is queued ahead of it
//! ([`FrameWriter`]). Errors travel as [`MuxError`](crate::pb::MuxError), the
//! status the unary call would have returned.
//!
//! Wire format: the client sends [`MUX_PREFACE`] and the server answers
//! with the same 8 bytes (a server that does not speak the stream answers
//! anything else or closes, and the client falls back to unary calls).
//! Then each side sends frames: a u32 big-endian length and one protobuf
//! message, `MuxRequest` from the client, `MuxReply` from the server, in
//! completion order. The preface starts with `R`, which no HTTP request
//! does; the server tells it from a raft stream by the whole 8 bytes.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tonic::Status;

use crate::pb::mux_reply::Result as Reply;
use crate::pb::MuxReply;
use crate::status::status_from_wire;

/// Opens a mux stream (client) and acknowledges it (server).
pub const MUX_PREFACE: &[u8; 8] = b"RKMUX\x00\x00\x01";

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = crate::limits::MAX_MESSAGE_BYTES;

/// Bytes a [`FrameWriter`] queues for a peer that does not read before it
/// gives the connection up (a client that sends calls and never reads
/// their replies must not grow the server's memory without bound).
pub const MAX_QUEUED_BYTES: usize = 2 * MAX_FRAME;

/// Frames written to one connection: directly from the calling thread (any
/// thread: a done's) when nothing is queued ahead, otherwise queued and
/// written by a task on `runtime`. A connection that failed drops frames;
/// one whose peer lets more than `max_queued` bytes pile up is shut down
/// (the peer's reader then ends the stream).
pub struct FrameWriter {
    wr: Sink,
    /// Bytes waiting, and whether a flushing task is running.
    queued: parking_lot::Mutex<(Vec<u8>, bool)>,
    runtime: tokio::runtime::Handle,
    max_queued: usize,
}

/// Where a [`FrameWriter`] writes.
enum Sink {
    /// A plain connection: frames go out directly when nothing is queued.
    Tcp(OwnedWriteHalf),
    /// Any other stream (TLS): every frame is queued and written by the
    /// flushing task, which owns the stream while it writes. `None` once
    /// the connection was given up.
    Io(tokio::sync::Mutex<Option<BoxedWrite>>),
}

type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

impl FrameWriter {
    pub fn new(wr: OwnedWriteHalf, runtime: tokio::runtime::Handle) -> Arc<Self> {
        FrameWriter::with_limit(wr, runtime, MAX_QUEUED_BYTES)
    }

    /// A writer over any stream (a TLS connection's write half).
    pub fn over(
        wr: impl AsyncWrite + Send + Unpin + 'static,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(FrameWriter {
            wr: Sink::Io(tokio::sync::Mutex::new(Some(Box::new(wr)))),
            queued: parking_lot::Mutex::new((Vec::new(), false)),
            runtime,
            max_queued: MAX_QUEUED_BYTES,
        })
    }

    /// Like [`FrameWriter::new`], giving the connection up past `max_queued` bytes.
    pub fn with_limit(
        wr: OwnedWriteHalf,
        runtime: tokio::runtime::Handle,
        max_queued: usize,
    ) -> Arc<Self> {
        Arc::new(FrameWriter {
            wr: Sink::Tcp(wr),
            queued: parking_lot::Mutex::new((Vec::new(), false)),
            runtime,
            max_queued,
        })
    }

    /// Sends one frame holding `msg`. Never blocks.
    pub fn send(self: &Arc<Self>, msg: &impl prost::Message) {
        let len = msg.encoded_len();
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        if msg.encode(&mut frame).is_err() {
            return; // unreachable: the buffer has the room encode asks for
        }
        let mut q = self.queued.lock();
        let (queued, flushing) = &mut *q;
        if let (Sink::Tcp(wr), true) = (&self.wr, queued.is_empty() && !*flushing) {
            let socket: &tokio::net::TcpStream = wr.as_ref();
            match send_now(socket, &frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => queued.extend_from_slice(&frame[n..]),
                Err(_) => return, // the connection failed; its reader ends the stream
            }
        } else if let (Sink::Io(io), true) = (&self.wr, queued.is_empty() && !*flushing) {
            // The stream is free: write (encrypt) here, without waiting;
            // the flushing task takes over what the socket did not take.
            let Ok(mut w) = io.try_lock() else {
                queued.extend_from_slice(&frame);
                return self.start_flushing(flushing);
            };
            let Some(stream) = w.as_mut() else {
                return; // given up, or failed: its reader ends the stream
            };
            match write_now(stream, &frame) {
                Ok((n, true)) if n == frame.len() => return,
                Ok((n, _)) => queued.extend_from_slice(&frame[n..]),
                Err(_) => {
                    *w = None;
                    return;
                }
            }
        } else if queued.len() + frame.len() > self.max_queued {
            tracing::warn!(
                queued = queued.len(),
                "closing a mux stream whose peer does not read"
            );
            match &self.wr {
                Sink::Tcp(wr) => {
                    let socket: &tokio::net::TcpStream = wr.as_ref();
                    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
                    queued.clear();
                }
                Sink::Io(_) => {
                    // The flushing task runs (frames are queued); it
                    // drops the stream when it sees the mark.
                    queued.clear();
                    queued.push(GIVE_UP);
                }
            }
            return;
        } else {
            queued.extend_from_slice(&frame);
        }
        self.start_flushing(flushing);
    }

    /// Starts the flushing task unless it runs.
    fn start_flushing(self: &Arc<Self>, flushing: &mut bool) {
        if !*flushing {
            *flushing = true;
            let this = self.clone();
            self.runtime.spawn(async move { this.flush().await });
        }
    }

    async fn flush(&self) {
        if let Sink::Io(io) = &self.wr {
            return self.flush_io(io).await;
        }
        let Sink::Tcp(wr) = &self.wr else { return };
        loop {
            let buf = {
                let mut q = self.queued.lock();
                if q.0.is_empty() {
                    q.1 = false;
                    return;
                }
                std::mem::take(&mut q.0)
            };
            let mut at = 0;
            while at < buf.len() {
                if wr.writable().await.is_err() {
                    return;
                }
                match wr.try_write(&buf[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Queued alone in place of the frames of a stream given up (see
/// [`FrameWriter::send`]); a frame is never one byte long.
const GIVE_UP: u8 = 0xff;

impl FrameWriter {
    /// The flushing task of a [`Sink::Io`] stream.
    async fn flush_io(&self, io: &tokio::sync::Mutex<Option<BoxedWrite>>) {
        let mut wr = io.lock().await;
        // The first round may have nothing queued: a direct write left
        // bytes in the stream (TLS records the socket did not take).
        let mut buf = std::mem::take(&mut self.queued.lock().0);
        loop {
            if let Some(w) = wr.as_mut() {
                if buf.as_slice() == [GIVE_UP] {
                    let _ = w.shutdown().await;
                    *wr = None;
                } else if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                    *wr = None; // failed: its reader ends the stream
                }
            }
            let mut q = self.queued.lock();
            if q.0.is_empty() {
                q.1 = false;
                return;
            }
            buf = std::mem::take(&mut q.0);
        }
    }
}

/// Writes what `w` takes of `bytes` now, without waiting (polled once with
/// a waker that does nothing: a task polls again for the rest), then tries
/// to flush it. Returns how many bytes it took and whether they are all
/// on their way (flushed).
fn write_now(w: &mut BoxedWrite, bytes: &[u8]) -> std::io::Result<(usize, bool)> {
    use std::task::{Context, Poll};
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut at = 0;
    while at < bytes.len() {
        match std::pin::Pin::new(&mut *w).poll_write(&mut cx, &bytes[at..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => at += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok((at, false)),
        }
    }
    match std::pin::Pin::new(&mut *w).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => Ok((at, true)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok((at, false)),
    }
}

/// Reads one frame into `buf`; `Ok(false)` at a clean end of stream.
pub async fn read_frame(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let len = match rd.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    // Grown as the bytes arrive, never to the length a header claims: a
    // peer that states a large frame and sends nothing costs next to nothing.
    buf.clear();
    let got = (&mut *rd).take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the stream ended {got} bytes into a frame of {len}"),
        ));
    }
    Ok(true)
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

/// Writes what fits of `bytes` to `socket` at once, without blocking (a
/// non-blocking `send`, whatever the socket's mode); returns how many bytes
/// went, 0 when the socket buffer is full.
pub fn send_now(socket: &impl std::os::fd::AsFd, bytes: &[u8]) -> std::io::Result<usize> {
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    match rustix::net::send(socket, bytes, flags) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mux_request::Call;
    use crate::pb::{MuxRequest, PutRequest};
    use prost::Message as _;
    use tokio::io::AsyncReadExt;

    /// Two ends of a loopback TCP connection.
    async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_sent_from_a_plain_thread_arrive_whole_and_in_order() {
        let (client, server) = connected_pair().await;
        let (_rd, wr) = client.into_split();
        let out = FrameWriter::new(wr, tokio::runtime::Handle::current());
        arrive_whole_and_in_order(out, server).await;
    }

    /// The same over a stream that is not a socket (as a TLS connection
    /// is): every frame goes through the writer's task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_over_any_stream_arrive_whole_and_in_order() {
        let (client, server) = tokio::io::duplex(16 << 10);
        let out = FrameWriter::over(client, tokio::runtime::Handle::current());
        arrive_whole_and_in_order(out, server).await;
    }

    async fn arrive_whole_and_in_order(out: Arc<FrameWriter>, server: impl AsyncRead + Unpin) {
        // Sent from a thread outside the runtime, as a done runs; far more
        // than the socket holds, so most of it queues for the flushing task
        // while the reader drains.
        let n = 2000u64;
        let size = |i: u64| ((i % 7 + 1) << 12) as usize;
        let sender = {
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    out.send(&MuxRequest {
                        id: i,
                        call: Some(Call::Put(PutRequest {
                            value: vec![1; size(i)].into(),
                            ..Default::default()
                        })),
                    });
                }
            })
        };
        let mut rd = tokio::io::BufReader::new(server);
        let mut buf = Vec::new();
        for i in 0..n {
            assert!(
                read_frame(&mut rd, &mut buf).await.unwrap(),
                "stream ended early"
            );
            let req = MuxRequest::decode(&buf[..]).unwrap();
            assert_eq!(req.id, i, "frames out of order");
            match req.call {
                Some(Call::Put(p)) => assert_eq!(p.value.len(), size(i)),
                other => panic!("unexpected call {other:?}"),
            }
        }
        sender.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_never_reads_is_cut_off_not_buffered_without_bound() {
        let (client, mut server) = connected_pair().await;
        let (_rd, wr) = client.into_split();
        let limit = 1 << 20;
        let out = FrameWriter::with_limit(wr, tokio::runtime::Handle::current(), limit);
        let frame = MuxRequest {
            id: 1,
            call: Some(Call::Put(PutRequest {
                value: vec![1; 64 << 10].into(),
                ..Default::default()
            })),
        };
        // The server side reads nothing: socket buffers fill, then the queue.
        for _ in 0..2000 {
            out.send(&frame);
        }
        assert!(
            out.queued.lock().0.len() <= limit,
            "queued beyond the limit"
        );
        // The peer finds the connection closed once it reads what was sent.
        let mut sink = vec![0u8; 1 << 20];
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match server.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the stream of a peer that never read was not closed"
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_an_error_not_an_allocation() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut buf = Vec::new();
        let e = read_frame(&mut &huge[..], &mut buf).await.unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        assert!(buf.capacity() < 1 << 20);
        assert!(
            !read_frame(&mut &[][..], &mut buf).await.unwrap(),
            "clean end"
        );
    }

    /// A header that claims the largest frame, then a few bytes: what is
    /// allocated follows what arrived (one such connection used to cost
    /// the whole claimed size).
    #[tokio::test]
    async fn a_claimed_length_allocates_only_what_arrives() {
        let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[7; 100]);
        let mut buf = Vec::new();
        let e = read_frame(&mut &wire[..], &mut buf).await.unwrap_err();
        assert!(e.to_string().contains("100 bytes into a frame"), "{e}");
        assert!(
            buf.capacity() < 64 << 10,
            "{} bytes allocated",
            buf.capacity()
        );
    }
}
