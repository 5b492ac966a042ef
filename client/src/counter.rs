//! The Counter service's calls (braft's example): fetch-add through a
//! session, reads in every consistency.

use std::time::Instant;

use tonic::Status;

use raftkit_proto::pb::{ClientSession, ReadConsistency};
use raftkit_proto::pb::{CounterGetRequest, FetchAddRequest};

use crate::*;

pub(crate) async fn fetch_add_call(
    conn: Conn,
    group: String,
    s: ClientSession,
    delta: i64,
) -> Result<i64, Status> {
    conn.fetch_add(FetchAddRequest {
        group,
        delta,
        session: Some(s),
    })
    .await
    .map(|r| r.previous)
}

impl ClusterClient {
    /// Adds `delta` to the counter through `session`; returns the value before.
    pub async fn fetch_add_in(&self, session: &Session, delta: i64) -> Result<i64, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.write_in(session, deadline, |conn, group, s| {
            fetch_add_call(conn, group, s, delta)
        })
        .await
    }

    /// Adds `delta` to the counter (through this client's own session);
    /// returns the value before.
    pub async fn fetch_add(&self, delta: i64) -> Result<i64, ClientError> {
        self.write_own(|conn, group, s| fetch_add_call(conn, group, s, delta))
            .await
    }

    /// The counter's value (linearizable).
    pub async fn counter_get(&self) -> Result<i64, ClientError> {
        self.counter_get_with(ReadConsistency::Linearizable).await
    }

    /// The counter's value with the given consistency (follower and stale
    /// reads are answered by whichever member is asked).
    pub async fn counter_get_with(&self, consistency: ReadConsistency) -> Result<i64, ClientError> {
        self.read(consistency, |conn, group| async move {
            conn.counter_get(CounterGetRequest {
                group,
                consistency: consistency as i32,
            })
            .await
            .map(|r| r.value)
        })
        .await
    }
}
