//! Pure builders from a `RaftCluster`: the pod revision (what a pod is
//! started from, hashed), names and addresses of pods, and the node's
//! environment, built from the node's one settings table
//! (`raftkit_proto::settings`) so no flag name is copied here. Both
//! backends start nodes from these; no client, no I/O.

use sha2::{Digest, Sha256};

use raftkit_proto::settings;

use crate::crd::RaftCluster;

/// The node's port for gRPC and HTTP inside a pod.
pub const NODE_PORT: u16 = 8080;

/// Hash of everything a pod is started from: image, pull policy, state
/// machine, raft flags, resources, the user's template, and the restart
/// annotation. Pods of another revision are restarted, one at a time.
pub fn revision(rc: &RaftCluster) -> String {
    let s = &rc.spec;
    let inputs = serde_json::json!({
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "stateMachine": s.state_machine,
        "raft": s.raft,
        "resources": s.resources,
        "template": s.template,
        "restartedAt": rc.restarted_at(),
    });
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Pod `ordinal`'s name: `<cluster>-<ordinal>`, as a StatefulSet names it.
pub fn pod_name(rc: &RaftCluster, ordinal: u32) -> String {
    format!("{}-{ordinal}", cluster_name(rc))
}

pub fn cluster_name(rc: &RaftCluster) -> &str {
    rc.metadata.name.as_deref().unwrap_or("raftcluster")
}

/// A pod's ordinal from its name.
pub fn ordinal_of(rc: &RaftCluster, pod: &str) -> Option<u32> {
    pod.strip_prefix(cluster_name(rc))?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// Why a node's environment could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the node's settings table has no setting `{0}`")]
pub struct UnknownSetting(pub &'static str);

/// The node's environment for one pod: every flag the spec sets, by the
/// environment variable the node's settings table declares. `listen` is
/// the address the node binds, `advertise` the one peers and clients use.
pub fn node_env(
    rc: &RaftCluster,
    listen: &str,
    advertise: &str,
    data_dir: &str,
) -> Result<Vec<(String, String)>, UnknownSetting> {
    let s = &rc.spec;
    let values: [(&'static str, String); 8] = [
        ("listen", listen.to_string()),
        ("advertise", advertise.to_string()),
        ("data_dir", data_dir.to_string()),
        ("state_machine", s.state_machine.as_str().to_string()),
        (
            "election_timeout_ms",
            s.raft.election_timeout_ms.to_string(),
        ),
        (
            "snapshot_interval_s",
            s.raft.snapshot_interval_secs.to_string(),
        ),
        ("sync", s.raft.sync.to_string()),
        ("read_mode", s.raft.read_mode.as_flag().to_string()),
    ];
    values
        .into_iter()
        .map(|(name, v)| {
            settings::setting(name)
                .map(|st| (st.env.to_string(), v))
                .ok_or(UnknownSetting(name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(yaml: &str) -> RaftCluster {
        serde_yaml::from_str(yaml).expect("parses")
    }

    const BASE: &str = "metadata: {name: demo}\nspec: {replicas: 3}\n";

    #[test]
    fn the_revision_changes_with_what_pods_start_from_and_only_that() {
        let a = rc(BASE);
        let mut b = a.clone();
        b.spec.replicas = 5;
        b.spec.paused = true;
        assert_eq!(
            revision(&a),
            revision(&b),
            "replicas and paused restart nothing"
        );
        b.spec.raft.election_timeout_ms = 2000;
        assert_ne!(revision(&a), revision(&b));
        let c = rc("metadata: {name: demo, annotations: {raftkit.io/restartedAt: '2026-12-07T00:00:00Z'}}\nspec: {replicas: 3}\n");
        assert_ne!(
            revision(&a),
            revision(&c),
            "the restart annotation rolls the pods"
        );
        assert_eq!(revision(&a).len(), 10);
    }

    #[test]
    fn every_node_setting_comes_from_the_node_settings_table() {
        let env = node_env(&rc(BASE), "0.0.0.0:8080", "demo-0.demo:8080", "/data").expect("env");
        for (k, _) in &env {
            assert!(
                settings::NODE_SETTINGS.iter().any(|s| s.env == k.as_str()),
                "{k} is not a node setting"
            );
        }
        let get = |name: &str| {
            let var = settings::setting(name).expect("setting").env;
            env.iter().find(|(k, _)| k == var).map(|(_, v)| v.as_str())
        };
        assert_eq!(get("election_timeout_ms"), Some("1000"));
        assert_eq!(get("read_mode"), Some("read-index"));
        assert_eq!(get("state_machine"), Some("counter"));
        assert_eq!(get("advertise"), Some("demo-0.demo:8080"));
    }

    #[test]
    fn pod_names_and_ordinals_round_trip() {
        let r = rc(BASE);
        assert_eq!(pod_name(&r, 4), "demo-4");
        assert_eq!(ordinal_of(&r, "demo-4"), Some(4));
        assert_eq!(ordinal_of(&r, "demox-4"), None);
        assert_eq!(ordinal_of(&r, "other-1"), None);
    }
}
