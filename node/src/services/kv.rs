//! A replicated key-value store: put, get, delete, compare-and-swap and
//! prefix scan. Writes go through the log; reads are linearizable (a read
//! barrier on the leader). Keys are 1 to [`MAX_KEY_BYTES`] bytes, values up
//! to [`MAX_VALUE_BYTES`].

use imbl::OrdMap;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::kv_key::Key;
use super::sessions::{command_meta, Sessions};
use super::{propose_then, read_barrier, require_leader, to_status, wait_for, GroupTable};
use crate::error::RaftError;
use crate::pb::kv_command::Op;
use crate::pb::kv_server::Kv;
use crate::pb::{
    CasReply, CasRequest, DeleteReply, DeleteRequest, GetReply, GetRequest, KeyValue, KvCas,
    KvCommand, KvDelete, KvPut, KvResult, PutReply, PutRequest, ScanReply, ScanRequest,
};
use crate::state_machine::{ApplyIter, Digest, SnapshotDone, StateMachine};
use crate::storage::{SnapshotReader, SnapshotWriter};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = raftkit_proto::limits::MAX_KEY_BYTES;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = raftkit_proto::limits::MAX_VALUE_BYTES;
/// Scan results returned when the request names no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
/// Largest scan limit accepted.
pub const MAX_SCAN_LIMIT: u32 = 100_000;

const SNAPSHOT_FILE: &str = "kv";
const SESSIONS_FILE: &str = "sessions";
/// Bytes of the KV snapshot file gathered before each write.
const SNAPSHOT_CHUNK: usize = 256 << 10;

/// Checks a key; the error says what is wrong with it.
pub fn check_key(key: &[u8]) -> Result<(), RaftError> {
    if key.is_empty() {
        return Err(RaftError::InvalidArgument("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RaftError::InvalidArgument(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a value; the error says what is wrong with it.
pub fn check_value(value: &[u8]) -> Result<(), RaftError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RaftError::InvalidArgument(format!(
            "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// The map, shared by the state machine and the service.
#[derive(Clone, Default, Debug)]
pub struct KvState {
    /// A persistent (structurally shared) ordered map: a snapshot takes an
    /// O(1) copy, where cloning a `BTreeMap` of 100k keys held the apply
    /// thread for 25-35 ms. Keys are [`Key`]s (short ones in place, so a
    /// search stays inside each node).
    map: Arc<RwLock<OrdMap<Key, Bytes>>>,
}

impl KvState {
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.read().get(key).cloned()
    }

    /// Up to `limit` pairs whose key starts with `prefix`, and whether more matched.
    pub fn scan(&self, prefix: &[u8], limit: usize) -> (Vec<(Bytes, Bytes)>, bool) {
        let map = self.map.read();
        let mut it = map
            .range::<_, [u8]>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.as_slice().starts_with(prefix));
        let items: Vec<(Bytes, Bytes)> = it
            .by_ref()
            .take(limit)
            .map(|(k, v)| (k.to_bytes(), v.clone()))
            .collect();
        let more = it.next().is_some();
        (items, more)
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }
}

/// The replicated KV state machine.
pub struct KvFsm {
    state: KvState,
    sessions: Sessions,
}

impl KvFsm {
    pub fn new(state: KvState) -> Self {
        KvFsm {
            state,
            sessions: Sessions::default(),
        }
    }

    /// Decodes and applies one command (at most once per client session) and
    /// returns the encoded `KvResult` the proposer receives.
    fn execute(&mut self, data: Bytes) -> Bytes {
        let cmd = match KvCommand::decode(data) {
            Ok(c) => c,
            Err(e) => {
                return Bytes::from(
                    failure("invalid", format!("undecodable kv command: {e}")).encode_to_vec(),
                )
            }
        };
        let state = &self.state;
        self.sessions.run(
            cmd.meta.as_ref(),
            || Bytes::from(execute_op(state, cmd.op).encode_to_vec()),
            |kind, error| Bytes::from(failure(kind, error).encode_to_vec()),
        )
    }
}

fn failure(kind: &str, error: String) -> KvResult {
    KvResult {
        previous: None,
        ok: false,
        error,
        error_kind: kind.to_string(),
    }
}

/// Applies one operation to the map.
fn execute_op(state: &KvState, op: Option<Op>) -> KvResult {
    let mut map = state.map.write();
    match op {
        Some(Op::Put(KvPut { key, value })) => {
            if let Err(e) = check_key(&key).and_then(|_| check_value(&value)) {
                return failure("invalid", e.to_string());
            }
            let previous = map.insert(Key::new(&key), value);
            KvResult {
                previous,
                ok: true,
                ..Default::default()
            }
        }
        Some(Op::Delete(KvDelete { key })) => {
            let previous = map.remove(&key[..]);
            KvResult {
                ok: previous.is_some(),
                previous,
                ..Default::default()
            }
        }
        Some(Op::Cas(KvCas {
            key,
            expected,
            value,
        })) => {
            if let Err(e) = check_key(&key).and_then(|_| check_value(&value)) {
                return failure("invalid", e.to_string());
            }
            let current = map.get(&key[..]).cloned();
            if current == expected {
                map.insert(Key::new(&key), value);
                KvResult {
                    previous: current,
                    ok: true,
                    ..Default::default()
                }
            } else {
                KvResult {
                    previous: current,
                    ok: false,
                    ..Default::default()
                }
            }
        }
        None => failure("invalid", "kv command without an operation".into()),
    }
}

impl StateMachine for KvFsm {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            let result = self.execute(e.data.clone());
            e.respond(Ok(result));
        }
    }

    fn on_snapshot_save(&mut self, mut writer: SnapshotWriter, done: SnapshotDone) {
        // Copying the map is O(1) (it is persistent); the file is written
        // on another thread while applying continues.
        let copy = self.state.map.read().clone();
        let sessions = self.sessions.encode();
        std::thread::spawn(move || {
            // Writing tens of megabytes competes with the write path for CPU
            // and disk; it can wait.
            crate::state_machine::lower_thread_priority();
            let result = (|| -> Result<(), String> {
                let mut f = writer
                    .create_file(SNAPSHOT_FILE)
                    .map_err(|e| e.to_string())?;
                // Whole chunks, not four small writes per pair: each write
                // is a call into the checksummed, buffered file writer.
                let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK + 1024);
                for (k, v) in &copy {
                    let k = k.as_slice();
                    chunk.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    chunk.extend_from_slice(k);
                    chunk.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    chunk.extend_from_slice(v);
                    if chunk.len() >= SNAPSHOT_CHUNK {
                        f.write_all(&chunk).map_err(|e| e.to_string())?;
                        chunk.clear();
                    }
                }
                f.write_all(&chunk).map_err(|e| e.to_string())?;
                f.finish().map_err(|e| e.to_string())?;
                writer
                    .write_file(SESSIONS_FILE, &sessions)
                    .map_err(|e| e.to_string())
            })();
            match result {
                Ok(()) => done.run(Ok(writer)),
                Err(e) => done.run(Err(e)),
            }
        });
    }

    fn state_digest(&self) -> Option<u64> {
        let mut d = Digest::default();
        for (k, v) in self.state.map.read().iter() {
            d.field(k.as_slice()).field(v);
        }
        d.field(&self.sessions.encode());
        Some(d.value())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let data = reader.read_file(SNAPSHOT_FILE).map_err(|e| e.to_string())?;
        let mut map = OrdMap::new();
        let mut p = 0usize;
        let take = |n: usize, p: &mut usize| -> Result<Bytes, String> {
            if *p + n > data.len() {
                return Err(format!("kv snapshot is truncated at byte {}", *p));
            }
            let b = Bytes::copy_from_slice(&data[*p..*p + n]);
            *p += n;
            Ok(b)
        };
        while p < data.len() {
            let kl = u32::from_le_bytes(
                take(4, &mut p)?
                    .as_ref()
                    .try_into()
                    .map_err(|_| "bad length")?,
            ) as usize;
            let k = take(kl, &mut p)?;
            let vl = u32::from_le_bytes(
                take(4, &mut p)?
                    .as_ref()
                    .try_into()
                    .map_err(|_| "bad length")?,
            ) as usize;
            let v = take(vl, &mut p)?;
            map.insert(Key::new(&k), v);
        }
        self.sessions = if reader.has_file(SESSIONS_FILE) {
            Sessions::decode(&reader.read_file(SESSIONS_FILE).map_err(|e| e.to_string())?)?
        } else {
            Sessions::default()
        };
        *self.state.map.write() = map;
        Ok(())
    }
}

/// The KV gRPC service.
pub struct KvService {
    groups: GroupTable<KvState>,
    session_idle_ms: u64,
}

impl KvService {
    /// The cluster id of `group`'s replica (0: none known yet).
    pub fn cluster_id(&self, group: &str) -> Result<u64, Status> {
        self.groups.get(group).map(|(node, _)| node.cluster_id())
    }

    pub fn new(groups: GroupTable<KvState>, session_idle_ms: u64) -> Self {
        KvService {
            groups,
            session_idle_ms,
        }
    }

    /// Proposes a write on the group's leader; `reply` gets the state
    /// machine's result from the write's done.
    fn write_then(
        &self,
        group: &str,
        op: Op,
        session: Option<crate::pb::ClientSession>,
        reply: impl FnOnce(Result<KvResult, Status>) + Send + 'static,
    ) {
        let node = match self.groups.get(group).and_then(|(node, _)| {
            require_leader(&node)?;
            Ok(node)
        }) {
            Ok(node) => node,
            Err(s) => return reply(Err(s)),
        };
        let cmd = KvCommand {
            op: Some(op),
            meta: Some(command_meta(session, self.session_idle_ms)),
        };
        propose_then(&node, cmd.encode_to_vec(), reply);
    }

    /// KV put; `reply` runs from the write's done (see [`propose_then`]).
    pub fn put_then(
        &self,
        r: PutRequest,
        reply: impl FnOnce(Result<PutReply, Status>) + Send + 'static,
    ) {
        if let Err(e) = check_key(&r.key).and_then(|_| check_value(&r.value)) {
            return reply(Err(invalid(e)));
        }
        let op = Op::Put(KvPut {
            key: r.key,
            value: r.value,
        });
        self.write_then(&r.group, op, r.session, move |out| {
            reply(out.map(|o| PutReply {
                previous: o.previous,
            }))
        });
    }

    /// KV delete; `reply` runs from the write's done.
    pub fn delete_then(
        &self,
        r: DeleteRequest,
        reply: impl FnOnce(Result<DeleteReply, Status>) + Send + 'static,
    ) {
        if let Err(e) = check_key(&r.key) {
            return reply(Err(invalid(e)));
        }
        let op = Op::Delete(KvDelete { key: r.key });
        self.write_then(&r.group, op, r.session, move |out| {
            reply(out.map(|o| DeleteReply { deleted: o.ok }))
        });
    }

    /// KV compare-and-swap; `reply` runs from the write's done.
    pub fn cas_then(
        &self,
        r: CasRequest,
        reply: impl FnOnce(Result<CasReply, Status>) + Send + 'static,
    ) {
        let checked = check_key(&r.key)
            .and_then(|_| check_value(&r.value))
            .and_then(|_| r.expected.as_deref().map_or(Ok(()), check_value));
        if let Err(e) = checked {
            return reply(Err(invalid(e)));
        }
        let op = Op::Cas(KvCas {
            key: r.key,
            expected: r.expected,
            value: r.value,
        });
        self.write_then(&r.group, op, r.session, move |out| {
            reply(out.map(|o| CasReply {
                swapped: o.ok,
                current: if o.ok { None } else { o.previous },
            }))
        });
    }

    async fn read(
        &self,
        group: &str,
        consistency: crate::pb::ReadConsistency,
    ) -> Result<KvState, Status> {
        let (node, state) = self.groups.get(group)?;
        read_barrier(&node, consistency).await?;
        Ok(state)
    }
}

fn invalid(e: RaftError) -> Status {
    to_status(e)
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        wait_for(|reply| self.put_then(request.into_inner(), reply))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let r = request.into_inner();
        check_key(&r.key).map_err(invalid)?;
        let state = self.read(&r.group, r.consistency()).await?;
        Ok(Response::new(GetReply {
            value: state.get(&r.key),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        wait_for(|reply| self.delete_then(request.into_inner(), reply))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn cas(&self, request: Request<CasRequest>) -> Result<Response<CasReply>, Status> {
        wait_for(|reply| self.cas_then(request.into_inner(), reply))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanReply>, Status> {
        let r = request.into_inner();
        if r.prefix.len() > MAX_KEY_BYTES {
            return Err(invalid(RaftError::InvalidArgument(format!(
                "prefix of {} bytes exceeds the key limit of {MAX_KEY_BYTES}",
                r.prefix.len()
            ))));
        }
        let limit = match r.limit {
            0 => DEFAULT_SCAN_LIMIT,
            n if n > MAX_SCAN_LIMIT => {
                return Err(invalid(RaftError::InvalidArgument(format!(
                    "scan limit {n} exceeds the maximum of {MAX_SCAN_LIMIT}"
                ))));
            }
            n => n,
        };
        let state = self.read(&r.group, r.consistency()).await?;
        let (items, more) = state.scan(&r.prefix, limit as usize);
        Ok(Response::new(ScanReply {
            items: items
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
            more,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(fsm: &mut KvFsm, op: Op) -> KvResult {
        let cmd = KvCommand {
            op: Some(op),
            meta: None,
        };
        KvResult::decode(fsm.execute(cmd.encode_to_vec().into())).unwrap()
    }

    #[test]
    fn commands_behave_like_a_map() {
        let mut fsm = KvFsm::new(KvState::default());
        let k = Bytes::from_static(b"k");
        let put = |v: &'static [u8]| {
            Op::Put(KvPut {
                key: k.clone(),
                value: Bytes::from_static(v),
            })
        };
        assert_eq!(apply(&mut fsm, put(b"1")).previous, None);
        assert_eq!(
            apply(&mut fsm, put(b"2")).previous,
            Some(Bytes::from_static(b"1"))
        );
        let cas = |e: Option<&'static [u8]>, v: &'static [u8]| {
            Op::Cas(KvCas {
                key: k.clone(),
                expected: e.map(Bytes::from_static),
                value: Bytes::from_static(v),
            })
        };
        let r = apply(&mut fsm, cas(Some(b"1"), b"3"));
        assert!(!r.ok);
        assert_eq!(r.previous, Some(Bytes::from_static(b"2")));
        assert!(apply(&mut fsm, cas(Some(b"2"), b"3")).ok);
        assert!(
            !apply(&mut fsm, cas(None, b"4")).ok,
            "absent-cas on an existing key fails"
        );
        assert!(apply(&mut fsm, Op::Delete(KvDelete { key: k.clone() })).ok);
        assert!(!apply(&mut fsm, Op::Delete(KvDelete { key: k.clone() })).ok);
        assert!(
            apply(&mut fsm, cas(None, b"5")).ok,
            "absent-cas on a missing key succeeds"
        );
        assert_eq!(fsm.state.get(b"k"), Some(Bytes::from_static(b"5")));
    }

    #[test]
    fn bad_commands_fail_deterministically_without_changing_state() {
        let mut fsm = KvFsm::new(KvState::default());
        let garbage = fsm.execute(Bytes::from_static(b"\xff\xff garbage"));
        let r = KvResult::decode(garbage).unwrap();
        assert_eq!(r.error_kind, "invalid");
        assert!(r.error.contains("undecodable kv command"), "{}", r.error);
        let r = apply(
            &mut fsm,
            Op::Put(KvPut {
                key: Bytes::new(),
                value: Bytes::new(),
            }),
        );
        assert!(r.error.contains("key must not be empty"));
        assert!(fsm.state.is_empty());
    }

    #[test]
    fn snapshot_round_trip_restores_the_same_map() {
        use crate::state_machine::SnapshotDone;
        use crate::storage::{self, SnapshotMeta, StorageOptions};
        let fsm_state = KvState::default();
        let mut fsm = KvFsm::new(fsm_state.clone());
        for i in 0..500u32 {
            let key = Bytes::from(format!("key/{i:04}"));
            apply(
                &mut fsm,
                Op::Put(KvPut {
                    key,
                    value: Bytes::from(vec![i as u8; (i % 7) as usize]),
                }),
            );
        }
        apply(
            &mut fsm,
            Op::Delete(KvDelete {
                key: Bytes::from_static(b"key/0007"),
            }),
        );
        let store =
            storage::open_snapshot_storage("memory://", &StorageOptions::default()).unwrap();
        let writer = store
            .begin(SnapshotMeta {
                index: 9,
                term: 1,
                ..Default::default()
            })
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        fsm.on_snapshot_save(writer, SnapshotDone::new(move |r| tx.send(r).unwrap()));
        let writer = rx.recv().unwrap().expect("save succeeds");
        storage::snapshot::publish_for_tests(writer).unwrap();
        let reader = store.latest().unwrap().unwrap();
        let restored = KvState::default();
        KvFsm::new(restored.clone())
            .on_snapshot_load(&reader)
            .unwrap();
        assert_eq!(restored.len(), 499);
        assert_eq!(*restored.map.read(), *fsm_state.map.read());
    }

    #[test]
    fn scan_respects_prefix_and_limit() {
        let s = KvState::default();
        for k in ["a1", "a2", "a3", "b1"] {
            s.map
                .write()
                .insert(Key::new(k.as_bytes()), Bytes::from_static(b"v"));
        }
        let (items, more) = s.scan(b"a", 2);
        assert_eq!(
            items.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(),
            vec![b"a1".as_ref(), b"a2"]
        );
        assert!(more);
        let (items, more) = s.scan(b"a", 10);
        assert_eq!(items.len(), 3);
        assert!(!more);
        assert_eq!(s.scan(b"", 10).0.len(), 4);
    }
}
