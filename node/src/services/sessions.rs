//! Client sessions (Raft thesis §6.3): each write carries (client id,
//! sequence number, lowest unanswered sequence number); the state machine
//! remembers the answers the client may still ask for again, so a retried
//! write is applied once and answered with its first result.
//!
//! A session may have many writes in flight, and they may be applied in any
//! order (a retry of write 5 can reach the log after write 6). So the table
//! keeps, per session, the answer to every applied write at or above the
//! session's *floor*: the highest "lowest unanswered" any of its writes
//! carried. Below the floor the client has its answers (or gave up on the
//! write, whose outcome it then reports as unknown), so a write below it is
//! refused as stale and never applied. At most [`MAX_IN_FLIGHT`] sequence
//! numbers separate a write from the floor, which bounds the answers kept
//! per session. An answer can be large (a put's previous value), and the
//! floor moves only with the session's next write: a session that sent a
//! burst of big writes and went quiet keeps their answers until it writes
//! again or expires.
//!
//! Everything here must be deterministic, because every replica runs it: time
//! is the leader-stamped `proposed_at_ms` of the entries, never a local clock,
//! and the sweep schedule travels in snapshots with the table. A session idle
//! for longer than the timeout is expired (and later swept away); a write
//! from an expired or unknown session is refused (the state machine can no
//! longer tell whether it was applied), unless it is the session's first
//! write (sequence 1): that is how a session starts. So the client sends a
//! new session's first write alone, and its others once that one finished.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::pb::{ClientSession, CommandMeta};

/// How far a write's sequence number may be above its session's lowest
/// unanswered one: the most answers a session keeps. The client library
/// waits rather than go further.
pub const MAX_IN_FLIGHT: u64 = raftkit_proto::limits::MAX_IN_FLIGHT;

/// What to do with a write that carries a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// New: apply it, then [`Sessions::record`] the result.
    Apply,
    /// Already applied: answer with this result again.
    Replay(Bytes),
    /// Below the session's floor: the client already has its answer (or
    /// gave up on it).
    Stale { floor: u64 },
    /// Further above the session's floor than [`MAX_IN_FLIGHT`].
    TooFar { floor: u64 },
    /// The session is unknown (expired, or never started).
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Every write below this was answered or given up on by the client.
    floor: u64,
    /// Answers of the applied writes at or above `floor`.
    results: BTreeMap<u64, Bytes>,
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

/// Marks the second encoding of the table. The first began with the idle
/// time, which is never `u64::MAX` (the node refuses an idle time above
/// [`MAX_IDLE_MS`]).
const V2_MARK: u64 = u64::MAX;

/// The longest idle time a session may be given: 100 years.
pub const MAX_IDLE_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(DEFAULT_IDLE_MS)
    }
}

/// The lowest unanswered sequence number a write really stands for: writes
/// from before it was carried (0) had one write in flight, so everything
/// below them was answered; and a write is itself unanswered.
fn lowest_of(seq: u64, lowest_unanswered: u64) -> u64 {
    if lowest_unanswered == 0 {
        seq
    } else {
        lowest_unanswered.min(seq)
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

    /// Answers kept over all sessions.
    pub fn answers(&self) -> usize {
        self.map.values().map(|e| e.results.len()).sum()
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

    /// Decides about write `seq` of `client`, which carried
    /// `lowest_unanswered` (0 when absent) and was stamped `entry_ms` by
    /// the leader.
    pub fn check(
        &mut self,
        client: u64,
        seq: u64,
        lowest_unanswered: u64,
        entry_ms: u64,
    ) -> SessionCheck {
        self.tick(entry_ms);
        let lowest = lowest_of(seq, lowest_unanswered);
        let cutoff = self.now_ms.saturating_sub(self.idle_ms);
        let floor = match self.map.get(&client) {
            // Idle too long, though not swept yet: expired all the same.
            Some(e) if e.last_ms < cutoff => return SessionCheck::Expired,
            Some(e) => {
                if let Some(r) = e.results.get(&seq) {
                    return SessionCheck::Replay(r.clone());
                }
                if seq < e.floor {
                    return SessionCheck::Stale { floor: e.floor };
                }
                e.floor.max(lowest)
            }
            None if seq == 1 => 1,
            None => return SessionCheck::Expired,
        };
        if seq - floor >= MAX_IN_FLIGHT {
            return SessionCheck::TooFar { floor };
        }
        SessionCheck::Apply
    }

    /// Remembers the result of write `seq` of `client` (which carried
    /// `lowest_unanswered`), and forgets the answers below the new floor.
    pub fn record(&mut self, client: u64, seq: u64, lowest_unanswered: u64, result: Bytes) {
        let last_ms = self.now_ms;
        let lowest = lowest_of(seq, lowest_unanswered);
        let e = self.map.entry(client).or_insert_with(|| Entry {
            floor: 1,
            results: BTreeMap::new(),
            last_ms,
        });
        e.last_ms = last_ms;
        if lowest > e.floor {
            e.floor = lowest;
            e.results = e.results.split_off(&lowest);
        }
        e.results.insert(seq, result);
    }

    /// Runs a write at most once per (client, sequence): `apply` for a new
    /// write (its result is remembered), the remembered result for a retry,
    /// `reject(kind, message)` for a stale, expired or too distant one.
    /// Writes without a session just run.
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
        match self.check(s.client_id, s.seq, s.lowest_unanswered, m.proposed_at_ms) {
            SessionCheck::Apply => {
                let r = apply();
                self.record(s.client_id, s.seq, s.lowest_unanswered, r.clone());
                r
            }
            SessionCheck::Replay(r) => r,
            SessionCheck::Stale { floor } => reject(
                "stale_request",
                format!(
                    "write {} of session {:016x} is below the session's lowest unanswered write {floor}: the client already had its answer or gave up on it",
                    s.seq, s.client_id
                ),
            ),
            SessionCheck::TooFar { floor } => reject(
                "invalid",
                format!(
                    "write {} of session {:016x} is {} writes past the session's lowest unanswered write {floor}; at most {MAX_IN_FLIGHT} may be in flight",
                    s.seq,
                    s.client_id,
                    s.seq - floor
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
        let mut out = Vec::with_capacity(40 + self.map.len() * 48);
        let head = [
            V2_MARK,
            2,
            self.idle_ms,
            self.now_ms,
            self.next_sweep_ms,
            self.map.len() as u64,
        ];
        for v in head {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut ids: Vec<&u64> = self.map.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.map[id];
            for v in [*id, e.floor, e.last_ms, e.results.len() as u64] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for (seq, r) in &e.results {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
        out
    }

    /// Reads a table written by [`Sessions::encode`], or by the first
    /// encoding (one answer per session).
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let mut r = Reader { data, p: 0 };
        let first = r.u64()?;
        let v2 = first == V2_MARK;
        let idle_ms = if v2 {
            let version = r.u64()?;
            if version != 2 {
                return Err(format!(
                    "session table has encoding version {version}; this build reads 1 and 2"
                ));
            }
            r.u64()?
        } else {
            first
        };
        let now_ms = r.u64()?;
        // The first encoding did not keep the sweep schedule: sweep at the
        // next entry (replicas that load a v1 table all do the same).
        let next_sweep_ms = if v2 { r.u64()? } else { 0 };
        let n = r.u64()?;
        let mut map = HashMap::new();
        for _ in 0..n {
            let id = r.u64()?;
            let e = if v2 {
                let floor = r.u64()?;
                let last_ms = r.u64()?;
                let count = r.u64()?;
                let mut results = BTreeMap::new();
                for _ in 0..count {
                    let seq = r.u64()?;
                    results.insert(seq, r.bytes()?);
                }
                Entry {
                    floor,
                    results,
                    last_ms,
                }
            } else {
                // One write in flight: everything below the last was answered.
                let seq = r.u64()?;
                let last_ms = r.u64()?;
                Entry {
                    floor: seq,
                    results: BTreeMap::from([(seq, r.bytes()?)]),
                    last_ms,
                }
            };
            map.insert(id, e);
        }
        if r.p != data.len() {
            return Err("session table has trailing bytes".into());
        }
        Ok(Sessions {
            idle_ms,
            map,
            now_ms,
            next_sweep_ms,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.p.checked_add(n).ok_or("session table is truncated")?;
        let b = self
            .data
            .get(self.p..end)
            .ok_or("session table is truncated")?;
        self.p = end;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad length")?))
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
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

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn retries_replay_and_old_writes_are_stale() {
        let mut s = Sessions::new(1000);
        assert_eq!(s.check(7, 1, 1, 10), SessionCheck::Apply);
        s.record(7, 1, 1, b("one"));
        assert_eq!(s.check(7, 1, 1, 20), SessionCheck::Replay(b("one")));
        assert_eq!(s.check(7, 2, 2, 30), SessionCheck::Apply);
        s.record(7, 2, 2, b("two"));
        assert_eq!(
            s.check(7, 1, 1, 40),
            SessionCheck::Stale { floor: 2 },
            "write 2 said write 1 was answered"
        );
        assert_eq!(
            s.check(8, 5, 5, 40),
            SessionCheck::Expired,
            "an unknown session cannot start after answers"
        );
    }

    #[test]
    fn writes_in_flight_together_apply_once_in_any_order() {
        let mut s = Sessions::new(1000);
        assert_eq!(
            s.check(9, 3, 1, 10),
            SessionCheck::Expired,
            "a session starts with write 1"
        );
        assert_eq!(s.check(9, 1, 1, 10), SessionCheck::Apply);
        s.record(9, 1, 1, b("one"));
        // Write 1 answered, writes 2 and 3 sent together; 3 reaches the log
        // first, 2 after a retry.
        assert_eq!(s.check(9, 3, 2, 10), SessionCheck::Apply);
        s.record(9, 3, 2, b("three"));
        assert_eq!(s.check(9, 1, 1, 11), SessionCheck::Stale { floor: 2 });
        assert_eq!(s.check(9, 3, 1, 12), SessionCheck::Replay(b("three")));
        assert_eq!(s.check(9, 2, 2, 13), SessionCheck::Apply);
        s.record(9, 2, 2, b("two"));
        assert_eq!(s.answers(), 2);
        // Write 5 says 1-3 were answered and 4 is still out: the answers
        // below 4 are dropped, 4 can still be applied (and only once).
        assert_eq!(s.check(9, 5, 4, 14), SessionCheck::Apply);
        s.record(9, 5, 4, b("five"));
        assert_eq!(s.answers(), 1);
        assert_eq!(s.check(9, 2, 1, 15), SessionCheck::Stale { floor: 4 });
        assert_eq!(s.check(9, 4, 4, 16), SessionCheck::Apply);
        s.record(9, 4, 4, b("four"));
        assert_eq!(s.check(9, 4, 4, 17), SessionCheck::Replay(b("four")));
        assert_eq!(s.check(9, 5, 4, 18), SessionCheck::Replay(b("five")));
        // An older write carrying an older floor does not move it back.
        s.record(9, 6, 1, b("six"));
        assert_eq!(s.check(9, 3, 1, 19), SessionCheck::Stale { floor: 4 });
    }

    #[test]
    fn a_session_keeps_at_most_max_in_flight_answers() {
        let mut s = Sessions::new(1000);
        for seq in 1..=MAX_IN_FLIGHT {
            assert_eq!(s.check(1, seq, 1, 0), SessionCheck::Apply);
            s.record(1, seq, 1, Bytes::new());
        }
        assert_eq!(
            s.check(1, MAX_IN_FLIGHT + 1, 1, 0),
            SessionCheck::TooFar { floor: 1 }
        );
        assert_eq!(s.check(1, MAX_IN_FLIGHT + 1, 2, 0), SessionCheck::Apply);
        s.record(1, MAX_IN_FLIGHT + 1, 2, Bytes::new());
        assert_eq!(s.answers() as u64, MAX_IN_FLIGHT);
    }

    #[test]
    fn writes_without_lowest_unanswered_are_one_at_a_time() {
        // Clients from before the field: 0 means everything below was answered.
        let mut s = Sessions::new(1000);
        assert_eq!(s.check(7, 1, 0, 10), SessionCheck::Apply);
        s.record(7, 1, 0, b("one"));
        assert_eq!(s.check(7, 2, 0, 20), SessionCheck::Apply);
        s.record(7, 2, 0, b("two"));
        assert_eq!(s.check(7, 2, 0, 30), SessionCheck::Replay(b("two")));
        assert_eq!(s.check(7, 1, 0, 30), SessionCheck::Stale { floor: 2 });
        assert_eq!(s.answers(), 1);
        assert_eq!(s.check(8, 3, 0, 30), SessionCheck::Expired);
    }

    #[test]
    fn idle_sessions_expire_by_entry_time_only() {
        let mut s = Sessions::new(1000);
        s.check(1, 1, 1, 0);
        s.record(1, 1, 1, Bytes::new());
        // Entries stamped earlier than the newest seen do not move time back.
        assert_eq!(s.check(1, 2, 2, 500), SessionCheck::Apply);
        s.record(1, 2, 2, Bytes::new());
        assert_eq!(s.check(2, 1, 1, 100), SessionCheck::Apply);
        assert_eq!(
            s.check(1, 3, 3, 1400),
            SessionCheck::Apply,
            "active 900 ms ago: still alive"
        );
        assert_eq!(
            s.check(1, 3, 3, 2600),
            SessionCheck::Expired,
            "idle for 2.1 s: forgotten"
        );
    }

    #[test]
    fn expiry_does_not_depend_on_when_the_table_was_swept() {
        // Replica a sweeps at 0 and then not before 1000; replica b is
        // loaded from a snapshot of a taken at 500, and must sweep when a
        // does. Session 1 (last active at 500) is idle from 1001.
        let mut a = Sessions::new(500);
        a.check(1, 1, 1, 0);
        a.record(1, 1, 1, Bytes::new());
        a.check(2, 1, 1, 500);
        a.record(2, 1, 1, Bytes::new());
        a.check(1, 2, 2, 500);
        a.record(1, 2, 2, Bytes::new());
        let mut b = Sessions::decode(&a.encode()).unwrap();
        assert_eq!(b, a, "the sweep schedule travels with the table");
        for s in [&mut a, &mut b] {
            assert_eq!(s.check(2, 2, 2, 900), SessionCheck::Apply);
            s.record(2, 2, 2, Bytes::new());
            assert_eq!(s.check(1, 3, 3, 1001), SessionCheck::Expired);
        }
        assert_eq!(a.encode(), b.encode());
        // Even a table whose sweep is late refuses an idle session.
        let mut late = Sessions::new(500);
        late.check(7, 1, 1, 0);
        late.record(7, 1, 1, Bytes::new());
        late.next_sweep_ms = u64::MAX;
        assert_eq!(late.check(7, 2, 2, 501), SessionCheck::Expired);
    }

    #[test]
    fn encode_round_trips() {
        let mut s = Sessions::new(5000);
        for c in 0..50u64 {
            for seq in 1..=(c % 4) + 1 {
                s.check(c, seq, 1, c * 10);
                s.record(c, seq, 1, Bytes::from(vec![c as u8; (c % 5) as usize]));
            }
        }
        let back = Sessions::decode(&s.encode()).unwrap();
        assert_eq!(back.map, s.map);
        assert_eq!(back.now_ms, s.now_ms);
        assert_eq!(back.idle_ms, 5000);
        for cut in [30, s.encode().len() - 1] {
            assert!(Sessions::decode(&s.encode()[..cut]).is_err());
        }
        let mut other_version = s.encode();
        other_version[8] = 3;
        let e = Sessions::decode(&other_version).unwrap_err();
        assert!(e.contains("version 3"), "{e}");
    }

    #[test]
    fn tables_in_the_first_encoding_still_load() {
        // idle 5000, now 40, one session 7 (last active at 30) whose write 2
        // answered "two".
        let mut v1 = Vec::new();
        for v in [5000u64, 40, 1, 7, 2, 30] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        v1.extend_from_slice(&3u32.to_le_bytes());
        v1.extend_from_slice(b"two");
        let mut s = Sessions::decode(&v1).unwrap();
        assert_eq!((s.idle_ms, s.now_ms, s.len()), (5000, 40, 1));
        assert_eq!(s.check(7, 2, 2, 50), SessionCheck::Replay(b("two")));
        assert_eq!(s.check(7, 1, 1, 50), SessionCheck::Stale { floor: 2 });
        assert_eq!(s.check(7, 3, 3, 50), SessionCheck::Apply);
    }
}
