//! braft's Counter example: `fetch_add(delta)` returns the previous value,
//! `get` returns the value after a linearizable read barrier. Both go to the
//! leader; other members answer with a redirect.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::sessions::{command_meta, Sessions};
use super::{propose_then, read_barrier, require_leader, wait_for, GroupTable};
use crate::cluster_format::COUNTER_OPS;
use crate::pb::counter_server::Counter;
use crate::pb::{
    CounterCommand, CounterGetReply, CounterGetRequest, CounterResult, FetchAddReply,
    FetchAddRequest,
};
use crate::state_machine::{ApplyIter, Digest, SnapshotDone, StateMachine};
use crate::storage::{SnapshotReader, SnapshotWriter};

const SNAPSHOT_FILE: &str = "counter";
const SESSIONS_FILE: &str = "sessions";

/// The counter's value, shared by the state machine and the service.
#[derive(Clone, Default, Debug)]
pub struct CounterState {
    value: Arc<AtomicI64>,
    /// Increments applied at cluster format `COUNTER_OPS` or later.
    ops: Arc<AtomicU64>,
}

impl CounterState {
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Acquire)
    }

    /// Increments applied since the group reached cluster format
    /// [`COUNTER_OPS`] (0 before).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Acquire)
    }
}

/// The replicated counter.
pub struct CounterFsm {
    state: CounterState,
    sessions: Sessions,
}

impl CounterFsm {
    pub fn new(state: CounterState) -> Self {
        CounterFsm {
            state,
            sessions: Sessions::default(),
        }
    }
}

impl CounterFsm {
    /// The value, and the increment count once there is one: a state without
    /// counted increments encodes (in snapshots and the digest) as builds
    /// from before cluster formats encode it, so members of a group at the
    /// base format agree whatever their build.
    fn encode_state(&self) -> Vec<u8> {
        let mut b = self.state.get().to_le_bytes().to_vec();
        let ops = self.state.ops();
        if ops > 0 {
            b.extend_from_slice(&ops.to_le_bytes());
        }
        b
    }
}

/// Adds `delta` (refusing overflow) and reports the value before; from
/// cluster format [`COUNTER_OPS`] on it also counts the increment.
fn add(state: &CounterState, delta: i64, cluster_format: u32) -> CounterResult {
    let prev = state.get();
    match prev.checked_add(delta) {
        Some(next) => {
            state.value.store(next, Ordering::Release);
            if cluster_format >= COUNTER_OPS {
                state.ops.fetch_add(1, Ordering::AcqRel);
            }
            CounterResult {
                previous: prev,
                ..Default::default()
            }
        }
        None => CounterResult {
            previous: prev,
            error: format!("adding {delta} to {prev} overflows a 64-bit counter"),
            error_kind: "overflow".into(),
        },
    }
}

fn encode(r: CounterResult) -> Bytes {
    Bytes::from(r.encode_to_vec())
}

impl StateMachine for CounterFsm {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            let out = match CounterCommand::decode(e.data.as_ref()) {
                Ok(cmd) => {
                    let (sessions, state) = (&mut self.sessions, &self.state);
                    sessions.run(
                        cmd.meta.as_ref(),
                        || encode(add(state, cmd.delta, e.cluster_format)),
                        |kind, error| {
                            encode(CounterResult {
                                previous: state.get(),
                                error,
                                error_kind: kind.into(),
                            })
                        },
                    )
                }
                Err(err) => encode(CounterResult {
                    previous: self.state.get(),
                    error: format!("undecodable counter command: {err}"),
                    error_kind: "invalid".into(),
                }),
            };
            e.respond(Ok(out));
        }
    }

    fn on_snapshot_save(&mut self, mut writer: SnapshotWriter, done: SnapshotDone) {
        let result = writer
            .write_file(SNAPSHOT_FILE, &self.encode_state())
            .and_then(|_| writer.write_file(SESSIONS_FILE, &self.sessions.encode()));
        match result {
            Ok(()) => done.run(Ok(writer)),
            Err(e) => done.run(Err(e.to_string())),
        }
    }

    fn state_digest(&self) -> Option<u64> {
        let mut d = Digest::default();
        d.field(&self.encode_state()).field(&self.sessions.encode());
        Some(d.value())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let data = reader.read_file(SNAPSHOT_FILE).map_err(|e| e.to_string())?;
        let (bytes, ops): ([u8; 8], u64) = match data.len() {
            8 | 16 => (
                data[..8]
                    .try_into()
                    .map_err(|_| "unreachable".to_string())?,
                data.get(8..16)
                    .and_then(|o| o.try_into().ok())
                    .map_or(0, u64::from_le_bytes),
            ),
            n => return Err(format!("counter snapshot has {n} bytes, expected 8 or 16")),
        };
        self.state.ops.store(ops, Ordering::Release);
        self.sessions = if reader.has_file(SESSIONS_FILE) {
            Sessions::decode(&reader.read_file(SESSIONS_FILE).map_err(|e| e.to_string())?)?
        } else {
            Sessions::default()
        };
        self.state
            .value
            .store(i64::from_le_bytes(bytes), Ordering::Release);
        Ok(())
    }
}

/// The Counter gRPC service.
pub struct CounterService {
    groups: GroupTable<CounterState>,
    session_idle_ms: u64,
}

impl CounterService {
    /// The cluster id of `group`'s replica (0: none known yet).
    pub fn cluster_id(&self, group: &str) -> Result<u64, Status> {
        self.groups.get(group).map(|(node, _)| node.cluster_id())
    }

    pub fn new(groups: GroupTable<CounterState>, session_idle_ms: u64) -> Self {
        CounterService {
            groups,
            session_idle_ms,
        }
    }

    /// Counter fetch-add; `reply` runs from the write's done (see
    /// [`propose_then`]).
    pub fn fetch_add_then(
        &self,
        req: FetchAddRequest,
        reply: impl FnOnce(Result<FetchAddReply, Status>) + Send + 'static,
    ) {
        let node = match self.groups.get(&req.group).and_then(|(node, _)| {
            require_leader(&node)?;
            Ok(node)
        }) {
            Ok(node) => node,
            Err(s) => return reply(Err(s)),
        };
        let cmd = CounterCommand {
            delta: req.delta,
            meta: Some(command_meta(req.session, self.session_idle_ms)),
        };
        propose_then(
            &node,
            cmd.encode_to_vec(),
            move |out: Result<CounterResult, Status>| {
                reply(out.map(|r| FetchAddReply {
                    previous: r.previous,
                }))
            },
        );
    }
}

#[tonic::async_trait]
impl Counter for CounterService {
    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, delta = request.get_ref().delta))]
    async fn fetch_add(
        &self,
        request: Request<FetchAddRequest>,
    ) -> Result<Response<FetchAddReply>, Status> {
        wait_for(|reply| self.fetch_add_then(request.into_inner(), reply))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn get(
        &self,
        request: Request<CounterGetRequest>,
    ) -> Result<Response<CounterGetReply>, Status> {
        let req = request.into_inner();
        let (node, state) = self.groups.get(&req.group)?;
        let read_index = read_barrier(&node, req.consistency()).await?;
        Ok(Response::new(CounterGetReply {
            value: state.get(),
            read_index,
            ops: state.ops(),
        }))
    }
}
