//! Pure builders from a `RaftCluster`: the pod revision (what a pod is
//! started from, hashed), names and addresses of pods, and the node's
//! environment, built from the node's one settings table
//! (`raftkit_proto::settings`) so no flag name is copied here. Both
//! backends start nodes from these; no client, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

use raftkit_proto::settings;

use crate::crd::RaftCluster;

/// The node's port for gRPC and HTTP inside a pod.
pub const NODE_PORT: u16 = 8080;

/// Hash of everything a pod is started from: image, pull policy, state
/// machine, raft flags, resources, the user's template, the restart
/// annotation, and with mutual TLS the Secret it mounts. Pods of another
/// revision are restarted, one at a time. Certificates are not part of
/// it: a renewed one reaches the running node, which reloads it.
pub fn revision(rc: &RaftCluster) -> String {
    let s = &rc.spec;
    let mut inputs = serde_json::json!({
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "stateMachine": s.state_machine,
        "raft": s.raft,
        "resources": s.resources,
        "template": s.template,
        "restartedAt": rc.restarted_at(),
    });
    // Only when on: the revisions of clusters without TLS stay as they were.
    if let Some(secret) = crate::tls::pods_secret_name(rc) {
        inputs["tlsSecret"] = serde_json::Value::String(secret);
    }
    short_digest(&inputs.to_string())
}

fn short_digest(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Annotation on an owned object the operator keeps in step with the spec
/// outside the pods' revision (the NetworkPolicy): a digest of what it
/// applied, so a pass can tell a stale object without comparing fields the
/// API server defaulted.
pub const SPEC_DIGEST_ANNOTATION: &str = "raftkit.io/spec-digest";

/// Why the live object must be applied again, if it must: it is missing,
/// or it was applied from another spec (an edit of `spec.networkPolicy`,
/// an operator of another version).
pub fn drift(what: &str, live: Option<&ObjectMeta>, desired: &ObjectMeta) -> Option<String> {
    let digest = |m: &ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(SPEC_DIGEST_ANNOTATION))
            .cloned()
    };
    match live {
        None => Some(format!("{what} is missing")),
        Some(l) if digest(l) != digest(desired) => Some(format!("{what} is out of date")),
        Some(_) => None,
    }
}

/// Whether `rc` owns the object of `live` (its controller reference names
/// `rc`'s uid): only such an object is ever deleted.
pub fn owned_by(rc: &RaftCluster, live: &ObjectMeta) -> bool {
    let Some(uid) = rc.metadata.uid.as_deref() else {
        return false;
    };
    live.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Why the NetworkPolicy of `live` must go, if it must: the spec turned
/// the policy off (`spec.networkPolicy.enabled: false`) and this cluster
/// made it. A policy of the same name someone else made is left alone.
pub fn unwanted_policy(rc: &RaftCluster, live: Option<&ObjectMeta>) -> Option<String> {
    (!rc.spec.network_policy.enabled && live.is_some_and(|l| owned_by(rc, l))).then(|| {
        "the NetworkPolicy is no longer asked for (spec.networkPolicy.enabled: false)".into()
    })
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

/// Label every owned object carries: the cluster's name.
pub const CLUSTER_LABEL: &str = "raftkit.io/cluster";
/// Label of a pod's template: the revision it was created from.
pub const REVISION_LABEL: &str = "raftkit.io/revision";
/// The node container's name (and the native sidecar's in sidecar mode).
pub const NODE_CONTAINER: &str = "raftkit-node";
/// Where the node keeps its data inside a pod.
pub const DATA_DIR: &str = "/data";
/// The volume claim template's name; PVCs are `data-<pod>`.
pub const DATA_VOLUME: &str = "data";
/// The user id the node runs as.
pub const NODE_UID: i64 = 65532;

/// The headless Service that gives each pod a stable DNS name.
pub fn peers_service_name(rc: &RaftCluster) -> String {
    format!("{}-peers", cluster_name(rc))
}

/// The ConfigMap holding the node's flags.
pub fn config_map_name(rc: &RaftCluster) -> String {
    format!("{}-config", cluster_name(rc))
}

/// The PVC of `pod`.
pub fn pvc_name(pod: &str) -> String {
    format!("{DATA_VOLUME}-{pod}")
}

/// Pod `ordinal`'s address as peers and the operator reach it: its stable
/// DNS name under the headless Service, never an IP.
pub fn pod_addr(rc: &RaftCluster, namespace: &str, ordinal: u32) -> String {
    format!(
        "{}.{}.{namespace}.svc:{NODE_PORT}",
        pod_name(rc, ordinal),
        peers_service_name(rc)
    )
}

/// Labels of every owned object.
pub fn labels(rc: &RaftCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "raftkit".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster_name(rc).to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "raftkit-operator".to_string(),
        ),
        (CLUSTER_LABEL.to_string(), cluster_name(rc).to_string()),
    ])
}

fn selector(rc: &RaftCluster) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster_name(rc).to_string())])
}

fn meta(rc: &RaftCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rc.metadata.namespace.clone(),
        labels: Some(labels(rc)),
        owner_references: rc.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap with the node's flags (as environment variables, which
/// pods load with `envFrom`).
pub fn config_map(rc: &RaftCluster) -> Result<ConfigMap, UnknownSetting> {
    // Pod-specific settings (listen, advertise, data dir) are set per pod.
    let data = node_env(rc, "", "", "")?
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    Ok(ConfigMap {
        metadata: meta(rc, config_map_name(rc)),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The headless Service: stable per-pod DNS names, published before the
/// pods are ready (a pod must be reachable to be added to the group).
pub fn peers_service(rc: &RaftCluster) -> Service {
    Service {
        metadata: meta(rc, peers_service_name(rc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(rc)),
            ports: Some(vec![node_service_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service: ready members only.
pub fn client_service(rc: &RaftCluster) -> Service {
    Service {
        metadata: meta(rc, cluster_name(rc).to_string()),
        spec: Some(ServiceSpec {
            selector: Some(selector(rc)),
            ports: Some(vec![node_service_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn node_service_port() -> ServicePort {
    ServicePort {
        name: Some("raft".into()),
        port: i32::from(NODE_PORT),
        target_port: Some(IntOrString::String("raft".into())),
        ..ServicePort::default()
    }
}

/// At most one pod down by a voluntary disruption (a node drain) at a time.
pub fn pod_disruption_budget(rc: &RaftCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(rc, cluster_name(rc).to_string()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(rc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The NetworkPolicy guarding the node port.
pub fn network_policy_name(rc: &RaftCluster) -> String {
    format!("{}-node", cluster_name(rc))
}

/// The label every namespace carries with its own name (set by the API
/// server since Kubernetes 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the operator's own pods run and the labels they carry: the
/// NetworkPolicy of each cluster admits them to the node port.
/// `raftkit-operator run` takes them from `POD_NAMESPACE` and
/// `--operator-pod-labels` (`RAFTKIT_OPERATOR_POD_LABELS`), which the chart
/// and deploy/ set to the operator Deployment's selector labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// The operator pods' labels of deploy/ (and of the chart installed as
/// release `raftkit-operator`): `--operator-pod-labels`' default.
pub const DEFAULT_OPERATOR_POD_LABELS: &str =
    "app.kubernetes.io/name=raftkit-operator,app.kubernetes.io/instance=raftkit-operator";

/// Why `--operator-pod-labels` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("operator pod labels {0:?}: want key=value[,key=value...], at least one")]
pub struct BadLabels(pub String);

/// Parses `key=value,key=value` (at least one pair; an empty selector
/// would admit every pod of the operator's namespace).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, BadLabels> {
    let bad = || BadLabels(s.to_string());
    let labels = s
        .split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(bad());
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(labels)
}

/// The NetworkPolicy `<cluster>-node`, Ingress only, selecting the
/// cluster's pods (`CLUSTER_LABEL`). Its first rule admits the node port
/// (`NODE_PORT`, TCP) from exactly: the cluster's own pods (members reach
/// each other), the operator's pods in the operator's namespace (it reads
/// the members' state and changes membership), and every pod of each
/// namespace in `spec.networkPolicy.allowedNamespaces`.
///
/// Other ports: a pod that any policy selects for Ingress refuses every
/// connection no rule admits, on every port. So that this policy changes
/// nothing but the node port (a sidecar app's own ports, `spec.template`),
/// with `otherPortsOpen` (the default) a second rule admits every other
/// port from anywhere: TCP 1..8079 and 8081..65535 (`endPort`, stable
/// since Kubernetes 1.25), all UDP and all SCTP. A network plugin that
/// ignores `endPort` admits only the first port of each range: it errs
/// closed on the app's ports, never open on the node's. With
/// `otherPortsOpen: false` only the node port is admitted and the
/// namespace's own policies decide the rest (closed without one).
///
/// Kubelet probes come from the node itself (host network), which most
/// network plugins admit whatever the policy, so `/readyz` and `/livez`
/// keep working. `kubectl port-forward` enters the pod's own network
/// namespace and is not subject to it either.
pub fn network_policy(rc: &RaftCluster, operator: &OperatorPods) -> NetworkPolicy {
    let np = &rc.spec.network_policy;
    let namespace = |ns: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            ns.to_string(),
        )])),
        ..LabelSelector::default()
    };
    let pods = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    let mut from = vec![
        NetworkPolicyPeer {
            pod_selector: Some(pods(selector(rc))),
            ..NetworkPolicyPeer::default()
        },
        NetworkPolicyPeer {
            namespace_selector: Some(namespace(&operator.namespace)),
            pod_selector: Some(pods(operator.labels.clone())),
            ..NetworkPolicyPeer::default()
        },
    ];
    from.extend(np.allowed_namespaces.iter().map(|ns| NetworkPolicyPeer {
        namespace_selector: Some(namespace(ns)),
        ..NetworkPolicyPeer::default()
    }));
    let port = |protocol: &str, first: u16, last: u16| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(i32::from(first))),
        end_port: (last != first).then_some(i32::from(last)),
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![port("TCP", NODE_PORT, NODE_PORT)]),
        from: Some(from),
    }];
    if np.other_ports_open {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![
                port("TCP", 1, NODE_PORT - 1),
                port("TCP", NODE_PORT + 1, u16::MAX),
                port("UDP", 1, u16::MAX),
                port("SCTP", 1, u16::MAX),
            ]),
            from: None,
        });
    }
    let spec = NetworkPolicySpec {
        pod_selector: Some(pods(selector(rc))),
        policy_types: Some(vec!["Ingress".into()]),
        ingress: Some(ingress),
        ..NetworkPolicySpec::default()
    };
    let mut metadata = meta(rc, network_policy_name(rc));
    metadata.annotations = Some(BTreeMap::from([(
        SPEC_DIGEST_ANNOTATION.to_string(),
        short_digest(&serde_json::to_string(&spec).unwrap_or_default()),
    )]));
    NetworkPolicy {
        metadata,
        spec: Some(spec),
    }
}

/// The node container: flags from the ConfigMap, its own address from its
/// pod's name, `/readyz` readiness and `/livez` liveness, non-root with a
/// read-only root filesystem.
fn node_container(rc: &RaftCluster, namespace: &str) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    };
    let env_of = |name: &'static str| {
        raftkit_proto::settings::setting(name)
            .map(|s| s.env.to_string())
            .unwrap_or_default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("raft".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let spec = &rc.spec;
    Container {
        name: NODE_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(format!("{:?}", spec.image_pull_policy)),
        ports: Some(vec![ContainerPort {
            name: Some("raft".into()),
            container_port: i32::from(NODE_PORT),
            ..ContainerPort::default()
        }]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(rc),
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        // `$(POD_NAME)` expands from the variable declared before it.
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(field("metadata.name")),
                ..EnvVar::default()
            },
            EnvVar {
                name: env_of("listen"),
                value: Some(format!("0.0.0.0:{NODE_PORT}")),
                ..EnvVar::default()
            },
            EnvVar {
                name: env_of("advertise"),
                value: Some(format!(
                    "$(POD_NAME).{}.{namespace}.svc:{NODE_PORT}",
                    peers_service_name(rc)
                )),
                ..EnvVar::default()
            },
            EnvVar {
                name: env_of("data_dir"),
                value: Some(DATA_DIR.into()),
                ..EnvVar::default()
            },
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 2, 1)),
        liveness_probe: Some(probe("/livez", 10, 6)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Seconds a stopping pod gets: the node hands its leadership over on
/// SIGTERM (a transfer takes about one election timeout), then stops.
pub fn termination_grace_secs(rc: &RaftCluster) -> i64 {
    30 + i64::from(rc.spec.raft.election_timeout_ms) * 3 / 1000
}

/// The pod template: the node alone, or with `spec.template` the user's
/// containers with the node as a native sidecar (an init container that
/// keeps running: it starts before the app and stops after it). With
/// mutual TLS the members' Secret is mounted whole and the node is pointed
/// at its own files (`tls::pod_tls`); probes stay plain HTTP, which the
/// node answers on its TLS port.
pub fn pod_template(
    rc: &RaftCluster,
    namespace: &str,
    revision: &str,
) -> Result<PodTemplateSpec, UnknownSetting> {
    let mut t = rc.spec.template.clone().unwrap_or_default();
    let mut meta = t.metadata.take().unwrap_or_default();
    let mut pod_labels = meta.labels.take().unwrap_or_default();
    pod_labels.extend(labels(rc));
    pod_labels.insert(REVISION_LABEL.into(), revision.into());
    meta.labels = Some(pod_labels);
    let mut spec: PodSpec = t.spec.take().unwrap_or_default();
    let mut node = node_container(rc, namespace);
    let tls = crate::tls::pod_tls(rc)?;
    if let Some(t) = &tls {
        // After POD_NAME, which their paths use.
        node.env.get_or_insert_with(Vec::new).extend(t.env.clone());
        node.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(t.mount.clone());
    }
    if rc.spec.template.is_some() {
        node.restart_policy = Some("Always".into());
        let mut inits = vec![node];
        inits.extend(spec.init_containers.take().unwrap_or_default());
        spec.init_containers = Some(inits);
    } else {
        spec.containers = vec![node];
    }
    let mut volumes = spec.volumes.take().unwrap_or_default();
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.extend(tls.map(|t| t.volume));
    spec.volumes = Some(volumes);
    spec.termination_grace_period_seconds = Some(termination_grace_secs(rc));
    let mut sc = spec.security_context.take().unwrap_or_default();
    sc.run_as_non_root = Some(true);
    sc.fs_group.get_or_insert(NODE_UID);
    // What the "restricted" Pod Security Standard asks of every pod.
    sc.seccomp_profile.get_or_insert(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    });
    spec.security_context = Some(sc);
    Ok(PodTemplateSpec {
        metadata: Some(meta),
        spec: Some(spec),
    })
}

/// The StatefulSet: `replicas` pods of `revision`, started in parallel and
/// restarted only when the operator deletes them (`OnDelete`).
pub fn stateful_set(
    rc: &RaftCluster,
    namespace: &str,
    replicas: u32,
    revision: &str,
) -> Result<StatefulSet, UnknownSetting> {
    let storage = &rc.spec.storage;
    Ok(StatefulSet {
        metadata: meta(rc, cluster_name(rc).to_string()),
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(peers_service_name(rc)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector(rc)),
                ..LabelSelector::default()
            },
            template: pod_template(rc, namespace, revision)?,
            // The operator decides when a removed member's volume goes.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some("Retain".into()),
                    when_deleted: Some("Retain".into()),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(labels(rc)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
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

    fn owned() -> RaftCluster {
        let mut r = rc("metadata: {name: demo, namespace: prod, uid: u-1}\nspec: {replicas: 3, image: 'raftkit-node:9'}\n");
        r.metadata.uid = Some("u-1".into());
        r
    }

    #[test]
    fn the_statefulset_restarts_pods_only_when_told_and_starts_them_in_parallel() {
        let r = owned();
        let sts = stateful_set(&r, "prod", 3, "abc").expect("sts");
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref()),
            Some("OnDelete")
        );
        assert_eq!(spec.service_name.as_deref(), Some("demo-peers"));
        let owner = &sts.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("RaftCluster", Some(true))
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels.get(REVISION_LABEL).map(String::as_str), Some("abc"));
        let pod = spec.template.spec.as_ref().expect("pod spec");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("raftkit-node:9"));
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/livez"));
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let pod_sc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "the restricted Pod Security Standard"
        );
        let env = c.env.as_ref().expect("env");
        let advertise = env
            .iter()
            .find(|e| e.name == "RAFTKIT_ADVERTISE")
            .and_then(|e| e.value.clone());
        assert_eq!(
            advertise.as_deref(),
            Some("$(POD_NAME).demo-peers.prod.svc:8080"),
            "a DNS name, never an IP"
        );
        assert_eq!(env[0].name, "POD_NAME", "declared before its use");
        assert!(pod.termination_grace_period_seconds.unwrap_or(0) >= 30);
        let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    }

    #[test]
    fn services_publish_peers_before_they_are_ready_and_the_budget_allows_one_down() {
        let r = owned();
        let peers = peers_service(&r).spec.expect("spec");
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let client = client_service(&r).spec.expect("spec");
        assert_eq!(
            client.publish_not_ready_addresses, None,
            "clients reach ready members only"
        );
        let pdb = pod_disruption_budget(&r).spec.expect("spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        let cm = config_map(&r).expect("config map");
        let data = cm.data.expect("data");
        assert_eq!(
            data.get("RAFTKIT_ELECTION_TIMEOUT_MS").map(String::as_str),
            Some("1000")
        );
        assert!(
            !data.contains_key("RAFTKIT_ADVERTISE"),
            "per-pod settings are not shared"
        );
    }

    fn operator_pods() -> OperatorPods {
        OperatorPods {
            namespace: "ops".into(),
            labels: parse_labels(DEFAULT_OPERATOR_POD_LABELS).expect("labels"),
        }
    }

    #[test]
    fn a_policy_turned_off_is_unwanted_only_if_this_cluster_made_it() {
        let mut r = rc("metadata: {name: demo, namespace: prod, uid: u-1}\nspec: {replicas: 3}\n");
        let ours = network_policy(&r, &operator_pods());
        assert_eq!(unwanted_policy(&r, Some(&ours.metadata)), None, "on: kept");
        r.spec.network_policy.enabled = false;
        assert_eq!(
            unwanted_policy(&r, Some(&ours.metadata)).as_deref(),
            Some("the NetworkPolicy is no longer asked for (spec.networkPolicy.enabled: false)")
        );
        assert_eq!(unwanted_policy(&r, None), None, "already gone");
        let mut theirs = ours.metadata.clone();
        theirs.owner_references = None;
        assert_eq!(unwanted_policy(&r, Some(&theirs)), None, "not ours");
        let mut other = r.clone();
        other.metadata.uid = Some("another-uid".into());
        assert_eq!(
            unwanted_policy(&other, Some(&ours.metadata)),
            None,
            "another cluster of that name made it"
        );
    }

    #[test]
    fn a_network_policy_applied_from_another_spec_is_seen_as_stale() {
        let mut r = rc(BASE);
        r.metadata.namespace = Some("prod".into());
        let before = network_policy(&r, &operator_pods());
        let again = network_policy(&r, &operator_pods());
        assert_eq!(
            drift("the NetworkPolicy", Some(&again.metadata), &before.metadata),
            None,
            "the same spec: in step"
        );
        assert_eq!(
            drift("the NetworkPolicy", None, &before.metadata).as_deref(),
            Some("the NetworkPolicy is missing")
        );
        r.spec.network_policy.allowed_namespaces = vec!["frontend".into()];
        let edited = network_policy(&r, &operator_pods());
        assert_eq!(
            drift(
                "the NetworkPolicy",
                Some(&before.metadata),
                &edited.metadata
            )
            .as_deref(),
            Some("the NetworkPolicy is out of date")
        );
        // One applied before digests existed carries none: out of date.
        let mut old = before.metadata.clone();
        old.annotations = None;
        assert!(drift("the NetworkPolicy", Some(&old), &before.metadata).is_some());
    }

    #[test]
    fn the_network_policy_admits_the_node_port_from_the_cluster_the_operator_and_listed_namespaces()
    {
        let mut r = owned();
        r.spec.network_policy.allowed_namespaces = vec!["frontend".into()];
        let policy = network_policy(&r, &operator_pods());
        assert_eq!(policy.metadata.name.as_deref(), Some("demo-node"));
        assert_eq!(policy.metadata.namespace.as_deref(), Some("prod"));
        let owner = &policy.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("RaftCluster", "u-1")
        );
        let got = serde_json::to_value(policy.spec.expect("spec")).expect("json");
        let other_ports = serde_json::json!({"ports": [
            {"protocol": "TCP", "port": 1, "endPort": 8079},
            {"protocol": "TCP", "port": 8081, "endPort": 65535},
            {"protocol": "UDP", "port": 1, "endPort": 65535},
            {"protocol": "SCTP", "port": 1, "endPort": 65535},
        ]});
        assert_eq!(
            got,
            serde_json::json!({
                "podSelector": {"matchLabels": {"raftkit.io/cluster": "demo"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "ports": [{"protocol": "TCP", "port": 8080}],
                        "from": [
                            {"podSelector": {"matchLabels": {"raftkit.io/cluster": "demo"}}},
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                                "podSelector": {"matchLabels": {
                                    "app.kubernetes.io/instance": "raftkit-operator",
                                    "app.kubernetes.io/name": "raftkit-operator",
                                }},
                            },
                            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}},
                        ],
                    },
                    other_ports,
                ],
            })
        );
        // Other ports left to the namespace's own policies.
        r.spec.network_policy.other_ports_open = false;
        let closed = network_policy(&r, &operator_pods()).spec.expect("spec");
        let ingress = closed.ingress.expect("ingress");
        assert_eq!(ingress.len(), 1, "only the node port is admitted");
        assert_eq!(ingress[0].from.as_ref().map(Vec::len), Some(3));
    }

    #[test]
    fn operator_pod_labels_parse_and_refuse_an_empty_selector() {
        assert_eq!(
            parse_labels("a=1, b.io/c=x").expect("labels"),
            BTreeMap::from([("a".into(), "1".into()), ("b.io/c".into(), "x".into())])
        );
        for bad in ["", "a", "=1", "a=1,"] {
            assert!(parse_labels(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn with_a_template_the_node_runs_as_a_native_sidecar_beside_the_users_containers() {
        let r = rc(concat!(
            "metadata: {name: demo}\n",
            "spec:\n  replicas: 3\n  template:\n",
            "    metadata: {labels: {team: a}}\n",
            "    spec:\n      containers:\n      - {name: app, image: 'my/app:1'}\n",
        ));
        let t = pod_template(&r, "default", "abc").expect("template");
        let pod = t.spec.expect("spec");
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.containers[0].name, "app");
        let inits = pod.init_containers.expect("init containers");
        assert_eq!(inits[0].name, NODE_CONTAINER);
        assert_eq!(
            inits[0].restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert!(
            inits[0].readiness_probe.is_some(),
            "the pod's readiness includes the node's"
        );
        let labels = t.metadata.and_then(|m| m.labels).expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(labels.get(CLUSTER_LABEL).map(String::as_str), Some("demo"));
    }

    #[test]
    fn with_tls_the_pod_mounts_the_members_secret_and_the_node_reads_its_own_files() {
        let plain = rc(BASE);
        let on = rc("metadata: {name: demo}\nspec: {replicas: 3, tls: {enabled: true}}\n");
        let t = pod_template(&on, "prod", "abc").expect("template");
        let pod = t.spec.expect("spec");
        let volume = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == crate::tls::TLS_VOLUME))
            .expect("the TLS volume");
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("demo-tls-nodes")
        );
        let node = &pod.containers[0];
        let mount = node
            .volume_mounts
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.name == crate::tls::TLS_VOLUME))
            .expect("mounted");
        assert_eq!(mount.mount_path, crate::tls::TLS_DIR);
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.sub_path, None, "whole, so renewals reach the node");
        let env = node.env.as_ref().expect("env");
        let at = |name: &str| env.iter().position(|e| e.name == name);
        let value = |name: &str| at(name).and_then(|i| env[i].value.clone());
        assert_eq!(
            value("RAFTKIT_TLS_CERT").as_deref(),
            Some("/etc/raftkit/tls/$(POD_NAME).crt")
        );
        assert_eq!(
            value("RAFTKIT_TLS_KEY").as_deref(),
            Some("/etc/raftkit/tls/$(POD_NAME).key")
        );
        assert_eq!(
            value("RAFTKIT_TLS_CA").as_deref(),
            Some("/etc/raftkit/tls/ca.crt")
        );
        assert!(
            at("POD_NAME") < at("RAFTKIT_TLS_CERT"),
            "declared after POD_NAME, which it expands"
        );
        let readiness = node
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP readiness probe");
        assert_eq!(
            readiness.scheme, None,
            "plain HTTP: the node answers probes without a certificate"
        );

        // Without TLS: none of it, and the revision is what it was.
        let p = pod_template(&plain, "prod", "abc")
            .expect("template")
            .spec
            .expect("spec");
        assert!(p.volumes.iter().flatten().all(|v| v.secret.is_none()));
        assert!(p.containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| !e.name.starts_with("RAFTKIT_TLS")));
        let pinned = rc("metadata: {name: demo}\nspec: {replicas: 3, image: 'raftkit:pinned'}\n");
        assert_eq!(
            revision(&pinned),
            "ebd4eb56a0",
            "the revisions of clusters without TLS are what they were before TLS (no roll on upgrade)"
        );
        let off = rc("metadata: {name: demo}\nspec: {replicas: 3, tls: {enabled: false}}\n");
        assert_eq!(revision(&off), revision(&plain));
        // TLS on mounts a Secret: another revision; another Secret too.
        assert_ne!(revision(&on), revision(&plain));
        let users = rc(concat!(
            "metadata: {name: demo}\n",
            "spec: {replicas: 3, tls: {enabled: true, secretName: mine, adminSecretName: mine-admin}}\n",
        ));
        assert_ne!(revision(&users), revision(&on));
        // Certificates are not in it: nothing of them is in the resource.
        let mut renewed = on.clone();
        renewed.status = Some(crate::crd::RaftClusterStatus::default());
        assert_eq!(revision(&renewed), revision(&on));
    }
}
