//! Per-stage timestamps of replicated writes, for latency analysis only.
//!
//! Built with `--features stage-trace` and run with `RAFTKIT_STAGE_TRACE=1`,
//! every node prints `STAGE <stage> <index> <unix nanoseconds>` to stderr
//! when an entry whose index is a multiple of 16 passes a stage: proposed,
//! append sent and received, stepped, made durable, answer sent and
//! received, committed, applied. `bench/stage-trace.py` joins the three
//! nodes' logs by index and prints the median time of each step (see
//! docs/benchmarks.md). Without the feature every function here is empty.

#[cfg(feature = "stage-trace")]
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| raftkit_proto::settings::from_env("stage_trace").is_some())
}

/// Entry `index` reached `stage`.
#[inline]
pub fn mark(stage: &str, index: u64) {
    #[cfg(feature = "stage-trace")]
    if index & 15 == 0 && enabled() {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        eprintln!("STAGE {stage} {index} {ns}");
    }
    #[cfg(not(feature = "stage-trace"))]
    let _ = (stage, index);
}

/// A raft message reached `stage` (`<stage>.app` for appends carrying
/// entries, by their last index; `<stage>.resp` for append answers).
#[inline]
pub fn message(stage: &str, m: &raft::eraftpb::Message) {
    #[cfg(feature = "stage-trace")]
    {
        use raft::eraftpb::MessageType;
        let (kind, index) = match m.get_msg_type() {
            MessageType::MsgAppend => match m.entries.last() {
                Some(last) => ("app", last.index),
                None => return,
            },
            MessageType::MsgAppendResponse => ("resp", m.index),
            _ => return,
        };
        if index & 15 == 0 && enabled() {
            mark(&format!("{stage}.{kind}"), index);
        }
    }
    #[cfg(not(feature = "stage-trace"))]
    let _ = (stage, m);
}
