//! Client sessions (Raft thesis §6.3): each write carries (client id,
//! sequence number); the state machine remembers the answer to each
//! client's latest write, so a retried write is applied once and answered
//! with its first result.
//!
//! Everything here must be deterministic, because every replica runs it: time
//! is the leader-stamped `proposed_at_ms` of the entries, never a local clock.
//! A session idle for longer than the timeout is forgotten; a write from a
//! forgotten session (other than its first) is refused as expired, because
//! the state machine can no longer tell whether it was applied.

use std::collections::HashMap;

use bytes::Bytes;

use crate::pb::{ClientSession, CommandMeta};

/// What to do with a write that carries a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// New: apply it, then [`Sessions::record`] the result.
    Apply,
    /// Already applied: answer with this result again.
    Replay(Bytes),
    /// Older than the session's latest write: the client moved on.
    Stale { latest: u64 },
    /// The session is unknown (expired, or never opened with sequence 1).
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    seq: u64,
    result: Bytes,
    last_ms: u64,
}

/// The sessions of one state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    idle_ms: u64,
    map: HashMap<u64, Entry>,
    /// Latest entry time seen (time never goes backwards).
    now_ms: u64,
    next_sweep_ms: u64,
}

/// Default idle time after which a session is forgotten: 10 minutes.
pub const DEFAULT_IDLE_MS: u64 = 10 * 60 * 1000;

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(DEFAULT_IDLE_MS)
    }
}

impl Sessions {
    pub fn new(idle_ms: u64) -> Self {
        Sessions {
            idle_ms,
            map: HashMap::new(),
            now_ms: 0,
            next_sweep_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Advances time to an entry's stamp and forgets idle sessions (at most
    /// one sweep per second of entry time).
    fn tick(&mut self, entry_ms: u64) {
        self.now_ms = self.now_ms.max(entry_ms);
        if self.now_ms >= self.next_sweep_ms {
            let cutoff = self.now_ms.saturating_sub(self.idle_ms);
            self.map.retain(|_, e| e.last_ms >= cutoff);
            self.next_sweep_ms = self.now_ms + 1000;
        }
    }

    /// Decides about write `seq` of `client`, stamped `entry_ms` by the leader.
    pub fn check(&mut self, client: u64, seq: u64, entry_ms: u64) -> SessionCheck {
        self.tick(entry_ms);
        match self.map.get(&client) {
            Some(e) if seq == e.seq => SessionCheck::Replay(e.result.clone()),
            Some(e) if seq < e.seq => SessionCheck::Stale { latest: e.seq },
            Some(_) => SessionCheck::Apply,
            None if seq == 1 => SessionCheck::Apply,
            None => SessionCheck::Expired,
        }
    }

    /// Remembers the result of write `seq` of `client`.
    pub fn record(&mut self, client: u64, seq: u64, result: Bytes) {
        let last_ms = self.now_ms;
        self.map.insert(
            client,
            Entry {
                seq,
                result,
                last_ms,
            },
        );
    }

    /// Runs a write at most once per (client, sequence): `apply` for a new
    /// write (its result is remembered), the remembered result for a retry,
    /// `reject(kind, message)` for a stale or expired one. Writes without a
    /// session just run.
    pub fn run(
        &mut self,
        meta: Option<&CommandMeta>,
        apply: impl FnOnce() -> Bytes,
        reject: impl FnOnce(&'static str, String) -> Bytes,
    ) -> Bytes {
        let Some(m) = meta else {
            return apply();
        };
        if m.session_idle_ms > 0 {
            self.idle_ms = m.session_idle_ms;
        }
        let Some(s) = &m.session else {
            self.tick(m.proposed_at_ms);
            return apply();
        };
        match self.check(s.client_id, s.seq, m.proposed_at_ms) {
            SessionCheck::Apply => {
                let r = apply();
                self.record(s.client_id, s.seq, r.clone());
                r
            }
            SessionCheck::Replay(r) => r,
            SessionCheck::Stale { latest } => reject(
                "stale_request",
                format!(
                    "write {} of session {:016x} is older than its latest write {latest}",
                    s.seq, s.client_id
                ),
            ),
            SessionCheck::Expired => reject(
                "session_expired",
                format!(
                    "session {:016x} is unknown or expired (write {}); start a new session",
                    s.client_id, s.seq
                ),
            ),
        }
    }

    /// Serializes the table for a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.map.len() * 32);
        out.extend_from_slice(&self.idle_ms.to_le_bytes());
        out.extend_from_slice(&self.now_ms.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        let mut ids: Vec<&u64> = self.map.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.map[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.last_ms.to_le_bytes());
            out.extend_from_slice(&(e.result.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.result);
        }
        out
    }

    /// Reads a table written by [`Sessions::encode`].
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let mut p = 0usize;
        let u64_at = |p: &mut usize| -> Result<u64, String> {
            let b = data.get(*p..*p + 8).ok_or("session table is truncated")?;
            *p += 8;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad length")?))
        };
        let idle_ms = u64_at(&mut p)?;
        let now_ms = u64_at(&mut p)?;
        let n = u64_at(&mut p)?;
        let mut map = HashMap::new();
        for _ in 0..n {
            let id = u64_at(&mut p)?;
            let seq = u64_at(&mut p)?;
            let last_ms = u64_at(&mut p)?;
            let len = data.get(p..p + 4).ok_or("session table is truncated")?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
            p += 4;
            let result =
                Bytes::copy_from_slice(data.get(p..p + len).ok_or("session table is truncated")?);
            p += len;
            map.insert(
                id,
                Entry {
                    seq,
                    result,
                    last_ms,
                },
            );
        }
        if p != data.len() {
            return Err("session table has trailing bytes".into());
        }
        Ok(Sessions {
            idle_ms,
            map,
            now_ms,
            next_sweep_ms: 0,
        })
    }
}

/// The metadata the leader stamps on a command.
pub fn command_meta(session: Option<ClientSession>, session_idle_ms: u64) -> CommandMeta {
    CommandMeta {
        session,
        proposed_at_ms: crate::storage::snapshot::now_unix_ms(),
        session_idle_ms,
    }
}

/// The engine error for a state machine's rejection of `kind`.
pub fn rejection(kind: &str, message: String) -> crate::error::RaftError {
    use crate::error::RaftError;
    match kind {
        "session_expired" => RaftError::SessionExpired(message),
        "stale_request" | "invalid" => RaftError::InvalidArgument(message),
        _ => RaftError::StateMachine(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_replay_and_old_writes_are_stale() {
        let mut s = Sessions::new(1000);
        assert_eq!(s.check(7, 1, 10), SessionCheck::Apply);
        s.record(7, 1, Bytes::from_static(b"one"));
        assert_eq!(
            s.check(7, 1, 20),
            SessionCheck::Replay(Bytes::from_static(b"one"))
        );
        assert_eq!(s.check(7, 2, 30), SessionCheck::Apply);
        s.record(7, 2, Bytes::from_static(b"two"));
        assert_eq!(s.check(7, 1, 40), SessionCheck::Stale { latest: 2 });
        assert_eq!(
            s.check(8, 5, 40),
            SessionCheck::Expired,
            "an unknown session cannot start at 5"
        );
    }

    #[test]
    fn idle_sessions_expire_by_entry_time_only() {
        let mut s = Sessions::new(1000);
        s.check(1, 1, 0);
        s.record(1, 1, Bytes::new());
        // Entries stamped earlier than the newest seen do not move time back.
        assert_eq!(s.check(1, 2, 500), SessionCheck::Apply);
        s.record(1, 2, Bytes::new());
        assert_eq!(s.check(2, 1, 100), SessionCheck::Apply);
        assert_eq!(
            s.check(1, 3, 1400),
            SessionCheck::Apply,
            "active 900 ms ago: still alive"
        );
        assert_eq!(
            s.check(1, 3, 2600),
            SessionCheck::Expired,
            "idle for 2.1 s: forgotten"
        );
    }

    #[test]
    fn encode_round_trips() {
        let mut s = Sessions::new(5000);
        for c in 0..50u64 {
            s.check(c, 1, c * 10);
            s.record(c, 1, Bytes::from(vec![c as u8; (c % 5) as usize]));
        }
        let back = Sessions::decode(&s.encode()).unwrap();
        assert_eq!(back.map, s.map);
        assert_eq!(back.now_ms, s.now_ms);
        assert!(Sessions::decode(&s.encode()[..30]).is_err());
    }
}
