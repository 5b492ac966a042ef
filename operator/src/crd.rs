//! The `RaftCluster` resource (group `raftkit.io`, version `v1alpha1`): the
//! spec a user writes, the status the operator keeps, and the checks of the
//! spec that the schema alone cannot express. Types only: no client, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "raftkit.io";
/// Annotation whose change restarts every pod, one at a time (as
/// `kubectl rollout restart` does for a Deployment).
pub const RESTARTED_AT: &str = "raftkit.io/restartedAt";
/// Annotation whose change rotates the cluster's CA (when the operator
/// made it): a new CA is trusted, then signs every certificate anew, then
/// the old one is dropped; no pod restarts.
pub const CA_ROTATED_AT: &str = "raftkit.io/caRotatedAt";
/// Bounds of `spec.replicas`.
pub const MIN_REPLICAS: i32 = 1;
pub const MAX_REPLICAS: i32 = 9;
/// Bounds of `spec.raft.electionTimeoutMs` (the node itself accepts a wider
/// range; below 100 ms a Kubernetes network makes elections flap).
pub const MIN_ELECTION_TIMEOUT_MS: u32 = 100;
pub const MAX_ELECTION_TIMEOUT_MS: u32 = 60_000;

/// A replicated state machine run as a Raft group: one RaftKit node per pod.
// One `printcolumn(...)` per column is kube-derive's syntax, not a repeat.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "raftkit.io",
    version = "v1alpha1",
    kind = "RaftCluster",
    namespaced,
    shortname = "raftc",
    status = "RaftClusterStatus",
    derive = "PartialEq",
    doc = "A replicated state machine run as a Raft group, one RaftKit node per pod.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterSpec {
    /// Members of the group (1 to 9; odd numbers tolerate the most faults
    /// per member).
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// The RaftKit image (it holds `raftkit-node`) [default: raftkit:<operator version>].
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never` [default: IfNotPresent].
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// The application the group replicates; fixed once bootstrapped.
    #[serde(default)]
    pub state_machine: StateMachine,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub raft: RaftSpec,
    /// Resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The user's own pod template. With it, every pod runs the user's
    /// containers and the node beside them as a native sidecar (an init
    /// container that keeps running), reachable on localhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub template: Option<PodTemplateSpec>,
    /// Mutual TLS on the node port [default: none: plaintext].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Who may reach the node port: a NetworkPolicy the operator owns
    /// [default: enabled, from the cluster's own pods and the operator only].
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Stop acting (status stays current; deletion is not blocked).
    #[serde(default)]
    pub paused: bool,
}

fn default_image() -> String {
    format!("raftkit:{}", env!("CARGO_PKG_VERSION"))
}

/// An object whose fields the API server keeps as given (a pod template is
/// checked by the API server when the StatefulSet is created).
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// The replicated application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateMachine {
    /// A 64-bit counter (fetch-add, get).
    #[default]
    Counter,
    /// A key-value store.
    Kv,
}

impl StateMachine {
    /// The node's name for it (`--state-machine`, and the group's name).
    pub fn as_str(self) -> &'static str {
        match self {
            StateMachine::Counter => "counter",
            StateMachine::Kv => "kv",
        }
    }
}

/// Each member's volume. The storage class cannot change once set (the
/// API server refuses it; a StatefulSet's volume claims cannot follow).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storageClassName cannot change after creation"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size [default: 1Gi].
    #[serde(default = "default_size")]
    pub size: String,
    /// Storage class [default: the cluster's default]; fixed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep a removed member's volume when scaling down [default: true].
    #[serde(default = "yes")]
    pub retain_on_scale_down: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_size(),
            storage_class_name: None,
            retain_on_scale_down: true,
        }
    }
}

fn default_size() -> String {
    "1Gi".into()
}

fn yes() -> bool {
    true
}

/// Mutual TLS between members, and from the operator and applications.
/// Roles come from the certificate subject's organizational unit:
/// `raftkit-node` (a member), `raftkit-admin` (membership, leadership,
/// snapshots), anything else the CA signed (use `raftkit-client`): Counter
/// and KV calls and status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.enabled || !has(self.secretName)").message("secretName needs enabled: true"),
    validation = Rule::new("has(self.secretName) == has(self.adminSecretName)").message("secretName and adminSecretName go together")
)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve and dial with mutual TLS [default: false]. Without
    /// `secretName` the operator makes the certificates, in Secrets it
    /// owns: the CA (`<cluster>-tls-ca`), each member's
    /// (`<cluster>-tls-nodes`), its own admin certificate
    /// (`<cluster>-tls-admin`) and one for applications
    /// (`<cluster>-tls-client`: `tls.crt`, `tls.key`, `ca.crt`), and renews
    /// them before they expire; members reload them without a restart.
    #[serde(default)]
    pub enabled: bool,
    /// The user's Secret of member certificates instead of the operator's
    /// [default: none]: `ca.crt`, and `<pod>.crt` and `<pod>.key` for every
    /// pod the cluster may run (`<cluster>-0` up to `<cluster>-<replicas-1>`),
    /// each with organizational unit `raftkit-node`, usable for server and
    /// client authentication, and naming the pod's DNS name
    /// `<pod>.<cluster>-peers.<namespace>.svc`. The user renews them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// With `secretName`: a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`)
    /// of the same CA with organizational unit `raftkit-admin`, which the
    /// operator presents to the members [default: none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub admin_secret_name: Option<String>,
    /// How long the certificates the operator issues to members, itself
    /// and applications are valid, in seconds [default: 7776000, 90 days].
    /// Each is renewed once less than a third of it is left; changing it
    /// reissues them all. At least 60; at most 157680000 (5 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 157_680_000))]
    pub certificate_lifetime_secs: Option<u64>,
}

/// Bounds of `spec.tls.certificateLifetimeSecs`: a minute (renewal is then
/// due every 40 s, for trying it out) to five years (half the CA's life).
pub const MIN_CERTIFICATE_LIFETIME_SECS: u64 = 60;
pub const MAX_CERTIFICATE_LIFETIME_SECS: u64 = 5 * 365 * 24 * 60 * 60;
/// `spec.tls.certificateLifetimeSecs` when unset: 90 days.
pub const DEFAULT_CERTIFICATE_LIFETIME_SECS: u64 = 90 * 24 * 60 * 60;

/// The NetworkPolicy `<cluster>-node` the operator owns: the node port
/// (8080) admits only the cluster's own pods, the operator's pods and every
/// pod of `allowedNamespaces`. Clients elsewhere (including other pods of
/// the cluster's own namespace) are refused unless their namespace is
/// listed; a sidecar app (`template`) reaches its node on localhost.
/// It takes effect where the cluster's network plugin enforces
/// NetworkPolicies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Make the policy [default: true]. false: the operator makes none
    /// and deletes the one it made before; the node port is then whatever
    /// the namespace's own policies say.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Namespaces whose pods (all of them) may reach the node port: your
    /// applications [default: none].
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")))]
    pub allowed_namespaces: Vec<String>,
    /// Every port but the node port stays open to all, as without a
    /// policy (a sidecar app's own ports) [default: true]. false: only the
    /// node port is admitted; the namespace's own policies decide the rest
    /// (closed without one).
    #[serde(default = "yes")]
    pub other_ports_open: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            allowed_namespaces: Vec::new(),
            other_ports_open: true,
        }
    }
}

/// Raft settings of every member (node flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftSpec {
    /// [default: 1000; 100 to 60000]
    #[serde(default = "default_election_timeout")]
    #[schemars(range(min = 100, max = 60000))]
    pub election_timeout_ms: u32,
    /// Seconds between snapshots, 0 for never [default: 3600].
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_secs: u64,
    /// fsync before acknowledging [default: true]; off risks acknowledged
    /// writes on power loss.
    #[serde(default = "yes")]
    pub sync: bool,
    /// How linearizable reads are confirmed [default: readIndex].
    #[serde(default)]
    pub read_mode: ReadMode,
}

impl Default for RaftSpec {
    fn default() -> Self {
        RaftSpec {
            election_timeout_ms: default_election_timeout(),
            snapshot_interval_secs: default_snapshot_interval(),
            sync: true,
            read_mode: ReadMode::default(),
        }
    }
}

fn default_election_timeout() -> u32 {
    1000
}

fn default_snapshot_interval() -> u64 {
    3600
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReadMode {
    #[default]
    ReadIndex,
    Lease,
}

impl ReadMode {
    /// The node's name for it (`--read-mode`).
    pub fn as_flag(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read-index",
            ReadMode::Lease => "lease",
        }
    }
}

/// What the operator last saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    /// Pending, Bootstrapping, Scaling, Updating, Running, Degraded or Paused.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members of the Raft configuration.
    #[serde(default)]
    pub replicas: i32,
    /// Members that are ready: serving, caught up with the leader.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The leader's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Set before the first pod is told to bootstrap, and never cleared: a
    /// cluster that lost every member's data is not bootstrapped again.
    #[serde(default)]
    pub bootstrapped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The state machine the cluster was bootstrapped with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_machine: Option<StateMachine>,
    /// The storage class the cluster was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Whether the cluster was bootstrapped with mutual TLS
    /// (`spec.tls.enabled`); fixed from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_enabled: Option<bool>,
    /// The pod revision every member runs, once they all run the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The pod revision the spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The step in progress, so an operator restarted mid-step resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// A standard condition (`Available`, `Progressing`, `Degraded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One member as the operator last saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Its pod (empty when no pod holds its address).
    pub pod: String,
    /// Raft id, 16 hex digits.
    pub raft_id: String,
    /// leader, follower, candidate, ... (`unknown` when it did not answer).
    pub role: String,
    pub voter: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    pub caught_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Answering, ready and caught up.
    pub healthy: bool,
}

/// A step the operator has started and not yet seen finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Bootstrap, AddLearner, Promote, RemoveMember, TransferLeader,
    /// RestartPod, WipePod.
    pub kind: String,
    /// The pod it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The raft id it concerns, 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_id: Option<String>,
    /// `started`, or what it waits for.
    pub phase: String,
    /// The configuration index the step was planned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_conf_index: Option<u64>,
    pub started_at: String,
}

/// Why a spec is refused; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.{field}: {problem}")]
pub struct SpecError {
    pub field: &'static str,
    pub problem: String,
}

impl RaftClusterSpec {
    /// The checks the API server makes from the schema, for specs that do
    /// not come through it (`raftkit-operator local` reads a file).
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field, problem: String| Err(SpecError { field, problem });
        if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&self.replicas) {
            return bad(
                "replicas",
                format!(
                    "{} is out of range {MIN_REPLICAS}..={MAX_REPLICAS}",
                    self.replicas
                ),
            );
        }
        if self.image.trim().is_empty() {
            return bad("image", "must not be empty".into());
        }
        let t = self.raft.election_timeout_ms;
        if !(MIN_ELECTION_TIMEOUT_MS..=MAX_ELECTION_TIMEOUT_MS).contains(&t) {
            return bad(
                "raft.electionTimeoutMs",
                format!(
                    "{t} is out of range {MIN_ELECTION_TIMEOUT_MS}..={MAX_ELECTION_TIMEOUT_MS}"
                ),
            );
        }
        if self.storage.size.trim().is_empty() {
            return bad("storage.size", "must not be empty".into());
        }
        if let Some(tls) = &self.tls {
            if tls.secret_name.is_some() && !tls.enabled {
                return bad("tls.secretName", "needs enabled: true".into());
            }
            if tls.secret_name.is_some() != tls.admin_secret_name.is_some() {
                return bad(
                    "tls.adminSecretName",
                    "secretName and adminSecretName go together".into(),
                );
            }
            if let Some(l) = tls.certificate_lifetime_secs {
                if !(MIN_CERTIFICATE_LIFETIME_SECS..=MAX_CERTIFICATE_LIFETIME_SECS).contains(&l) {
                    return bad(
                        "tls.certificateLifetimeSecs",
                        format!(
                            "{l} is out of range {MIN_CERTIFICATE_LIFETIME_SECS}..={MAX_CERTIFICATE_LIFETIME_SECS} (seconds)"
                        ),
                    );
                }
            }
        }
        for ns in &self.network_policy.allowed_namespaces {
            let label = ns.len() <= 63
                && ns.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && ns.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && ns
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !label {
                return bad(
                    "networkPolicy.allowedNamespaces",
                    format!("{ns:?} is not a namespace name (a DNS label)"),
                );
            }
        }
        Ok(())
    }
}

impl RaftCluster {
    /// `spec.tls.enabled` (off when `spec.tls` is not set).
    pub fn tls_enabled(&self) -> bool {
        self.spec.tls.as_ref().is_some_and(|t| t.enabled)
    }

    /// How long the operator's leaf certificates are valid
    /// (`spec.tls.certificateLifetimeSecs`, 90 days unless set).
    pub fn certificate_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.spec
                .tls
                .as_ref()
                .and_then(|t| t.certificate_lifetime_secs)
                .unwrap_or(DEFAULT_CERTIFICATE_LIFETIME_SECS),
        )
    }

    /// The restart annotation's value, if set.
    pub fn restarted_at(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a: &BTreeMap<String, String>| a.get(RESTARTED_AT))
            .map(String::as_str)
    }

    /// The CA rotation annotation's value, if set.
    pub fn ca_rotated_at(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a: &BTreeMap<String, String>| a.get(CA_ROTATED_AT))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> RaftCluster {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn a_minimal_manifest_gets_the_documented_defaults() {
        let rc = parse(
            "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo}\nspec: {replicas: 3}\n",
        );
        assert_eq!(rc.spec.replicas, 3);
        assert_eq!(rc.spec.state_machine, StateMachine::Counter);
        assert_eq!(rc.spec.raft.election_timeout_ms, 1000);
        assert!(rc.spec.raft.sync);
        assert!(rc.spec.storage.retain_on_scale_down);
        assert_eq!(rc.spec.storage.size, "1Gi");
        assert!(!rc.spec.paused);
        assert!(rc.spec.network_policy.enabled, "the node port is guarded");
        assert!(rc.spec.network_policy.allowed_namespaces.is_empty());
        assert!(rc.spec.network_policy.other_ports_open);
        assert!(rc.spec.validate().is_ok());
        let partial = parse("metadata: {name: d}\nspec: {replicas: 3, networkPolicy: {allowedNamespaces: [apps]}}\n");
        assert_eq!(
            partial.spec.network_policy,
            NetworkPolicySpec {
                allowed_namespaces: vec!["apps".into()],
                ..NetworkPolicySpec::default()
            },
            "unset fields keep their defaults"
        );
    }

    #[test]
    fn allowed_namespaces_must_be_namespace_names() {
        let mut rc = parse("metadata: {name: d}\nspec: {replicas: 3, networkPolicy: {allowedNamespaces: [apps, team-2]}}\n");
        assert!(rc.spec.validate().is_ok());
        for bad in ["Apps", "-apps", "apps-", "", "a_b"] {
            rc.spec.network_policy.allowed_namespaces = vec![bad.into()];
            assert_eq!(
                rc.spec.validate().unwrap_err().field,
                "networkPolicy.allowedNamespaces",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let mut rc = parse("metadata: {name: demo}\nspec: {replicas: 10}\n");
        assert_eq!(rc.spec.validate().unwrap_err().field, "replicas");
        rc.spec.replicas = 0;
        assert_eq!(rc.spec.validate().unwrap_err().field, "replicas");
        rc.spec.replicas = 3;
        rc.spec.image = " ".into();
        assert_eq!(rc.spec.validate().unwrap_err().field, "image");
        rc.spec.image = "x".into();
        rc.spec.raft.election_timeout_ms = 50;
        let e = rc.spec.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.raft.electionTimeoutMs: 50 is out of range 100..=60000"
        );
    }

    #[test]
    fn tls_is_off_unless_asked_for_and_a_users_secret_needs_it_on() {
        let rc = parse("metadata: {name: d}\nspec: {replicas: 3}\n");
        assert_eq!(rc.spec.tls, None);
        let mut rc = parse(
            "metadata: {name: d}\nspec: {replicas: 3, tls: {enabled: true, secretName: mine, adminSecretName: mine-admin}}\n",
        );
        let tls = rc.spec.tls.clone().expect("tls");
        assert!(tls.enabled);
        assert_eq!(tls.secret_name.as_deref(), Some("mine"));
        assert!(rc.spec.validate().is_ok());
        rc.spec.tls = Some(TlsSpec {
            enabled: false,
            ..tls.clone()
        });
        assert_eq!(rc.spec.validate().unwrap_err().field, "tls.secretName");
        rc.spec.tls = Some(TlsSpec {
            admin_secret_name: None,
            ..tls
        });
        assert_eq!(rc.spec.validate().unwrap_err().field, "tls.adminSecretName");
    }

    #[test]
    fn the_certificate_lifetime_is_90_days_unless_set_and_bounded() {
        let mut rc = parse("metadata: {name: d}\nspec: {replicas: 3, tls: {enabled: true}}\n");
        assert_eq!(
            rc.certificate_lifetime(),
            std::time::Duration::from_secs(90 * 24 * 3600)
        );
        let rc2 = parse(
            "metadata: {name: d}\nspec: {replicas: 3, tls: {enabled: true, certificateLifetimeSecs: 3600}}\n",
        );
        assert_eq!(rc2.certificate_lifetime().as_secs(), 3600);
        assert!(rc2.spec.validate().is_ok());
        for (l, ok) in [
            (59, false),
            (60, true),
            (157_680_000, true),
            (157_680_001, false),
        ] {
            rc.spec.tls.as_mut().expect("tls").certificate_lifetime_secs = Some(l);
            match rc.spec.validate() {
                Ok(()) => assert!(ok, "{l} accepted"),
                Err(e) => {
                    assert!(!ok, "{l} refused: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("spec.tls.certificateLifetimeSecs: {l} is out of range 60..=157680000 (seconds)")
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_state_machines_are_a_parse_error() {
        let r: Result<RaftCluster, _> =
            serde_yaml::from_str("metadata: {name: d}\nspec: {replicas: 1, stateMachine: redis}\n");
        assert!(r.unwrap_err().to_string().contains("stateMachine"));
    }
}
