//! [`NodeOptions`]: everything that configures one replica, each field with
//! its default, validated before the node starts.

use crate::error::RaftError;
use crate::storage::StorageOptions;

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ReadMode {
    /// ReadIndex: the leader confirms with a quorum heartbeat round per read
    /// batch. Safe whatever the clocks do. Default.
    #[default]
    ReadIndex,
    /// Lease: the leader answers from a lease without a round trip. A lease
    /// starts when a ReadIndex round is issued and ends before any member
    /// that confirmed the round could vote for another leader (check-quorum);
    /// it assumes the members' clocks run at rates within 10% and the same
    /// election timeout on every member.
    Lease,
}

impl ReadMode {
    /// The name the `--read-mode` flag takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read-index",
            ReadMode::Lease => "lease",
        }
    }
}

impl std::str::FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readIndex" | "read-index" | "read_index" => Ok(ReadMode::ReadIndex),
            "lease" => Ok(ReadMode::Lease),
            other => Err(format!(
                "unknown read mode {other:?}; expected read-index or lease"
            )),
        }
    }
}

/// Ticks per election timeout: the raft clock ticks every
/// `election_timeout_ms / ELECTION_TICKS` ms.
pub const ELECTION_TICKS: usize = 10;

/// Options of one replica (braft's `NodeOptions`).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Raft group name. Required.
    pub group: String,
    /// The `host:port` other members use to reach this replica. Required.
    pub addr: String,
    /// Addresses of the group's first members. Used only when this replica
    /// has no data yet (as in braft); ignored afterwards. Empty: the replica
    /// waits to be added to an existing group. Default empty.
    pub initial_conf: Vec<String>,
    /// Election timeout (ms). Followers start an election after this long
    /// without a leader (randomized up to twice). Default 1000.
    pub election_timeout_ms: u64,
    /// Heartbeats per election timeout. Default 10.
    pub heartbeat_factor: u64,
    /// Take a snapshot every this many seconds (0: never). Default 3600.
    pub snapshot_interval_s: u64,
    /// Also take a snapshot once this many entries were applied since the
    /// last one (0: never). Default 100000.
    pub snapshot_log_gap: u64,
    /// Entries kept before the snapshot index when the log is compacted, so
    /// a slightly lagging follower catches up from the log. Default 1000.
    pub snapshot_margin: u64,
    /// Bytes per chunk when sending a snapshot to a follower. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Bytes per second a leader spends on snapshot transfers, all
    /// followers together (0: unlimited). Default 0.
    pub snapshot_throttle_bytes_per_sec: u64,
    /// Snapshot transfers a leader runs at once. Default 2.
    pub max_snapshot_installs: usize,
    /// The highest cluster format this replica claims and applies
    /// (`cluster_format`); a format entry above it stops applying. Default
    /// the newest this build supports.
    pub max_cluster_format: u32,
    /// A new member is promoted to voter (and a transfer target accepted)
    /// once it is within this many entries of the leader's log. Default 1000.
    pub catchup_margin: u64,
    /// Log storage URI. Default `local://<data_dir>/<group>/log` (set by the server).
    pub log_uri: String,
    /// Raft meta URI. Default `local://<data_dir>/<group>/meta`.
    pub raft_meta_uri: String,
    /// Snapshot URI. Default `local://<data_dir>/<group>/snapshot`.
    pub snapshot_uri: String,
    /// fsync policy and segment size for the storages. Default: sync on, 8 MiB.
    pub storage: StorageOptions,
    /// Largest append message to a follower, in bytes (a larger entry
    /// still goes alone). Default 128 KiB: with 256 messages in flight that
    /// is a 32 MiB window, what a raft stream queues for a peer
    /// (`transport::stream`); a larger window only builds messages that
    /// the link has to refuse while a follower catches up.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Uncommitted bytes the leader accepts before rejecting proposals as
    /// busy. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Largest batch of committed entries handed to the apply thread at
    /// once, in bytes. Default 16 MiB.
    pub max_apply_batch_bytes: u64,
    /// How linearizable reads are confirmed. Default ReadIndex.
    pub read_mode: ReadMode,
    /// How long a read waits for confirmation before failing with a
    /// timeout (ms). Default 5000.
    pub read_timeout_ms: u64,
}

impl NodeOptions {
    /// Options with every default; storage URIs are `memory://`, fresh.
    pub fn new(group: impl Into<String>, addr: impl Into<String>) -> Self {
        NodeOptions {
            group: group.into(),
            addr: addr.into(),
            initial_conf: Vec::new(),
            election_timeout_ms: 1000,
            heartbeat_factor: 10,
            snapshot_interval_s: 3600,
            snapshot_log_gap: 100_000,
            snapshot_margin: 1000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_throttle_bytes_per_sec: 0,
            max_snapshot_installs: 2,
            max_cluster_format: crate::cluster_format::NEWEST,
            catchup_margin: 1000,
            log_uri: "memory://".into(),
            raft_meta_uri: "memory://".into(),
            snapshot_uri: "memory://".into(),
            storage: StorageOptions::default(),
            max_size_per_msg: 128 << 10,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            max_apply_batch_bytes: 16 << 20,
            read_mode: ReadMode::ReadIndex,
            read_timeout_ms: 5000,
        }
    }

    /// Raft clock period.
    pub fn tick_ms(&self) -> u64 {
        (self.election_timeout_ms / ELECTION_TICKS as u64).max(1)
    }

    /// Checks every field; the error names the field and what is wrong.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: String| Err(RaftError::InvalidArgument(m));
        validate_group_name(&self.group)?;
        validate_addr(&self.addr)
            .map_err(|e| RaftError::InvalidArgument(format!("address: {e}")))?;
        for a in &self.initial_conf {
            validate_addr(a)
                .map_err(|e| RaftError::InvalidArgument(format!("initial conf: {e}")))?;
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.initial_conf {
            if !seen.insert(a) {
                return bad(format!("initial conf lists {a} twice"));
            }
        }
        if !self.initial_conf.is_empty() && !self.initial_conf.contains(&self.addr) {
            return bad(format!(
                "this node's address {} is not in the initial conf {}; advertise one of those addresses or leave the initial conf empty to join later",
                self.addr,
                self.initial_conf.join(",")
            ));
        }
        // The bounds of the options that are node settings come from the
        // settings table.
        for (name, value) in [
            ("election_timeout_ms", self.election_timeout_ms),
            (
                "snapshot_chunk_bytes",
                u64::try_from(self.snapshot_chunk_bytes).unwrap_or(u64::MAX),
            ),
            (
                "max_snapshot_installs",
                u64::try_from(self.max_snapshot_installs).unwrap_or(u64::MAX),
            ),
            ("max_cluster_format", u64::from(self.max_cluster_format)),
            ("catchup_margin", self.catchup_margin),
        ] {
            raftkit_proto::settings::validate(name, &value.to_string())
                .map_err(RaftError::InvalidArgument)?;
        }
        if !(2..=ELECTION_TICKS as u64).contains(&self.heartbeat_factor) {
            return bad(format!(
                "heartbeat factor {} is outside 2..={ELECTION_TICKS}",
                self.heartbeat_factor
            ));
        }
        if self.max_size_per_msg == 0 {
            return bad(
                "max size per message must be positive (0 would send one entry per message)".into(),
            );
        }
        if self.max_inflight_msgs == 0 {
            return bad("max inflight messages must be positive".into());
        }
        if self.read_timeout_ms == 0 {
            return bad("read timeout must be positive".into());
        }
        if self.storage.max_segment_bytes < 4096 {
            return bad(format!(
                "segment size {} is below 4096 bytes",
                self.storage.max_segment_bytes
            ));
        }
        for (name, uri) in [
            ("log", &self.log_uri),
            ("raft meta", &self.raft_meta_uri),
            ("snapshot", &self.snapshot_uri),
        ] {
            crate::storage::validate_uri(uri)
                .map_err(|e| RaftError::InvalidArgument(format!("{name} uri: {e}")))?;
        }
        Ok(())
    }
}

/// The options that can change while a node runs (`/flags`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LiveOptions {
    pub election_timeout_ms: u64,
    pub snapshot_interval_s: u64,
    pub snapshot_log_gap: u64,
    pub snapshot_margin: u64,
    pub snapshot_throttle_bytes_per_sec: u64,
    pub catchup_margin: u64,
}

impl LiveOptions {
    /// Names of the live options, in display order.
    pub const NAMES: [&'static str; 6] = [
        "election_timeout_ms",
        "snapshot_interval_s",
        "snapshot_log_gap",
        "snapshot_margin",
        "snapshot_throttle_bytes_per_sec",
        "catchup_margin",
    ];

    pub fn from_options(o: &NodeOptions) -> Self {
        LiveOptions {
            election_timeout_ms: o.election_timeout_ms,
            snapshot_interval_s: o.snapshot_interval_s,
            snapshot_log_gap: o.snapshot_log_gap,
            snapshot_margin: o.snapshot_margin,
            snapshot_throttle_bytes_per_sec: o.snapshot_throttle_bytes_per_sec,
            catchup_margin: o.catchup_margin,
        }
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "election_timeout_ms" => self.election_timeout_ms,
            "snapshot_interval_s" => self.snapshot_interval_s,
            "snapshot_log_gap" => self.snapshot_log_gap,
            "snapshot_margin" => self.snapshot_margin,
            "snapshot_throttle_bytes_per_sec" => self.snapshot_throttle_bytes_per_sec,
            "catchup_margin" => self.catchup_margin,
            _ => return None,
        })
    }

    /// Sets one option from text; the error names the option and the problem.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        if !Self::NAMES.contains(&name) {
            return Err(format!("{name} cannot be changed while the node runs"));
        }
        // The bounds are the settings table's.
        raftkit_proto::settings::validate(name, value)?;
        let v: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a non-negative integer"))?;
        match name {
            "election_timeout_ms" => self.election_timeout_ms = v,
            "snapshot_interval_s" => self.snapshot_interval_s = v,
            "snapshot_log_gap" => self.snapshot_log_gap = v,
            "snapshot_margin" => self.snapshot_margin = v,
            "snapshot_throttle_bytes_per_sec" => self.snapshot_throttle_bytes_per_sec = v,
            "catchup_margin" => self.catchup_margin = v,
            other => return Err(format!("{other} cannot be changed while the node runs")),
        }
        Ok(())
    }

    pub fn apply_to(&self, o: &mut NodeOptions) {
        o.election_timeout_ms = self.election_timeout_ms;
        o.snapshot_interval_s = self.snapshot_interval_s;
        o.snapshot_log_gap = self.snapshot_log_gap;
        o.snapshot_margin = self.snapshot_margin;
        o.snapshot_throttle_bytes_per_sec = self.snapshot_throttle_bytes_per_sec;
        o.catchup_margin = self.catchup_margin;
    }
}

/// Group names become file names and metric labels: 1-64 of `[A-Za-z0-9_.-]`.
pub fn validate_group_name(group: &str) -> Result<(), RaftError> {
    let ok = !group.is_empty()
        && group.len() <= 64
        && !group.starts_with('.')
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RaftError::InvalidArgument(format!(
            "group name {group:?} is invalid: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

pub use raftkit_proto::validate_addr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let mut o = NodeOptions::new("g", "127.0.0.1:1");
        o.initial_conf = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
        o.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let o = NodeOptions::new("bad group!", "127.0.0.1:1");
        assert!(o.validate().unwrap_err().to_string().contains("group name"));
        let mut o = NodeOptions::new("g", "127.0.0.1:1");
        o.initial_conf = vec!["127.0.0.1:2".into()];
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not in the initial conf"));
        let mut o = NodeOptions::new("g", "127.0.0.1:1");
        o.max_size_per_msg = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max size per message"));
        let mut o = NodeOptions::new("g", "127.0.0.1:1");
        o.log_uri = "s3://x".into();
        assert!(o.validate().unwrap_err().to_string().contains("log uri"));
        assert!(validate_addr("nohost").is_err());
        assert!(validate_addr("h:0").is_err());
        assert!(validate_addr("raft-0.raft.ns.svc:8100").is_ok());
    }
}
