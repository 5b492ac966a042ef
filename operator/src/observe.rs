//! Observe: what the workload backend says about the pods, what the
//! nodes say about themselves (`identity`) and the group
//! (`cluster_status`), and whether the cluster's TLS Secrets are in place
//! and current at the pass's `now`, turned into the plan's
//! [`Observation`]. The only module that talks to nodes to look; acting is
//! `act`'s. It also makes what the pass's step needs and the plan does
//! not: the Secrets to write, and the admin identity both it and `act`
//! present to the members ([`admin_client`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use raftkit_client::{AdminClient, ClusterStatus, IdentityState};

use crate::backend::{PodState, Workload, WorkloadState};
use crate::crd::RaftCluster;
use crate::plan::{
    Desired, IdentityView, Observation, PodView, RaftMember, RaftView, Recorded, ReplicaState,
    TlsView, WorkloadView,
};
use crate::tls;
use crate::Error;

/// How long one node may take to answer the operator's questions.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One pass's view: the plan's observation, and what acting on it needs.
pub struct Observed {
    pub observation: Observation,
    /// The group as its members described it (for the status).
    pub group: Option<ClusterStatus>,
    pub tls: TlsMaterial,
}

/// The TLS material of a pass (empty with TLS off).
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// The operator's Secrets to write, in order (the plan's `ApplyTls`).
    pub to_write: Vec<Secret>,
    /// The identity the operator presents to the members: its admin
    /// certificate, from its own Secret or the user's `adminSecretName`.
    pub admin: Option<Arc<raftkit_tls::Tls>>,
    /// When the first of the operator's certificates is due for renewal,
    /// or the next step of a CA rotation.
    pub renew_at: Option<SystemTime>,
}

impl std::fmt::Debug for TlsMaterial {
    /// Names only: Secrets hold private keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .to_write
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap_or(""))
            .collect();
        f.debug_struct("TlsMaterial")
            .field("to_write", &names)
            .field("admin", &self.admin.is_some())
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

/// The admin client of a pass for `addrs`, over mutual TLS with the admin
/// identity when there is one: the one place `observe` and `act` make it.
pub fn admin_client(
    rc: &RaftCluster,
    addrs: Vec<String>,
    tls: &TlsMaterial,
    timeout: Duration,
) -> Result<AdminClient, Error> {
    let admin =
        AdminClient::new(addrs, rc.spec.state_machine.as_str(), timeout).map_err(Error::client)?;
    Ok(match &tls.admin {
        Some(identity) => admin.with_tls(identity.clone()),
        None => admin,
    })
}

/// Observes the cluster `rc` through `workload` and the nodes' admin API,
/// at `now` (when certificates are judged due).
pub async fn observe<W: Workload>(
    rc: &RaftCluster,
    workload: &W,
    now: SystemTime,
) -> Result<Observed, Error> {
    let state = workload.observe(rc).await?;
    let desired = Desired {
        replicas: u32::try_from(rc.spec.replicas).unwrap_or(0),
        paused: rc.spec.paused,
        refused: refused_change(rc),
        revision: crate::build::revision(rc),
    };
    let (tls_view, tls) = observe_tls(rc, workload, state.as_ref(), desired.replicas, now).await?;
    let recorded = recorded(rc);
    let Some(state) = state else {
        return Ok(Observed {
            observation: Observation {
                desired,
                recorded,
                workload: None,
                raft: None,
                tls: tls_view,
            },
            group: None,
            tls,
        });
    };
    let addrs: Vec<String> = state.pods.iter().map(|p| p.addr.clone()).collect();
    let (pods, status) = if addrs.is_empty() {
        (Vec::new(), None)
    } else {
        let admin = admin_client(rc, addrs, &tls, ADMIN_TIMEOUT)?;
        let identities = futures_identities(&admin, &state).await;
        let pods = state
            .pods
            .iter()
            .zip(identities)
            .map(|(p, identity)| pod_view(p, identity))
            .collect();
        (pods, Some(admin.cluster_status().await))
    };
    let raft = status.as_ref().and_then(raft_view);
    Ok(Observed {
        observation: Observation {
            desired,
            recorded,
            workload: Some(WorkloadView {
                replicas: state.replicas,
                revision: state.revision.clone(),
                pods,
                drifted: state.drifted.clone(),
            }),
            raft,
            tls: tls_view,
        },
        group: status,
        tls,
    })
}

/// The cluster's TLS at `now`. With the operator's certificates: its
/// Secrets as they are against what they must hold for every pod that
/// runs or is about to (`0..max(desired, the workload's replicas, its
/// pods)`, each named by the host the workload gives it), so a scale-up's
/// pods have theirs before they start. With the user's: both Secrets
/// exist. The admin identity either way.
async fn observe_tls<W: Workload>(
    rc: &RaftCluster,
    workload: &W,
    state: Option<&WorkloadState>,
    desired: u32,
    now: SystemTime,
) -> Result<(TlsView, TlsMaterial), Error> {
    let Some(spec) = rc.spec.tls.as_ref().filter(|t| t.enabled) else {
        return Ok((TlsView::Ready, TlsMaterial::default()));
    };
    let unusable = |why: String| Ok((TlsView::Unusable(why), TlsMaterial::default()));
    if let (Some(nodes), Some(admin)) = (&spec.secret_name, &spec.admin_secret_name) {
        let nodes_secret = workload.read_secret(rc, nodes).await?;
        let admin_secret = workload.read_secret(rc, admin).await?;
        let (Some(nodes_secret), Some(admin_secret)) = (nodes_secret, admin_secret) else {
            return unusable(format!(
                "spec.tls names Secrets {nodes} and {admin}; not both exist"
            ));
        };
        return match admin_identity(&admin_secret, Some(&nodes_secret)) {
            Ok(admin) => Ok((
                TlsView::Ready,
                TlsMaterial {
                    to_write: Vec::new(),
                    admin: Some(admin),
                    renew_at: None,
                },
            )),
            Err(why) => unusable(why),
        };
    }
    let current = tls::OwnedSecrets {
        ca: workload.read_secret(rc, &tls::ca_secret_name(rc)).await?,
        nodes: workload
            .read_secret(rc, &tls::nodes_secret_name(rc))
            .await?,
        admin: workload
            .read_secret(rc, &tls::admin_secret_name(rc))
            .await?,
        client: workload
            .read_secret(rc, &tls::client_secret_name(rc))
            .await?,
    };
    let pods = state.map_or(0, |s| {
        s.replicas
            .max(u32::try_from(s.pods.len()).unwrap_or(u32::MAX))
    });
    let hosts: tls::PodHosts = (0..desired.max(pods))
        .map(|o| {
            let addr = workload.pod_addr(rc, o);
            (o, raftkit_tls::host_of(&addr).to_string())
        })
        .collect();
    let namespace = rc.metadata.namespace.as_deref().unwrap_or("default");
    let propagation = workload.secret_propagation();
    let due = match tls::owned_secrets(rc, namespace, &hosts, &current, now, propagation) {
        Ok(d) => d,
        Err(e) => return unusable(e.to_string()),
    };
    let admin = match raftkit_tls::Tls::from_pem(
        Some((&due.admin.cert_pem, &due.admin.key_pem)),
        &due.ca_pem,
    ) {
        Ok(t) => t,
        Err(e) => return unusable(format!("the admin certificate: {e}")),
    };
    let view = due.due.map_or(TlsView::Ready, TlsView::Due);
    Ok((
        view,
        TlsMaterial {
            to_write: due.to_write,
            admin: Some(admin),
            renew_at: due.renew_at,
        },
    ))
}

/// The admin identity in a Secret (`tls.crt`, `tls.key`, and `ca.crt` of
/// it or of `ca_from`); why not, naming the Secret.
fn admin_identity(
    secret: &Secret,
    ca_from: Option<&Secret>,
) -> Result<Arc<raftkit_tls::Tls>, String> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let (cert, ca) = tls::client_identity(secret, ca_from).map_err(|e| e.to_string())?;
    raftkit_tls::Tls::from_pem(Some((&cert.cert_pem, &cert.key_pem)), &ca)
        .map_err(|e| format!("Secret {name}: {e}"))
}

async fn futures_identities(
    admin: &AdminClient,
    state: &WorkloadState,
) -> Vec<Option<IdentityView>> {
    let asks = state.pods.iter().map(|p| async move {
        if !p.running {
            return None;
        }
        admin.identity(&p.addr).await.ok().map(|i| IdentityView {
            id: i.id,
            state: match i.state {
                IdentityState::Empty => ReplicaState::Empty,
                IdentityState::Uninitialized => ReplicaState::Uninitialized,
                IdentityState::Member => ReplicaState::Member,
                IdentityState::Removed => ReplicaState::Removed,
                IdentityState::Unknown => ReplicaState::Unknown,
            },
            cluster_id: i.cluster_id,
        })
    });
    futures::future::join_all(asks).await
}

fn pod_view(p: &PodState, identity: Option<IdentityView>) -> PodView {
    PodView {
        ordinal: p.ordinal,
        name: p.name.clone(),
        addr: p.addr.clone(),
        phase: p.phase,
        revision: p.revision.clone(),
        identity,
        ready: p.ready,
    }
}

/// What the status remembers, as the plan needs it.
pub fn recorded(rc: &RaftCluster) -> Recorded {
    let Some(s) = &rc.status else {
        return Recorded::default();
    };
    let bootstrap = s
        .operation
        .as_ref()
        .filter(|op| op.kind == "Bootstrap")
        .and_then(|op| {
            let id = u64::from_str_radix(op.raft_id.as_deref()?, 16).ok()?;
            Some((op.pod.clone()?, id))
        });
    Recorded {
        bootstrapped: s.bootstrapped,
        bootstrap,
        cluster_id: s.cluster_id.clone(),
    }
}

/// The group as the plan sees it; `None` when no member knows a
/// configuration (nothing answered, or only empty replicas did).
pub fn raft_view(s: &ClusterStatus) -> Option<RaftView> {
    if s.voters.is_empty() && s.voters_outgoing.is_empty() {
        return None;
    }
    let in_list = |list: &[raftkit_client::MemberId], id: u64| list.iter().any(|m| m.id == id);
    let members = s
        .members
        .iter()
        .filter(|m| {
            in_list(&s.voters, m.id)
                || in_list(&s.learners, m.id)
                || in_list(&s.voters_outgoing, m.id)
        })
        .map(|m| RaftMember {
            id: m.id,
            addr: m.addr.clone(),
            voter: in_list(&s.voters, m.id),
            learner: in_list(&s.learners, m.id),
            outgoing: in_list(&s.voters_outgoing, m.id),
            caught_up: m.caught_up,
            reachable: m.reachable,
        })
        .collect();
    Some(RaftView {
        leader: s.leader.as_ref().map(|l| l.id),
        conf_index: s.conf_index,
        cluster_id: s.cluster_id.clone(),
        members,
    })
}

/// A spec change the cluster cannot honour: the state machine, the
/// storage class or mutual TLS on or off of a bootstrapped cluster.
pub fn refused_change(rc: &RaftCluster) -> Option<String> {
    let s = rc.status.as_ref().filter(|s| s.bootstrapped)?;
    let on_off = |on: bool| if on { "on" } else { "off" };
    if let Some(was) = s.tls_enabled {
        if was != rc.tls_enabled() {
            return Some(format!(
                "spec.tls.enabled cannot change once the cluster is bootstrapped (TLS is {}; asked for {}): every member would have to switch at the same moment",
                on_off(was),
                on_off(rc.tls_enabled())
            ));
        }
    }
    if let Some(sm) = s.state_machine {
        if sm != rc.spec.state_machine {
            return Some(format!(
                "spec.stateMachine cannot change once the cluster is bootstrapped (it runs {}; asked for {})",
                sm.as_str(),
                rc.spec.state_machine.as_str()
            ));
        }
    }
    if s.storage_class_name != rc.spec.storage.storage_class_name {
        return Some(format!(
            "spec.storage.storageClassName cannot change after creation (it is {}; asked for {})",
            s.storage_class_name
                .as_deref()
                .unwrap_or("the default class"),
            rc.spec
                .storage
                .storage_class_name
                .as_deref()
                .unwrap_or("the default class")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RaftClusterStatus, StateMachine};

    fn rc(yaml: &str, status: Option<RaftClusterStatus>) -> RaftCluster {
        let mut r: RaftCluster = serde_yaml::from_str(yaml).expect("parses");
        r.status = status;
        r
    }

    #[test]
    fn the_state_machine_and_storage_class_cannot_change_after_bootstrap() {
        let bootstrapped = RaftClusterStatus {
            bootstrapped: true,
            state_machine: Some(StateMachine::Counter),
            storage_class_name: Some("fast".into()),
            ..RaftClusterStatus::default()
        };
        let same = "metadata: {name: d}\nspec: {replicas: 3, storage: {storageClassName: fast}}\n";
        assert_eq!(refused_change(&rc(same, Some(bootstrapped.clone()))), None);
        let kv = "metadata: {name: d}\nspec: {replicas: 3, stateMachine: kv, storage: {storageClassName: fast}}\n";
        let why = refused_change(&rc(kv, Some(bootstrapped.clone()))).expect("refused");
        assert!(
            why.contains("spec.stateMachine") && why.contains("runs counter"),
            "{why}"
        );
        let slow = "metadata: {name: d}\nspec: {replicas: 3, storage: {storageClassName: slow}}\n";
        let why = refused_change(&rc(slow, Some(bootstrapped))).expect("refused");
        assert!(
            why.contains("storageClassName") && why.contains("fast"),
            "{why}"
        );
        // Before bootstrap anything goes.
        assert_eq!(refused_change(&rc(kv, None)), None);
    }

    #[test]
    fn mutual_tls_cannot_be_turned_on_or_off_after_bootstrap() {
        let with = |tls: bool| RaftClusterStatus {
            bootstrapped: true,
            tls_enabled: Some(tls),
            ..RaftClusterStatus::default()
        };
        let on = "metadata: {name: d}\nspec: {replicas: 3, tls: {enabled: true}}\n";
        let off = "metadata: {name: d}\nspec: {replicas: 3}\n";
        assert_eq!(refused_change(&rc(on, Some(with(true)))), None);
        assert_eq!(refused_change(&rc(off, Some(with(false)))), None);
        let why = refused_change(&rc(on, Some(with(false)))).expect("refused");
        assert!(
            why.contains("spec.tls.enabled") && why.contains("TLS is off; asked for on"),
            "{why}"
        );
        assert!(refused_change(&rc(off, Some(with(true)))).is_some());
        assert_eq!(refused_change(&rc(on, None)), None, "before bootstrap");
    }

    /// A workload in memory: a "StatefulSet" of `replicas` without pods
    /// (so no node is asked anything) and its Secrets.
    #[derive(Default)]
    struct Fake {
        replicas: std::sync::Mutex<Option<(u32, String)>>,
        secrets: std::sync::Mutex<std::collections::BTreeMap<String, Secret>>,
    }

    impl Workload for Fake {
        async fn observe(&self, _: &RaftCluster) -> Result<Option<WorkloadState>, Error> {
            Ok(self
                .replicas
                .lock()
                .expect("lock")
                .clone()
                .map(|(replicas, revision)| WorkloadState {
                    replicas,
                    revision,
                    pods: Vec::new(),
                    drifted: None,
                }))
        }
        async fn apply(&self, _: &RaftCluster, replicas: u32, rev: &str) -> Result<(), Error> {
            *self.replicas.lock().expect("lock") = Some((replicas, rev.to_string()));
            Ok(())
        }
        async fn restart_pod(&self, _: &RaftCluster, _: &str) -> Result<(), Error> {
            Ok(())
        }
        async fn wipe_pod(&self, _: &RaftCluster, _: &str) -> Result<(), Error> {
            Ok(())
        }
        async fn shrink(&self, _: &RaftCluster, replicas: u32, _: bool) -> Result<(), Error> {
            if let Some((r, _)) = self.replicas.lock().expect("lock").as_mut() {
                *r = replicas;
            }
            Ok(())
        }
        fn pod_addr(&self, _: &RaftCluster, ordinal: u32) -> String {
            format!("127.0.0.1:{}", 9000 + ordinal)
        }
        fn secret_propagation(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
        async fn read_secret(&self, _: &RaftCluster, name: &str) -> Result<Option<Secret>, Error> {
            Ok(self.secrets.lock().expect("lock").get(name).cloned())
        }
        async fn apply_secret(&self, _: &RaftCluster, secret: &Secret) -> Result<(), Error> {
            let name = secret.metadata.name.clone().expect("a name");
            self.secrets
                .lock()
                .expect("lock")
                .insert(name, secret.clone());
            Ok(())
        }
        async fn write_status(&self, _: &RaftCluster, _: &RaftClusterStatus) -> Result<(), Error> {
            Ok(())
        }
        async fn event(
            &self,
            _: &RaftCluster,
            _: crate::backend::EventType,
            _: &str,
            _: &str,
        ) -> Result<(), Error> {
            Ok(())
        }
    }

    fn plan_of(o: &Observed) -> crate::plan::Action {
        crate::plan::plan(
            &o.observation,
            crate::plan::Options {
                retain_on_scale_down: true,
            },
        )
    }

    /// Observe, plan and act as passes do: the Secrets before the first
    /// pods, a new replica's certificate as soon as the spec asks for it
    /// (the plan then grows the workload), each named by the host the
    /// workload gives the pod; then nothing, until a renewal is due.
    #[tokio::test]
    async fn the_certificates_of_pods_about_to_start_are_written_first() {
        use crate::plan::Action;
        let fake = Fake::default();
        let mut r = rc(
            "metadata: {name: demo, namespace: ns}\nspec: {replicas: 3, tls: {enabled: true}}\n",
            None,
        );
        let now = SystemTime::now();
        let pass = |r: RaftCluster, now: SystemTime| {
            let fake = &fake;
            async move {
                let o = observe(&r, fake, now).await.expect("observe");
                let a = plan_of(&o);
                crate::act::act(&r, fake, &o, &a).await.expect("act");
                (a, o)
            }
        };
        let (a, o) = pass(r.clone(), now).await;
        assert!(
            matches!(&a, Action::ApplyTls { reason } if reason.starts_with("a new CA; demo-0, demo-1, demo-2")),
            "{a:?}"
        );
        assert_eq!(o.tls.to_write.len(), 4);
        assert!(o.tls.admin.is_some());
        let (a, o) = pass(r.clone(), now).await;
        assert!(
            matches!(a, Action::ApplyWorkload { replicas: 3, .. }),
            "{a:?}"
        );
        assert!(o.tls.to_write.is_empty());
        let nodes = fake.secrets.lock().expect("lock")["demo-tls-nodes"].clone();
        let cert = raftkit_tls::PeerIdentity::from_der(
            &<rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
                &nodes.data.as_ref().expect("data")["demo-2.crt"].0,
            )
            .expect("pem"),
        )
        .expect("cert");
        assert!(cert.names("127.0.0.1"), "the host the workload gives it");

        r.spec.replicas = 4;
        let (a, _) = pass(r.clone(), now).await;
        assert_eq!(
            a,
            Action::ApplyTls {
                reason: "demo-3: new".into()
            },
            "demo-3's certificate before its pod"
        );
        let (a, o) = pass(r.clone(), now).await;
        assert_eq!(o.observation.tls, TlsView::Ready, "then on (plan: {a:?})");
        assert!(o.tls.to_write.is_empty());
        let later = now + Duration::from_secs(61 * 24 * 3600);
        let (a, _) = pass(r.clone(), later).await;
        assert!(
            matches!(&a, Action::ApplyTls { reason } if reason.contains("renewed")),
            "{a:?}"
        );
    }
}
