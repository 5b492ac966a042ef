//! The Kubernetes workload: the StatefulSet, its Services, PodDisruptionBudget,
//! ConfigMap and NetworkPolicy (built by `build`), and the TLS Secrets (built by `tls`),
//! applied with server-side apply under one field manager, owned by the
//! RaftCluster; its pods and their PVCs; the RaftCluster's status
//! subresource; Events.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::Serialize;

use super::{EventType, PodState, Workload, WorkloadState};
use crate::build;
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::PodPhase;
use crate::Error;

/// The field manager of every object and status the operator writes.
pub const FIELD_MANAGER: &str = "raftkit-operator";
/// How long a changed Secret may take to reach a pod's volume
/// ([`Workload::secret_propagation`]).
pub const SECRET_PROPAGATION: std::time::Duration = std::time::Duration::from_secs(180);

/// Pods and objects in a Kubernetes cluster.
pub struct KubeBackend {
    client: Client,
    recorder: Recorder,
    /// Admitted to every cluster's node port (`build::network_policy`).
    operator: build::OperatorPods,
}

impl KubeBackend {
    /// `instance` names this operator replica in Events (its pod name);
    /// `operator` is where this operator's pods run and their labels.
    pub fn new(client: Client, instance: Option<String>, operator: build::OperatorPods) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        KubeBackend {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            operator,
        }
    }

    fn ns(rc: &RaftCluster) -> String {
        rc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    fn api<K>(&self, rc: &RaftCluster) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &Self::ns(rc))
    }

    async fn apply<K>(&self, rc: &RaftCluster, obj: &K) -> Result<(), Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or_else(|| Error::Workload("an object without a name".into()))?;
        self.api::<K>(rc)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
        Ok(())
    }
}

/// A deletion of something already gone is done.
fn gone_is_done<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pod's state as the plan needs it.
pub fn pod_state(rc: &RaftCluster, namespace: &str, ordinal: u32, pod: Option<&Pod>) -> PodState {
    let name = build::pod_name(rc, ordinal);
    let addr = build::pod_addr(rc, namespace, ordinal);
    let Some(pod) = pod else {
        return PodState {
            ordinal,
            name,
            addr,
            phase: PodPhase::Missing,
            running: false,
            revision: None,
            ready: false,
        };
    };
    let status = pod.status.as_ref();
    let node_running = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .any(|c| {
            c.name == build::NODE_CONTAINER
                && c.state.as_ref().is_some_and(|st| st.running.is_some())
        });
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let phase = if pod.metadata.deletion_timestamp.is_some() {
        PodPhase::Terminating
    } else if node_running {
        PodPhase::Running
    } else {
        PodPhase::Pending
    };
    PodState {
        ordinal,
        name,
        addr,
        phase,
        running: node_running && phase == PodPhase::Running,
        revision: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(build::REVISION_LABEL))
            .cloned(),
        ready,
    }
}

impl Workload for KubeBackend {
    async fn observe(&self, rc: &RaftCluster) -> Result<Option<WorkloadState>, Error> {
        let ns = Self::ns(rc);
        let Some(sts) = self
            .api::<StatefulSet>(rc)
            .get_opt(build::cluster_name(rc))
            .await?
        else {
            return Ok(None);
        };
        let replicas = sts
            .spec
            .replicas
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let revision = sts
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(build::REVISION_LABEL))
            .cloned()
            .unwrap_or_default();
        let selector = format!("{}={}", build::CLUSTER_LABEL, build::cluster_name(rc));
        let pods = self
            .api::<Pod>(rc)
            .list(&ListParams::default().labels(&selector))
            .await?;
        let by_ordinal: std::collections::BTreeMap<u32, &Pod> = pods
            .items
            .iter()
            .filter_map(|p| Some((build::ordinal_of(rc, p.metadata.name.as_deref()?)?, p)))
            .collect();
        let highest = by_ordinal.keys().next_back().map_or(0, |o| o + 1);
        let pods = (0..replicas.max(highest))
            .map(|o| pod_state(rc, &ns, o, by_ordinal.get(&o).copied()))
            .collect();
        // The NetworkPolicy lives outside the pods' revision: a missing or
        // stale one is applied again by the next ApplyWorkload.
        // Turned off, one this cluster made is deleted by the same step.
        let live = self
            .api::<NetworkPolicy>(rc)
            .get_opt(&build::network_policy_name(rc))
            .await?;
        let live = live.as_ref().map(|p| &p.metadata);
        let drifted = if rc.spec.network_policy.enabled {
            let desired = build::network_policy(rc, &self.operator);
            build::drift("the NetworkPolicy", live, &desired.metadata)
        } else {
            build::unwanted_policy(rc, live)
        };
        Ok(Some(WorkloadState {
            replicas,
            revision,
            pods,
            drifted,
        }))
    }

    async fn apply(&self, rc: &RaftCluster, replicas: u32, revision: &str) -> Result<(), Error> {
        let ns = Self::ns(rc);
        let cm = build::config_map(rc).map_err(|e| Error::Workload(e.to_string()))?;
        self.apply::<ConfigMap>(rc, &cm).await?;
        self.apply::<Service>(rc, &build::peers_service(rc)).await?;
        self.apply::<Service>(rc, &build::client_service(rc))
            .await?;
        self.apply::<PodDisruptionBudget>(rc, &build::pod_disruption_budget(rc))
            .await?;
        // Before the StatefulSet: its pods never serve unguarded. Turned
        // off, the policy this cluster made is deleted (a user's policy of
        // that name is left alone).
        let policies = self.api::<NetworkPolicy>(rc);
        if rc.spec.network_policy.enabled {
            let policy = build::network_policy(rc, &self.operator);
            self.apply::<NetworkPolicy>(rc, &policy).await?;
        } else if let Some(live) = policies.get_opt(&build::network_policy_name(rc)).await? {
            if build::unwanted_policy(rc, Some(&live.metadata)).is_some() {
                gone_is_done(
                    policies
                        .delete(&build::network_policy_name(rc), &DeleteParams::default())
                        .await,
                )?;
            }
        }
        let sts = build::stateful_set(rc, &ns, replicas, revision)
            .map_err(|e| Error::Workload(e.to_string()))?;
        self.apply::<StatefulSet>(rc, &sts).await
    }

    async fn restart_pod(&self, rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        // Already gone is fine: the StatefulSet recreates it.
        gone_is_done(
            self.api::<Pod>(rc)
                .delete(pod, &DeleteParams::default())
                .await,
        )
    }

    async fn wipe_pod(&self, rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        // The claim goes first (it is released once the pod is gone), then
        // the pod; the StatefulSet recreates both, the volume empty.
        gone_is_done(
            self.api::<PersistentVolumeClaim>(rc)
                .delete(&build::pvc_name(pod), &DeleteParams::default())
                .await,
        )?;
        self.restart_pod(rc, pod).await
    }

    async fn shrink(
        &self,
        rc: &RaftCluster,
        replicas: u32,
        delete_volumes: bool,
    ) -> Result<(), Error> {
        let ns = Self::ns(rc);
        let Some(current) = self.observe(rc).await? else {
            return Ok(());
        };
        let before = current.replicas;
        let sts = build::stateful_set(rc, &ns, replicas, &current.revision)
            .map_err(|e| Error::Workload(e.to_string()))?;
        self.apply::<StatefulSet>(rc, &sts).await?;
        if delete_volumes {
            for o in replicas..before {
                let pvc = build::pvc_name(&build::pod_name(rc, o));
                gone_is_done(
                    self.api::<PersistentVolumeClaim>(rc)
                        .delete(&pvc, &DeleteParams::default())
                        .await,
                )?;
            }
        }
        Ok(())
    }

    fn pod_addr(&self, rc: &RaftCluster, ordinal: u32) -> String {
        build::pod_addr(rc, &Self::ns(rc), ordinal)
    }

    /// The kubelet brings a changed Secret to a pod's volume at its next
    /// sync of the pod (every minute by default) plus its cache's delay;
    /// three minutes leaves a margin.
    fn secret_propagation(&self) -> std::time::Duration {
        SECRET_PROPAGATION
    }

    async fn read_secret(&self, rc: &RaftCluster, name: &str) -> Result<Option<Secret>, Error> {
        Ok(self.api::<Secret>(rc).get_opt(name).await?)
    }

    async fn apply_secret(&self, rc: &RaftCluster, secret: &Secret) -> Result<(), Error> {
        // Keys this field manager applied before and that are gone now
        // are removed by the apply itself.
        self.apply::<Secret>(rc, secret).await
    }

    async fn write_status(
        &self,
        rc: &RaftCluster,
        status: &RaftClusterStatus,
    ) -> Result<(), Error> {
        let patch = serde_json::json!({
            "apiVersion": "raftkit.io/v1alpha1",
            "kind": "RaftCluster",
            "status": status,
        });
        self.api::<RaftCluster>(rc)
            .patch_status(
                build::cluster_name(rc),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    async fn event(
        &self,
        rc: &RaftCluster,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let ev = Event {
            type_: match kind {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        self.recorder.publish(&ev, &rc.object_ref(&())).await?;
        Ok(())
    }
}
