//! braft's Counter example: `fetch_add(delta)` returns the previous value,
//! `get` returns the value after a linearizable read barrier. Both go to the
//! leader; other members answer with a redirect.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{require_leader, to_status, GroupTable};
use crate::error::RaftError;
use crate::pb::counter_server::Counter;
use crate::pb::{
    CounterCommand, CounterGetReply, CounterGetRequest, CounterResult, FetchAddReply,
    FetchAddRequest,
};
use crate::state_machine::{ApplyIter, SnapshotDone, StateMachine};
use crate::storage::{SnapshotReader, SnapshotWriter};

const SNAPSHOT_FILE: &str = "counter";

/// The counter's value, shared by the state machine and the service.
#[derive(Clone, Default, Debug)]
pub struct CounterState {
    value: Arc<AtomicI64>,
}

impl CounterState {
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Acquire)
    }
}

/// The replicated counter.
pub struct CounterFsm {
    state: CounterState,
}

impl CounterFsm {
    pub fn new(state: CounterState) -> Self {
        CounterFsm { state }
    }
}

impl StateMachine for CounterFsm {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            let result = match CounterCommand::decode(e.data.as_ref()) {
                Ok(cmd) => {
                    let prev = self.state.get();
                    match prev.checked_add(cmd.delta) {
                        Some(next) => {
                            self.state.value.store(next, Ordering::Release);
                            CounterResult {
                                previous: prev,
                                error: String::new(),
                            }
                        }
                        None => CounterResult {
                            previous: prev,
                            error: format!(
                                "adding {} to {prev} overflows a 64-bit counter",
                                cmd.delta
                            ),
                        },
                    }
                }
                Err(err) => CounterResult {
                    previous: self.state.get(),
                    error: format!("undecodable counter command: {err}"),
                },
            };
            e.respond(Ok(Bytes::from(result.encode_to_vec())));
        }
    }

    fn on_snapshot_save(&mut self, mut writer: SnapshotWriter, done: SnapshotDone) {
        match writer.write_file(SNAPSHOT_FILE, &self.state.get().to_le_bytes()) {
            Ok(()) => done.run(Ok(writer)),
            Err(e) => done.run(Err(e.to_string())),
        }
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let data = reader.read_file(SNAPSHOT_FILE).map_err(|e| e.to_string())?;
        let bytes: [u8; 8] = data
            .as_slice()
            .try_into()
            .map_err(|_| format!("counter snapshot has {} bytes, expected 8", data.len()))?;
        self.state
            .value
            .store(i64::from_le_bytes(bytes), Ordering::Release);
        Ok(())
    }
}

/// The Counter gRPC service.
pub struct CounterService {
    groups: GroupTable<CounterState>,
}

impl CounterService {
    pub fn new(groups: GroupTable<CounterState>) -> Self {
        CounterService { groups }
    }
}

#[tonic::async_trait]
impl Counter for CounterService {
    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group, delta = request.get_ref().delta))]
    async fn fetch_add(
        &self,
        request: Request<FetchAddRequest>,
    ) -> Result<Response<FetchAddReply>, Status> {
        let req = request.into_inner();
        let (node, _) = self.groups.get(&req.group)?;
        require_leader(&node)?;
        let out = node
            .propose(CounterCommand { delta: req.delta }.encode_to_vec())
            .await
            .map_err(to_status)?;
        let result = CounterResult::decode(out.as_ref())
            .map_err(|e| Status::internal(format!("undecodable counter result: {e}")))?;
        if !result.error.is_empty() {
            return Err(to_status(RaftError::StateMachine(result.error)));
        }
        Ok(Response::new(FetchAddReply {
            previous: result.previous,
        }))
    }

    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group))]
    async fn get(
        &self,
        request: Request<CounterGetRequest>,
    ) -> Result<Response<CounterGetReply>, Status> {
        let req = request.into_inner();
        let (node, state) = self.groups.get(&req.group)?;
        require_leader(&node)?;
        let read_index = node.read_index().await.map_err(to_status)?;
        Ok(Response::new(CounterGetReply {
            value: state.get(),
            read_index,
        }))
    }
}
