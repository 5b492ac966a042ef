//! The KV service's calls: put, get, delete, compare-and-swap, scan.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use tonic::Status;

use raftkit_proto::pb::kv_client::KvClient;
use raftkit_proto::pb::{CasRequest, DeleteRequest, GetRequest, PutRequest, ScanRequest};
use raftkit_proto::pb::{ClientSession, ReadConsistency};

use crate::*;

pub(crate) async fn put_call(
    conn: Conn,
    group: String,
    s: ClientSession,
    key: Bytes,
    value: Bytes,
) -> Result<Option<Bytes>, Status> {
    conn.put(PutRequest {
        group,
        key,
        value,
        session: Some(s),
    })
    .await
    .map(|r| r.previous)
}

impl ClusterClient {
    /// Sets `key` through `session`; returns the previous value.
    pub async fn put_in(
        &self,
        session: &Session,
        key: Bytes,
        value: Bytes,
    ) -> Result<Option<Bytes>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.write_in(session, deadline, |conn, group, s| {
            put_call(conn, group, s, key.clone(), value.clone())
        })
        .await
    }

    /// Sets `key`; returns the previous value.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, ClientError> {
        self.write_own(|conn, group, s| put_call(conn, group, s, key.clone(), value.clone()))
            .await
    }

    /// The value of `key` (linearizable).
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// The value of `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: Bytes,
        consistency: ReadConsistency,
    ) -> Result<Option<Bytes>, ClientError> {
        self.read(consistency, |conn, group| {
            let key = key.clone();
            async move {
                conn.get(GetRequest {
                    group,
                    key,
                    consistency: consistency as i32,
                })
                .await
                .map(|r| r.value)
            }
        })
        .await
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ClientError> {
        self.write_own(|conn, group, s| {
            let key = key.clone();
            async move {
                conn.delete(DeleteRequest {
                    group,
                    key,
                    session: Some(s),
                })
                .await
                .map(|r| r.deleted)
            }
        })
        .await
    }

    /// Sets `key` to `value` if its current value is `expected` (`None`:
    /// absent). Returns whether it swapped, and the current value if not.
    pub async fn cas(
        &self,
        key: Bytes,
        expected: Option<Bytes>,
        value: Bytes,
    ) -> Result<(bool, Option<Bytes>), ClientError> {
        self.write_own(|conn, group, s| {
            let (key, expected, value) = (key.clone(), expected.clone(), value.clone());
            async move {
                conn.cas(CasRequest {
                    group,
                    key,
                    expected,
                    value,
                    session: Some(s),
                })
                .await
                .map(|r| (r.swapped, r.current))
            }
        })
        .await
    }

    /// Keys starting with `prefix` (at most `limit`, 0 for the server's
    /// default), and whether more matched.
    pub async fn scan(
        &self,
        prefix: Bytes,
        limit: u32,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ClientError> {
        self.read(ReadConsistency::Linearizable, |conn, group| {
            let prefix = prefix.clone();
            async move {
                KvClient::new(conn.channel())
                    .scan(ScanRequest {
                        group,
                        prefix,
                        limit,
                        consistency: ReadConsistency::Linearizable as i32,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        (
                            r.items.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                            r.more,
                        )
                    })
            }
        })
        .await
    }

    /// A read: linearizable ones go to the leader; follower and stale ones
    /// to the members in turn.
    pub(crate) async fn read<T, F, Fut>(
        &self,
        consistency: ReadConsistency,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        match consistency {
            ReadConsistency::Linearizable => self.call(Retry::Idempotent, call).await,
            _ => self.call_any(call).await,
        }
    }
}
