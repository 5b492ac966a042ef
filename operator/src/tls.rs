//! The certificates of a RaftCluster's mutual TLS when the operator makes
//! them (`spec.tls.enabled` without `secretName`): a CA per cluster, each
//! pod's certificate (naming the host the pod advertises: its stable DNS
//! name on Kubernetes), the operator's admin certificate and a client
//! certificate for applications; when one is due for renewal; what a pass
//! must write ([`owned_secrets`]); and what a pod mounts. Pure: no client,
//! no I/O (key generation aside), the caller passes the time.
//!
//! ```text
//!  <cluster>-tls-ca      ca.crt ca.key            ClusterCa::generate / from_secret
//!        │ signs
//!        ├─► <cluster>-tls-nodes   ca.crt <pod>.crt <pod>.key   node_certs (OU raftkit-node)
//!        ├─► <cluster>-tls-admin   tls.crt tls.key ca.crt       admin_secret (OU raftkit-admin)
//!        └─► <cluster>-tls-client  tls.crt tls.key ca.crt       client_secret (OU raftkit-client)
//! ```
//!
//! Renewal needs no restart: the pods mount the nodes' Secret as a whole
//! directory (never by `subPath`), so the kubelet swaps the files in place
//! and the node reloads them. Certificates are not part of the pod
//! revision (`build::revision`), so a renewal rolls nothing.
//!
//! Keys are ECDSA P-256 (rcgen's default, which rustls takes), written as
//! PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{EnvVar, Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::Resource;
use raftkit_tls::issue::{key_belongs, Ca, LeafSpec};
use x509_parser::certificate::X509Certificate;

use raftkit_proto::settings;

use crate::build::{cluster_name, labels, pod_addr, pod_name, UnknownSetting};
use crate::crd::RaftCluster;

/// Organizational unit of a member's certificate (the node's own
/// constant: the node reads roles from it).
pub const OU_NODE: &str = raftkit_tls::ROLE_NODE;
/// Organizational unit of a certificate that may change membership,
/// transfer leadership, snapshot and set flags.
pub const OU_ADMIN: &str = raftkit_tls::ROLE_ADMIN;
/// Organizational unit of an application's certificate: Counter and KV
/// calls and status.
pub const OU_CLIENT: &str = raftkit_tls::ROLE_CLIENT;
/// Organization of every certificate the operator issues.
pub use raftkit_tls::issue::ORGANIZATION;

const DAY: u64 = 24 * 60 * 60;
/// How long the CA is valid. Its renewal is not automated yet (it needs a
/// trust bundle of old and new CA while the leaves move over).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * DAY);
/// How long a member's, the admin's and the client's certificates are
/// valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * DAY);
/// Certificates start this long before they are issued, so a node whose
/// clock is a little behind the operator's accepts them at once.
pub use raftkit_tls::issue::BACKDATE;
/// Renew a certificate once less than a third of its lifetime remains (30
/// days of 90).
pub const RENEW_WHEN_REMAINING: LifetimeShare = LifetimeShare {
    numerator: 1,
    denominator: 3,
};

/// Where a pod sees its Secret of certificates.
pub const TLS_DIR: &str = "/etc/raftkit/tls";
/// The pod volume of that Secret.
pub const TLS_VOLUME: &str = "tls";
/// Keys of the Secrets.
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The Secret type of a certificate and its key (`tls.crt`, `tls.key`).
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
const SECRET_TYPE_OPAQUE: &str = "Opaque";

/// What went wrong with a certificate, a key or a Secret; each names what.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The issuer refused to make a key or a certificate.
    #[error("issuing {what}: {source}")]
    Issue {
        what: String,
        #[source]
        source: raftkit_tls::TlsError,
    },
    /// A PEM that should hold one X.509 certificate does not.
    #[error("{what}: not a PEM X.509 certificate: {problem}")]
    BadCertificate { what: String, problem: String },
    /// A PEM that should hold a private key does not, or the CA cannot be
    /// rebuilt from it.
    #[error("{what}: {source}")]
    BadKey {
        what: String,
        #[source]
        source: raftkit_tls::TlsError,
    },
    /// The private key is not the certificate's.
    #[error("{what}: the private key does not belong to the certificate")]
    KeyMismatch { what: String },
    /// A Secret lacks a key it must have.
    #[error("Secret {secret}: no key `{key}`")]
    MissingKey { secret: String, key: String },
    /// A Secret's value is not text.
    #[error("Secret {secret}: key `{key}` is not UTF-8 PEM")]
    NotUtf8 { secret: String, key: String },
    /// A time no certificate can carry.
    #[error("time {0:?} is before 1970 or past what X.509 can hold")]
    BadTime(SystemTime),
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Whom a certificate is for: its organizational unit, and what it may
/// authenticate as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A member: server and client certificate at once.
    Node,
    /// The operator.
    Admin,
    /// Applications.
    Client,
}

impl Role {
    pub fn organizational_unit(self) -> &'static str {
        match self {
            Role::Node => OU_NODE,
            Role::Admin => OU_ADMIN,
            Role::Client => OU_CLIENT,
        }
    }
}

/// A share of a certificate's lifetime, `numerator / denominator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeShare {
    pub numerator: u32,
    pub denominator: u32,
}

/// A certificate and its private key, both PEM (shown without the key).
pub use raftkit_tls::issue::Issued as IssuedCert;

/// Why a certificate was issued in place of what a Secret held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// The Secret held none for it (a new pod, or a new Secret).
    Missing,
    /// Less than [`RENEW_WHEN_REMAINING`] of its lifetime remained, or it
    /// expired.
    Renewal,
    /// Its names or its role are not the ones it should carry now.
    Changed,
    /// Another CA signed it.
    OtherCa,
    /// It, or its key, could not be read (the reason).
    Unreadable(String),
}

/// A Secret to apply, and the certificates in it that are new.
#[derive(Debug)]
pub struct CertSecret {
    pub secret: Secret,
    /// (pod or role, why) of every certificate issued rather than kept.
    pub issued: Vec<(String, Reissue)>,
}

// ------------------------------------------------------------------ names

/// The CA's Secret: `ca.crt`, `ca.key`.
pub fn ca_secret_name(rc: &RaftCluster) -> String {
    format!("{}-tls-ca", cluster_name(rc))
}

/// The members' Secret: `ca.crt`, and `<pod>.crt`, `<pod>.key` per pod.
pub fn nodes_secret_name(rc: &RaftCluster) -> String {
    format!("{}-tls-nodes", cluster_name(rc))
}

/// The operator's admin certificate: `tls.crt`, `tls.key`, `ca.crt`.
pub fn admin_secret_name(rc: &RaftCluster) -> String {
    format!("{}-tls-admin", cluster_name(rc))
}

/// The applications' client certificate: `tls.crt`, `tls.key`, `ca.crt`.
pub fn client_secret_name(rc: &RaftCluster) -> String {
    format!("{}-tls-client", cluster_name(rc))
}

/// Key of pod `pod`'s certificate in the members' Secret.
pub fn pod_cert_key(pod: &str) -> String {
    format!("{pod}.crt")
}

/// Key of pod `pod`'s private key in the members' Secret.
pub fn pod_key_key(pod: &str) -> String {
    format!("{pod}.key")
}

/// Pod `ordinal`'s stable DNS name: the host part of the address it
/// advertises ([`pod_addr`]), taken as the node takes it
/// (`raftkit_tls::host_of`), which its certificate must name.
pub fn pod_dns_name(rc: &RaftCluster, namespace: &str, ordinal: u32) -> String {
    raftkit_tls::host_of(&pod_addr(rc, namespace, ordinal)).to_string()
}

/// The pods member certificates are issued for: ordinal → the host of the
/// address the pod advertises, which its certificate must name. On
/// Kubernetes its stable DNS name ([`dns_hosts`]); the local backend's
/// pods advertise `127.0.0.1` (processes) or a name on a Docker network.
pub type PodHosts = BTreeMap<u32, String>;

/// Pods `ordinals` by their stable DNS names ([`pod_dns_name`]).
pub fn dns_hosts(rc: &RaftCluster, namespace: &str, ordinals: std::ops::Range<u32>) -> PodHosts {
    ordinals
        .map(|o| (o, pod_dns_name(rc, namespace, o)))
        .collect()
}

/// The names the certificate of a pod advertising `host` carries:
/// - `host`, which it advertises and peers and the operator dial (on
///   Kubernetes its stable DNS name `<pod>.<cluster>-peers.<namespace>.svc`);
/// - the client Service's names (`<cluster>`, `<cluster>.<namespace>`,
///   `<cluster>.<namespace>.svc`), which applications dial and which lead
///   to any ready member;
/// - in sidecar mode (`spec.template`) `localhost` and `127.0.0.1`, which
///   the app beside its node dials. Probes need neither: the kubelet does
///   not check the certificate of an HTTPS probe. Without a sidecar no one
///   dials a member by `localhost`, so its certificate does not claim it.
///
/// Each name once (a local pod advertising `127.0.0.1` in sidecar mode).
pub fn node_sans(rc: &RaftCluster, namespace: &str, host: &str) -> Vec<String> {
    let cluster = cluster_name(rc);
    let mut sans = vec![
        host.to_string(),
        cluster.to_string(),
        format!("{cluster}.{namespace}"),
        format!("{cluster}.{namespace}.svc"),
    ];
    if rc.spec.template.is_some() {
        sans.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    }
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

// ----------------------------------------------------------------- the CA

/// A cluster's CA: its certificate, and the key that signs the others
/// (issued by `raftkit_tls::issue`, the one issuer).
pub struct ClusterCa {
    ca: Ca,
}

impl fmt::Debug for ClusterCa {
    /// Without the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.ca.issued.cert_pem)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `rc`, valid [`CA_VALIDITY`] from `now`.
    pub fn generate(rc: &RaftCluster, now: SystemTime) -> Result<Self> {
        let ca = Ca::generate(
            &format!("RaftKit CA {}", cluster_name(rc)),
            now,
            CA_VALIDITY,
        )
        .map_err(|source| TlsError::Issue {
            what: format!("the CA of {}", cluster_name(rc)),
            source,
        })?;
        Ok(ClusterCa { ca })
    }

    /// The CA read back from its PEM certificate and key (`what` names
    /// where they came from, for errors).
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self> {
        match key_belongs(cert_pem, key_pem) {
            Ok(true) => {}
            Ok(false) => {
                return Err(TlsError::KeyMismatch {
                    what: what.to_string(),
                })
            }
            Err(source) => {
                return Err(TlsError::BadKey {
                    what: what.to_string(),
                    source,
                })
            }
        }
        let ca = Ca::from_pem(IssuedCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
        .map_err(|e| TlsError::BadCertificate {
            what: what.to_string(),
            problem: e.to_string(),
        })?;
        Ok(ClusterCa { ca })
    }

    /// The CA read back from its Secret ([`ca_secret_name`]).
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let cert = secret_text(secret, CA_CRT)?;
        let key = secret_text(secret, CA_KEY)?;
        Self::from_pem(&cert, &key, &format!("Secret {name}"))
    }

    /// The CA's certificate, PEM: what every party trusts.
    pub fn cert_pem(&self) -> &str {
        &self.ca.issued.cert_pem
    }

    /// The CA's Secret, owned by `rc`.
    pub fn secret(&self, rc: &RaftCluster) -> Secret {
        secret(
            rc,
            ca_secret_name(rc),
            SECRET_TYPE_OPAQUE,
            [
                (CA_CRT.to_string(), self.ca.issued.cert_pem.clone()),
                (CA_KEY.to_string(), self.ca.issued.key_pem.clone()),
            ],
        )
    }

    /// A certificate for `role` named `common_name` with `sans`, valid
    /// [`LEAF_VALIDITY`] from `now`, with a new key.
    pub fn issue(
        &self,
        role: Role,
        common_name: &str,
        sans: &[String],
        now: SystemTime,
    ) -> Result<IssuedCert> {
        let what = format!(
            "the {} certificate {common_name}",
            role.organizational_unit()
        );
        let spec = LeafSpec::at(
            common_name,
            role.organizational_unit(),
            sans.to_vec(),
            now,
            LEAF_VALIDITY,
        );
        self.ca
            .issue(&spec)
            .map_err(|source| TlsError::Issue { what, source })
    }

    /// Pod `ordinal`'s certificate, the pod advertising `host`: common
    /// name the pod's name (a common name holds at most 64 characters, a
    /// DNS name may not fit), names [`node_sans`].
    pub fn issue_node(
        &self,
        rc: &RaftCluster,
        namespace: &str,
        ordinal: u32,
        host: &str,
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.issue(
            Role::Node,
            &pod_name(rc, ordinal),
            &node_sans(rc, namespace, host),
            now,
        )
    }

    /// Why `cert` cannot stay a certificate for `role` named `sans`, or
    /// `None` when it can: it parses, `key_pem` is its key, this CA signed
    /// it, it names exactly `sans` with `role`'s organizational unit, and
    /// more than [`RENEW_WHEN_REMAINING`] of its lifetime is left.
    pub fn reissue_reason(
        &self,
        cert: &IssuedCert,
        role: Role,
        sans: &[String],
        now: SystemTime,
    ) -> Option<Reissue> {
        match key_belongs(&cert.cert_pem, &cert.key_pem) {
            Ok(true) => {}
            Ok(false) => {
                return Some(Reissue::Unreadable(
                    "the key does not belong to the certificate".into(),
                ))
            }
            Err(e) => return Some(Reissue::Unreadable(e.to_string())),
        }
        let checked = with_cert(self.cert_pem(), "the CA", |ca| {
            with_cert(&cert.cert_pem, "the certificate", |c| {
                if c.verify_signature(Some(ca.public_key())).is_err() {
                    Some(Reissue::OtherCa)
                } else if !names_exactly(c, role, sans) {
                    Some(Reissue::Changed)
                } else {
                    None
                }
            })
        })
        .and_then(|inner| inner);
        match checked {
            Err(e) => Some(Reissue::Unreadable(e.to_string())),
            Ok(Some(why)) => Some(why),
            Ok(None) => match needs_renewal(&cert.cert_pem, now, RENEW_WHEN_REMAINING) {
                Ok(true) => Some(Reissue::Renewal),
                Ok(false) => None,
                Err(e) => Some(Reissue::Unreadable(e.to_string())),
            },
        }
    }
}

// ------------------------------------------------------------ renewal

/// Whether `cert_pem` is due for renewal at `now`: less than `threshold`
/// of its lifetime (not before to not after) remains, or it has expired.
/// A certificate not valid yet (the operator's clock behind) is not due.
pub fn needs_renewal(cert_pem: &str, now: SystemTime, threshold: LifetimeShare) -> Result<bool> {
    let (not_before, not_after) = with_cert(cert_pem, "the certificate", |c| {
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    })?;
    let now = unix_secs(now).ok_or(TlsError::BadTime(now))?;
    let lifetime = i128::from(not_after) - i128::from(not_before);
    let remaining = i128::from(not_after) - i128::from(now);
    if remaining <= 0 || lifetime <= 0 {
        return Ok(true);
    }
    Ok(remaining * i128::from(threshold.denominator) < lifetime * i128::from(threshold.numerator))
}

fn unix_secs(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    }
}

// ------------------------------------------------------ reading certs

/// `f` applied to the one certificate of `pem`.
fn with_cert<T>(pem: &str, what: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> Result<T> {
    let bad = |problem: String| TlsError::BadCertificate {
        what: what.to_string(),
        problem,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!("a PEM block of `{}`", pem.label)));
    }
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(f(&cert))
}

/// Whether `cert`, read as the node reads it (`raftkit_tls::PeerIdentity`),
/// has `role` as its only organizational unit and names `sans`, no more.
fn names_exactly(cert: &X509Certificate<'_>, role: Role, sans: &[String]) -> bool {
    let Ok(id) = raftkit_tls::PeerIdentity::from_der(cert.as_raw()) else {
        return false;
    };
    id.units == [role.organizational_unit()]
        && id.dns_names.len() + id.ips.len() == sans.len()
        && sans.iter().all(|name| id.names(name))
}

// ------------------------------------------------------------ Secrets

/// A Secret owned by `rc` (owner reference, the labels of every owned
/// object), as `build` makes the other owned objects.
fn secret(
    rc: &RaftCluster,
    name: String,
    type_: &str,
    data: impl IntoIterator<Item = (String, String)>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: rc.metadata.namespace.clone(),
            labels: Some(labels(rc)),
            owner_references: rc.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The text under `key` of `secret`.
fn secret_text(secret: &Secret, key: &str) -> Result<String> {
    let name = || secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| TlsError::MissingKey {
            secret: name(),
            key: key.to_string(),
        })?;
    String::from_utf8(bytes.0.clone()).map_err(|_| TlsError::NotUtf8 {
        secret: name(),
        key: key.to_string(),
    })
}

/// The certificate and key under `cert_key`, `key_key` of `secret`, if
/// both are there and text.
fn cert_in(secret: Option<&Secret>, cert_key: &str, key_key: &str) -> Option<IssuedCert> {
    let s = secret?;
    Some(IssuedCert {
        cert_pem: secret_text(s, cert_key).ok()?,
        key_pem: secret_text(s, key_key).ok()?,
    })
}

/// `kept` if it can stay a certificate for `role` named `sans`, else what
/// `issue` makes, with why.
fn keep_or_issue(
    ca: &ClusterCa,
    kept: Option<IssuedCert>,
    role: Role,
    sans: &[String],
    now: SystemTime,
    issue: impl FnOnce() -> Result<IssuedCert>,
) -> Result<(IssuedCert, Option<Reissue>)> {
    if let Some(c) = kept {
        return match ca.reissue_reason(&c, role, sans, now) {
            None => Ok((c, None)),
            Some(why) => Ok((issue()?, Some(why))),
        };
    }
    Ok((issue()?, Some(Reissue::Missing)))
}

/// The members' Secret ([`nodes_secret_name`]) for the pods of `hosts`:
/// each pod's certificate from `current` (the Secret as it is) when it can
/// stay ([`ClusterCa::reissue_reason`]), a new one otherwise; other pods
/// are left out. So a cluster scaled from 3 to 5 gets certificates for
/// pods 3 and 4 and keeps those of 0 to 2.
pub fn node_certs(
    ca: &ClusterCa,
    rc: &RaftCluster,
    namespace: &str,
    hosts: &PodHosts,
    current: Option<&Secret>,
    now: SystemTime,
) -> Result<CertSecret> {
    let mut data = vec![(CA_CRT.to_string(), ca.cert_pem().to_string())];
    let mut issued = Vec::new();
    for (&ordinal, host) in hosts {
        let pod = pod_name(rc, ordinal);
        let (cert_key, key_key) = (pod_cert_key(&pod), pod_key_key(&pod));
        let sans = node_sans(rc, namespace, host);
        let kept = cert_in(current, &cert_key, &key_key);
        let (cert, why) = keep_or_issue(ca, kept, Role::Node, &sans, now, || {
            ca.issue_node(rc, namespace, ordinal, host, now)
        })?;
        if let Some(why) = why {
            issued.push((pod, why));
        }
        data.push((cert_key, cert.cert_pem));
        data.push((key_key, cert.key_pem));
    }
    Ok(CertSecret {
        secret: secret(rc, nodes_secret_name(rc), SECRET_TYPE_OPAQUE, data),
        issued,
    })
}

/// The operator's admin Secret ([`admin_secret_name`]): the certificate of
/// `current` when it can stay ([`ClusterCa::reissue_reason`]), a new one
/// otherwise.
pub fn admin_secret(
    ca: &ClusterCa,
    rc: &RaftCluster,
    current: Option<&Secret>,
    now: SystemTime,
) -> Result<CertSecret> {
    let name = admin_secret_name(rc);
    leaf_secret(ca, rc, Role::Admin, name, "raftkit-operator", current, now)
}

/// The applications' Secret ([`client_secret_name`]), as [`admin_secret`].
pub fn client_secret(
    ca: &ClusterCa,
    rc: &RaftCluster,
    current: Option<&Secret>,
    now: SystemTime,
) -> Result<CertSecret> {
    let common_name = format!("{}-client", cluster_name(rc));
    leaf_secret(
        ca,
        rc,
        Role::Client,
        client_secret_name(rc),
        &common_name,
        current,
        now,
    )
}

/// A `kubernetes.io/tls` Secret of a client certificate for `role` (no
/// names: it is never a server's), with `ca.crt` so its holder can check
/// the members.
fn leaf_secret(
    ca: &ClusterCa,
    rc: &RaftCluster,
    role: Role,
    name: String,
    common_name: &str,
    current: Option<&Secret>,
    now: SystemTime,
) -> Result<CertSecret> {
    let kept = cert_in(current, TLS_CRT, TLS_KEY);
    let (cert, why) = keep_or_issue(ca, kept, role, &[], now, || {
        ca.issue(role, common_name, &[], now)
    })?;
    let issued = why
        .map(|why| (role.organizational_unit().to_string(), why))
        .into_iter()
        .collect();
    Ok(CertSecret {
        secret: secret(
            rc,
            name,
            SECRET_TYPE_TLS,
            [
                (TLS_CRT.to_string(), cert.cert_pem),
                (TLS_KEY.to_string(), cert.key_pem),
                (CA_CRT.to_string(), ca.cert_pem().to_string()),
            ],
        ),
        issued,
    })
}

// ------------------------------------------ the operator's Secrets

/// The operator's Secrets of a cluster as they are (`None`: missing).
#[derive(Clone, Debug, Default)]
pub struct OwnedSecrets {
    pub ca: Option<Secret>,
    pub nodes: Option<Secret>,
    pub admin: Option<Secret>,
    pub client: Option<Secret>,
}

/// What the operator's Secrets of a cluster must hold now
/// ([`owned_secrets`]).
#[derive(Debug)]
pub struct SecretsDue {
    /// Secrets whose data differ from what is there, the CA's first: a
    /// pass that stops after writing it signs with that CA next time.
    pub to_write: Vec<Secret>,
    /// Why they are written (for the step and its Event); `None` when
    /// every Secret holds what it should.
    pub due: Option<String>,
    /// The operator's admin certificate (kept or new) with the CA's
    /// certificate: what the operator presents to the members and trusts
    /// of them. A new one works before it is written: the members trust
    /// the CA, not the Secret.
    pub admin: IssuedCert,
    pub ca_pem: String,
}

/// The operator's Secrets for `rc` whose members are `hosts` (every pod
/// that is or is about to be), from `current` at `now`: the CA kept (a new
/// one when there is none; an unreadable one is an error, never replaced,
/// as the members trust it), each certificate kept unless due
/// ([`ClusterCa::reissue_reason`]), certificates of pods not in `hosts`
/// dropped.
pub fn owned_secrets(
    rc: &RaftCluster,
    namespace: &str,
    hosts: &PodHosts,
    current: &OwnedSecrets,
    now: SystemTime,
) -> Result<SecretsDue> {
    let (ca, new_ca) = match &current.ca {
        Some(s) => (ClusterCa::from_secret(s)?, false),
        None => (ClusterCa::generate(rc, now)?, true),
    };
    let nodes = node_certs(&ca, rc, namespace, hosts, current.nodes.as_ref(), now)?;
    let admin = admin_secret(&ca, rc, current.admin.as_ref(), now)?;
    let client = client_secret(&ca, rc, current.client.as_ref(), now)?;
    let mut why = Vec::new();
    if new_ca {
        why.push("a new CA".to_string());
    }
    let issued: Vec<_> = [&nodes, &admin, &client]
        .into_iter()
        .flat_map(|c| c.issued.iter().cloned())
        .collect();
    why.extend(describe_issued(&issued));
    let dropped = dropped_pods(current.nodes.as_ref(), &nodes.secret);
    if !dropped.is_empty() {
        why.push(format!("dropped (no such pod): {}", dropped.join(", ")));
    }
    let (admin_cert, ca_pem) = client_identity(&admin.secret, None)?;
    let mut to_write = Vec::new();
    for (made, was) in [
        (ca.secret(rc), &current.ca),
        (nodes.secret, &current.nodes),
        (admin.secret, &current.admin),
        (client.secret, &current.client),
    ] {
        if was.as_ref().and_then(|w| w.data.as_ref()) != made.data.as_ref() {
            if why.is_empty() {
                // Nothing issued, yet the data differ (edited by hand).
                why.push(format!(
                    "{} restored",
                    made.metadata.name.as_deref().unwrap_or("a Secret")
                ));
            }
            to_write.push(made);
        }
    }
    Ok(SecretsDue {
        due: (!to_write.is_empty()).then(|| why.join("; ")),
        to_write,
        admin: admin_cert,
        ca_pem,
    })
}

/// `demo-0, demo-1: new; demo-2: renewed`: who got a certificate, by why.
fn describe_issued(issued: &[(String, Reissue)]) -> Vec<String> {
    let mut by_why: Vec<(String, Vec<&str>)> = Vec::new();
    for (who, why) in issued {
        let why = match why {
            Reissue::Missing => "new".to_string(),
            Reissue::Renewal => "renewed (less than a third of its lifetime left)".into(),
            Reissue::Changed => "reissued (its names or role changed)".into(),
            Reissue::OtherCa => "reissued (another CA signed it)".into(),
            Reissue::Unreadable(e) => format!("reissued (unreadable: {e})"),
        };
        match by_why.iter_mut().find(|(w, _)| *w == why) {
            Some((_, whom)) => whom.push(who),
            None => by_why.push((why, vec![who])),
        }
    }
    by_why
        .into_iter()
        .map(|(why, whom)| format!("{}: {why}", whom.join(", ")))
        .collect()
}

/// Pods whose certificate `was` holds and `now` does not.
fn dropped_pods(was: Option<&Secret>, now: &Secret) -> Vec<String> {
    let keys = |s: &Secret| -> Vec<String> {
        s.data
            .iter()
            .flat_map(|d| d.keys())
            .filter_map(|k| k.strip_suffix(".crt"))
            .filter(|k| *k != "ca")
            .map(str::to_string)
            .collect()
    };
    let kept = keys(now);
    was.map(keys)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !kept.contains(p))
        .collect()
}

/// The certificate and key (`tls.crt`, `tls.key`) of a client's Secret,
/// and the CA's certificate: its `ca.crt`, or else `ca_from`'s (the user's
/// members' Secret, beside a `kubernetes.io/tls` admin Secret without one).
pub fn client_identity(secret: &Secret, ca_from: Option<&Secret>) -> Result<(IssuedCert, String)> {
    let cert = IssuedCert {
        cert_pem: secret_text(secret, TLS_CRT)?,
        key_pem: secret_text(secret, TLS_KEY)?,
    };
    let ca = match (secret_text(secret, CA_CRT), ca_from) {
        (Ok(ca), _) => ca,
        (Err(_), Some(other)) => secret_text(other, CA_CRT)?,
        (Err(e), None) => return Err(e),
    };
    Ok((cert, ca))
}

// ------------------------------------------------------ the pod's part

/// What a pod template adds for TLS: the members' Secret as a volume, its
/// mount, and the node's settings pointing at this pod's files.
#[derive(Clone, Debug, PartialEq)]
pub struct PodTls {
    pub volume: Volume,
    pub mount: VolumeMount,
    /// Uses `$(POD_NAME)`: goes after the `POD_NAME` variable in the node
    /// container's `env` (Kubernetes expands only variables declared
    /// before).
    pub env: Vec<EnvVar>,
}

/// The Secret of member certificates the pods of `rc` use, or `None` when
/// TLS is off: the user's `spec.tls.secretName` or the operator's
/// [`nodes_secret_name`].
pub fn pods_secret_name(rc: &RaftCluster) -> Option<String> {
    let tls = rc.spec.tls.as_ref().filter(|t| t.enabled)?;
    Some(
        tls.secret_name
            .clone()
            .unwrap_or_else(|| nodes_secret_name(rc)),
    )
}

/// The node's settings `tls_cert`, `tls_key`, `tls_ca` (PEM file paths;
/// the node reloads the files when they change) for pod `pod` whose
/// Secret's files are in `dir`: `<dir>/<pod>.crt`, `<dir>/<pod>.key`,
/// `<dir>/ca.crt`, as (variable, value).
pub fn pod_tls_env(dir: &str, pod: &str) -> Result<Vec<(String, String)>, UnknownSetting> {
    [
        ("tls_cert", pod_cert_key(pod)),
        ("tls_key", pod_key_key(pod)),
        ("tls_ca", CA_CRT.to_string()),
    ]
    .into_iter()
    .map(|(name, file)| {
        let setting = settings::setting(name).ok_or(UnknownSetting(name))?;
        Ok((setting.env.to_string(), format!("{dir}/{file}")))
    })
    .collect()
}

/// The pod's part for `rc`, or `None` when TLS is off. The Secret
/// ([`pods_secret_name`]) is mounted whole (no `subPath`), so renewed
/// files reach the running node, read-only, readable by the node's group
/// (the pod's `fsGroup`). The variables are [`pod_tls_env`] of the mount
/// and `$(POD_NAME)`.
pub fn pod_tls(rc: &RaftCluster) -> Result<Option<PodTls>, UnknownSetting> {
    let Some(secret_name) = pods_secret_name(rc) else {
        return Ok(None);
    };
    let env = pod_tls_env(TLS_DIR, "$(POD_NAME)")?
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            ..EnvVar::default()
        })
        .collect();
    Ok(Some(PodTls {
        volume: Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        env,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use std::collections::BTreeMap;

    const DEMO: &str =
        "metadata: {name: demo, namespace: prod, uid: u-1}\nspec: {replicas: 3, tls: {enabled: true}}\n";

    fn rc(yaml: &str) -> RaftCluster {
        serde_yaml::from_str(yaml).expect("parses")
    }

    /// 2027-01-15, a fixed "now".
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    }

    /// The chain check rustls makes: `cert` verified up to `ca_pem` for
    /// `usage` at `at`.
    fn verify(
        ca_pem: &str,
        cert: &IssuedCert,
        usage: webpki::KeyUsage,
        at: SystemTime,
    ) -> Result<(), webpki::Error> {
        let ca = der(ca_pem);
        let anchor = webpki::anchor_from_trusted_cert(&ca)?;
        let leaf = der(&cert.cert_pem);
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).expect("after 1970"));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            usage,
            None,
            None,
        )
        .map(|_| ())
    }

    fn valid_for(cert: &IssuedCert, name: &str) -> bool {
        let leaf = der(&cert.cert_pem);
        let ee = webpki::EndEntityCert::try_from(&leaf).expect("parses");
        let name = ServerName::try_from(name.to_string()).expect("a server name");
        ee.verify_is_valid_for_subject_name(&name).is_ok()
    }

    /// The certificate as the node reads a peer's.
    fn identity(cert: &IssuedCert) -> raftkit_tls::PeerIdentity {
        raftkit_tls::PeerIdentity::from_der(&der(&cert.cert_pem)).expect("parses")
    }

    fn ous(cert: &IssuedCert) -> Vec<String> {
        identity(cert).units
    }

    /// Its DNS names, then its IP addresses.
    fn sans(cert: &IssuedCert) -> Vec<String> {
        let id = identity(cert);
        let ips = id.ips.iter().map(|ip| ip.to_string());
        id.dns_names.iter().cloned().chain(ips).collect()
    }

    fn pod_cert(secret: &Secret, pod: &str) -> IssuedCert {
        cert_in(Some(secret), &pod_cert_key(pod), &pod_key_key(pod)).expect("the pod's files")
    }

    fn keys(secret: &Secret) -> Vec<String> {
        secret
            .data
            .as_ref()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The advertised address of pod `pod` as its template sets it
    /// (`$(POD_NAME)` expanded).
    fn advertised(r: &RaftCluster, namespace: &str, pod: &str) -> String {
        let t = build::pod_template(r, namespace, "rev").expect("template");
        let node = &t.spec.expect("spec").containers[0];
        let var = raftkit_proto::settings::setting("advertise")
            .expect("advertise")
            .env;
        let value = node
            .env
            .as_ref()
            .and_then(|env| env.iter().find(|e| e.name == var))
            .and_then(|e| e.value.clone())
            .expect("the advertise variable");
        value.replace("$(POD_NAME)", pod)
    }

    #[test]
    fn each_pods_certificate_names_its_stable_dns_name_and_chains_to_the_ca() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let nodes =
            node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..3), None, t0()).expect("certs");
        assert_eq!(nodes.issued.len(), 3);
        for i in 0..3 {
            let pod = format!("demo-{i}");
            let cert = pod_cert(&nodes.secret, &pod);
            let dns = format!("demo-{i}.demo-peers.prod.svc");
            let advertised = advertised(&r, "prod", &pod);
            assert_eq!(
                dns,
                raftkit_tls::host_of(&advertised),
                "what the pod advertises"
            );
            assert_eq!(
                build::pod_addr(&r, "prod", i),
                format!("{dns}:{}", build::NODE_PORT)
            );
            assert_eq!(
                sans(&cert),
                [dns.as_str(), "demo", "demo.prod", "demo.prod.svc"],
                "its own DNS name and the client Service's names, nothing else"
            );
            assert!(valid_for(&cert, &dns));
            let other = format!("demo-{}.demo-peers.prod.svc", (i + 1) % 3);
            assert!(!valid_for(&cert, &other), "never another pod's name");
            assert!(!valid_for(&cert, "localhost"), "no sidecar, no localhost");
            assert_eq!(ous(&cert), [OU_NODE]);
            let id = identity(&cert);
            assert!(
                id.is_node() && id.names(raftkit_tls::host_of(&advertised)),
                "the node takes it as a member's for its advertised address"
            );
            assert!(!id.is_admin());
            verify(ca.cert_pem(), &cert, webpki::KeyUsage::server_auth(), t0())
                .expect("a server certificate of the CA");
            verify(ca.cert_pem(), &cert, webpki::KeyUsage::client_auth(), t0())
                .expect("and a client certificate");
        }
        let other_ca = ClusterCa::generate(&r, t0()).expect("CA");
        let cert = pod_cert(&nodes.secret, "demo-0");
        assert!(
            verify(
                other_ca.cert_pem(),
                &cert,
                webpki::KeyUsage::server_auth(),
                t0()
            )
            .is_err(),
            "another cluster's CA does not accept it"
        );
    }

    #[test]
    fn in_sidecar_mode_a_pods_certificate_also_names_localhost_for_the_app_beside_it() {
        let r = rc(concat!(
            "metadata: {name: app, namespace: ns}\n",
            "spec:\n  replicas: 1\n  tls: {enabled: true}\n  template:\n",
            "    spec: {containers: [{name: app, image: 'my/app:1'}]}\n",
        ));
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let cert = ca
            .issue_node(&r, "ns", 0, &pod_dns_name(&r, "ns", 0), t0())
            .expect("cert");
        assert_eq!(
            sans(&cert),
            [
                "app-0.app-peers.ns.svc",
                "app",
                "app.ns",
                "app.ns.svc",
                "localhost",
                "127.0.0.1"
            ]
        );
        assert!(valid_for(&cert, "localhost"));
        assert!(valid_for(&cert, "127.0.0.1"));
    }

    #[test]
    fn the_admin_and_client_certificates_carry_their_roles_and_authenticate_clients_only() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        for (made, name, ou) in [
            (
                admin_secret(&ca, &r, None, t0()),
                "demo-tls-admin",
                OU_ADMIN,
            ),
            (
                client_secret(&ca, &r, None, t0()),
                "demo-tls-client",
                OU_CLIENT,
            ),
        ] {
            let made = made.expect("secret");
            let s = &made.secret;
            assert_eq!(s.metadata.name.as_deref(), Some(name));
            assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE_TLS));
            assert_eq!(keys(s), [CA_CRT, TLS_CRT, TLS_KEY]);
            assert_eq!(secret_text(s, CA_CRT).expect("ca.crt"), ca.cert_pem());
            let cert = cert_in(Some(s), TLS_CRT, TLS_KEY).expect("cert");
            assert_eq!(ous(&cert), [ou]);
            assert!(sans(&cert).is_empty());
            verify(ca.cert_pem(), &cert, webpki::KeyUsage::client_auth(), t0())
                .expect("a client certificate of the CA");
            assert!(
                verify(ca.cert_pem(), &cert, webpki::KeyUsage::server_auth(), t0()).is_err(),
                "{ou} cannot serve as a member"
            );
            assert_eq!(made.issued, [(ou.to_string(), Reissue::Missing)]);
        }
    }

    #[test]
    fn a_certificate_is_renewed_once_less_than_a_third_of_its_lifetime_remains() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let cert = ca
            .issue_node(&r, "prod", 0, &pod_dns_name(&r, "prod", 0), t0())
            .expect("cert");
        let lifetime = LEAF_VALIDITY + BACKDATE;
        let not_after = t0() + LEAF_VALIDITY;
        let renew_from = not_after - lifetime / 3;
        let due = |at| needs_renewal(&cert.cert_pem, at, RENEW_WHEN_REMAINING).expect("parses");
        assert!(!due(t0()));
        assert!(
            !due(t0() - BACKDATE - Duration::from_secs(60)),
            "not valid yet"
        );
        assert!(!due(renew_from), "exactly a third left");
        assert!(
            due(renew_from + Duration::from_secs(1)),
            "less than a third left"
        );
        assert!(due(not_after + Duration::from_secs(1)), "expired");
        let half = LifetimeShare {
            numerator: 1,
            denominator: 2,
        };
        let halfway = not_after - lifetime / 2;
        assert!(!needs_renewal(&cert.cert_pem, halfway, half).expect("parses"));
        assert!(
            needs_renewal(&cert.cert_pem, halfway + Duration::from_secs(1), half).expect("parses")
        );
        assert!(matches!(
            needs_renewal("not a certificate", t0(), RENEW_WHEN_REMAINING),
            Err(TlsError::BadCertificate { .. })
        ));
        // 30 days of 90: renewed with 29 days left, not with 31.
        let day = Duration::from_secs(DAY);
        assert!(!due(not_after - 31 * day));
        assert!(due(not_after - 29 * day));
    }

    #[test]
    fn scaled_from_three_to_five_the_new_pods_get_certificates_and_the_old_keep_theirs() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let three =
            node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..3), None, t0()).expect("3");
        // A later pass reads the CA back from its Secret, as the operator will.
        let ca_again = ClusterCa::from_secret(&ca.secret(&r)).expect("the CA read back");
        let later = t0() + 10 * Duration::from_secs(DAY);
        let five = node_certs(
            &ca_again,
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..5),
            Some(&three.secret),
            later,
        )
        .expect("5");
        assert_eq!(
            five.issued,
            [
                ("demo-3".to_string(), Reissue::Missing),
                ("demo-4".to_string(), Reissue::Missing)
            ]
        );
        for pod in ["demo-0", "demo-1", "demo-2"] {
            assert_eq!(
                pod_cert(&five.secret, pod),
                pod_cert(&three.secret, pod),
                "{pod} kept"
            );
        }
        for (i, pod) in [(3, "demo-3"), (4, "demo-4")] {
            let cert = pod_cert(&five.secret, pod);
            assert_eq!(sans(&cert)[0], format!("{pod}.demo-peers.prod.svc"));
            verify(ca.cert_pem(), &cert, webpki::KeyUsage::server_auth(), later)
                .expect("signed by the same CA, read back");
            assert!(valid_for(&cert, &pod_dns_name(&r, "prod", i)));
        }
        let mut want: Vec<String> = (0..5)
            .flat_map(|i| [format!("demo-{i}.crt"), format!("demo-{i}.key")])
            .collect();
        want.push(CA_CRT.into());
        want.sort();
        assert_eq!(keys(&five.secret), want);
        // Back to three: the removed pods' keys leave the Secret.
        let back = node_certs(
            &ca,
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            Some(&five.secret),
            later,
        )
        .expect("3");
        assert!(back.issued.is_empty());
        assert_eq!(keys(&back.secret), keys(&three.secret));
        // 61 days after issue, every certificate is renewed.
        let due = t0() + 61 * Duration::from_secs(DAY);
        let renewed = node_certs(
            &ca,
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            Some(&back.secret),
            due,
        )
        .expect("3");
        assert_eq!(renewed.issued.len(), 3);
        assert!(renewed
            .issued
            .iter()
            .all(|(_, why)| *why == Reissue::Renewal));
    }

    #[test]
    fn a_certificate_that_cannot_stay_is_replaced_and_says_why() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let cert = ca
            .issue_node(&r, "prod", 0, &pod_dns_name(&r, "prod", 0), t0())
            .expect("cert");
        let sans0 = node_sans(&r, "prod", &pod_dns_name(&r, "prod", 0));
        let why = |c: &IssuedCert, sans: &[String]| ca.reissue_reason(c, Role::Node, sans, t0());
        assert_eq!(why(&cert, &sans0), None);
        assert_eq!(
            why(
                &cert,
                &node_sans(&r, "other", &pod_dns_name(&r, "other", 0))
            ),
            Some(Reissue::Changed)
        );
        assert_eq!(
            ca.reissue_reason(&cert, Role::Admin, &sans0, t0()),
            Some(Reissue::Changed),
            "the role is part of what it must be"
        );
        let foreign = ClusterCa::generate(&r, t0())
            .and_then(|other| other.issue_node(&r, "prod", 0, &pod_dns_name(&r, "prod", 0), t0()))
            .expect("cert");
        assert_eq!(why(&foreign, &sans0), Some(Reissue::OtherCa));
        let swapped = IssuedCert {
            key_pem: ca
                .issue_node(&r, "prod", 1, &pod_dns_name(&r, "prod", 1), t0())
                .expect("cert")
                .key_pem,
            ..cert.clone()
        };
        assert!(matches!(
            why(&swapped, &sans0),
            Some(Reissue::Unreadable(_))
        ));
        let garbled = IssuedCert {
            cert_pem: cert.cert_pem.replace('A', "B"),
            ..cert.clone()
        };
        assert!(matches!(
            why(&garbled, &sans0),
            Some(Reissue::Unreadable(_))
        ));
        // node_certs replaces it in the Secret.
        let mut s = node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..1), None, t0())
            .expect("s")
            .secret;
        s.data
            .as_mut()
            .expect("data")
            .insert(pod_key_key("demo-0"), ByteString(b"junk".to_vec()));
        let again = node_certs(
            &ca,
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..1),
            Some(&s),
            t0(),
        )
        .expect("s");
        assert!(
            matches!(again.issued.as_slice(), [(pod, Reissue::Unreadable(_))] if pod == "demo-0")
        );
    }

    #[test]
    fn the_secrets_are_owned_by_the_cluster_and_a_bad_ca_secret_is_an_error_naming_it() {
        let mut r = rc(DEMO);
        r.metadata.uid = Some("u-1".into());
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let ca_secret = ca.secret(&r);
        let nodes = node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..1), None, t0())
            .expect("s")
            .secret;
        for (s, name) in [(&ca_secret, "demo-tls-ca"), (&nodes, "demo-tls-nodes")] {
            assert_eq!(s.metadata.name.as_deref(), Some(name));
            assert_eq!(s.metadata.namespace.as_deref(), Some("prod"));
            assert_eq!(s.type_.as_deref(), Some("Opaque"));
            let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("RaftCluster", Some(true))
            );
            let labels = s.metadata.labels.as_ref().expect("labels");
            assert_eq!(
                labels.get(build::CLUSTER_LABEL).map(String::as_str),
                Some("demo")
            );
        }
        assert_eq!(keys(&ca_secret), [CA_CRT, CA_KEY]);
        assert!(with_cert(ca.cert_pem(), "ca", |c| c.is_ca()).expect("parses"));

        let mut missing = ca_secret.clone();
        missing.data.as_mut().expect("data").remove(CA_KEY);
        let e = ClusterCa::from_secret(&missing).expect_err("no key");
        assert_eq!(e.to_string(), "Secret demo-tls-ca: no key `ca.key`");
        let mut wrong_key = ca_secret.clone();
        let other = ClusterCa::generate(&r, t0()).expect("CA").secret(&r);
        wrong_key
            .data
            .as_mut()
            .expect("data")
            .insert(CA_KEY.into(), other.data.expect("data")[CA_KEY].clone());
        assert!(matches!(
            ClusterCa::from_secret(&wrong_key),
            Err(TlsError::KeyMismatch { what }) if what == "Secret demo-tls-ca"
        ));
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "Debug shows no key"
        );
        let cert = ca
            .issue_node(&r, "prod", 0, &pod_dns_name(&r, "prod", 0), t0())
            .expect("cert");
        assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
        assert!(
            cert.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8"
        );
    }

    #[test]
    fn the_pod_mounts_the_members_secret_and_points_the_node_at_its_own_files() {
        let r = rc(DEMO);
        assert_eq!(
            pod_tls(&rc("metadata: {name: demo}\nspec: {replicas: 3}\n")).expect("env"),
            None
        );
        assert_eq!(
            pod_tls(&rc(
                "metadata: {name: demo}\nspec: {replicas: 3, tls: {enabled: false}}\n"
            ))
            .expect("env"),
            None
        );
        let p = pod_tls(&r).expect("env").expect("tls on");
        let source = p.volume.secret.as_ref().expect("a Secret volume");
        assert_eq!(source.secret_name.as_deref(), Some("demo-tls-nodes"));
        assert_eq!(p.mount.name, p.volume.name);
        assert_eq!(p.mount.mount_path, TLS_DIR);
        assert_eq!(p.mount.sub_path, None, "renewed files must reach the node");
        assert_eq!(p.mount.read_only, Some(true));
        // Each path, with `$(POD_NAME)` expanded, is a file of the Secret.
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let nodes = node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..3), None, t0())
            .expect("s")
            .secret;
        let files = keys(&nodes);
        let env: BTreeMap<_, _> = p
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().expect("a value")))
            .collect();
        assert_eq!(
            env.keys().copied().collect::<Vec<_>>(),
            ["RAFTKIT_TLS_CA", "RAFTKIT_TLS_CERT", "RAFTKIT_TLS_KEY"],
            "the node's variables"
        );
        for value in env.values() {
            let path = value.replace("$(POD_NAME)", "demo-2");
            let file = path
                .strip_prefix(&format!("{TLS_DIR}/"))
                .expect("under the mount");
            assert!(
                files.iter().any(|f| f == file),
                "{file} is not in {files:?}"
            );
        }
        assert_eq!(env["RAFTKIT_TLS_CERT"], "/etc/raftkit/tls/$(POD_NAME).crt");
        let users = rc(concat!(
            "metadata: {name: demo}\n",
            "spec: {replicas: 3, tls: {enabled: true, secretName: mine, adminSecretName: mine-admin}}\n",
        ));
        let p = pod_tls(&users).expect("env").expect("tls on");
        assert_eq!(
            p.volume.secret.and_then(|s| s.secret_name).as_deref(),
            Some("mine")
        );
    }

    fn names(secrets: &[Secret]) -> Vec<&str> {
        secrets
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect()
    }

    /// What a pass writes, pass after pass: everything at first, the CA
    /// first; nothing once written; a new pod's certificate; a removed
    /// pod's dropped; renewals; and the admin identity it presents.
    #[test]
    fn the_owned_secrets_are_written_when_missing_or_due_and_left_alone_otherwise() {
        let r = rc(DEMO);
        let first = owned_secrets(
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            &OwnedSecrets::default(),
            t0(),
        )
        .expect("first");
        assert_eq!(
            names(&first.to_write),
            [
                "demo-tls-ca",
                "demo-tls-nodes",
                "demo-tls-admin",
                "demo-tls-client"
            ],
            "the CA first"
        );
        assert_eq!(
            first.due.as_deref(),
            Some("a new CA; demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: new")
        );
        let written = |d: &SecretsDue, was: &OwnedSecrets| {
            let mut now = was.clone();
            for s in &d.to_write {
                let slot = match s.metadata.name.as_deref() {
                    Some("demo-tls-ca") => &mut now.ca,
                    Some("demo-tls-nodes") => &mut now.nodes,
                    Some("demo-tls-admin") => &mut now.admin,
                    Some("demo-tls-client") => &mut now.client,
                    other => panic!("unexpected Secret {other:?}"),
                };
                *slot = Some(s.clone());
            }
            now
        };
        let stored = written(&first, &OwnedSecrets::default());
        let again =
            owned_secrets(&r, "prod", &dns_hosts(&r, "prod", 0..3), &stored, t0()).expect("again");
        assert!(
            again.to_write.is_empty() && again.due.is_none(),
            "{again:?}"
        );
        assert_eq!(again.admin, first.admin, "the written admin certificate");
        assert_eq!(again.ca_pem, first.ca_pem);
        let admin = identity(&again.admin);
        assert!(admin.is_admin());
        raftkit_tls::Tls::from_pem(
            Some((&again.admin.cert_pem, &again.admin.key_pem)),
            &again.ca_pem,
        )
        .expect("an identity the admin client can use");

        // Scale-up: only demo-3's certificate is new.
        let four =
            owned_secrets(&r, "prod", &dns_hosts(&r, "prod", 0..4), &stored, t0()).expect("four");
        assert_eq!(names(&four.to_write), ["demo-tls-nodes"]);
        assert_eq!(four.due.as_deref(), Some("demo-3: new"));
        let stored = written(&four, &stored);
        // Scale-down: demo-3's is dropped.
        let three =
            owned_secrets(&r, "prod", &dns_hosts(&r, "prod", 0..3), &stored, t0()).expect("three");
        assert_eq!(names(&three.to_write), ["demo-tls-nodes"]);
        assert_eq!(three.due.as_deref(), Some("dropped (no such pod): demo-3"));
        let stored = written(&three, &stored);
        // 61 days on: every leaf is renewed, the CA stays.
        let later = t0() + 61 * Duration::from_secs(DAY);
        let renewed = owned_secrets(&r, "prod", &dns_hosts(&r, "prod", 0..3), &stored, later)
            .expect("renewed");
        assert_eq!(
            names(&renewed.to_write),
            ["demo-tls-nodes", "demo-tls-admin", "demo-tls-client"]
        );
        assert!(
            renewed
                .due
                .as_deref()
                .is_some_and(|d| d
                    .starts_with("demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: renewed")),
            "{:?}",
            renewed.due
        );
        assert_ne!(renewed.admin, first.admin, "the renewed admin certificate");

        // A CA Secret that cannot be read is an error, never replaced.
        let mut broken = stored.clone();
        if let Some(ca) = broken.ca.as_mut() {
            ca.data.as_mut().expect("data").remove(CA_KEY);
        }
        assert!(matches!(
            owned_secrets(&r, "prod", &dns_hosts(&r, "prod", 0..3), &broken, t0()),
            Err(TlsError::MissingKey { .. })
        ));
    }

    #[test]
    fn a_local_pods_certificate_names_the_host_it_advertises() {
        let r = rc(DEMO);
        let hosts = PodHosts::from([(0, "127.0.0.1".to_string()), (1, "127.0.0.1".to_string())]);
        let made =
            owned_secrets(&r, "default", &hosts, &OwnedSecrets::default(), t0()).expect("made");
        let nodes = &made.to_write[1];
        let cert = pod_cert(nodes, "demo-1");
        assert_eq!(
            sans(&cert),
            ["demo", "demo.default", "demo.default.svc", "127.0.0.1"]
        );
        assert!(valid_for(&cert, "127.0.0.1"));
        assert!(identity(&cert).names(raftkit_tls::host_of("127.0.0.1:8201")));
        // In sidecar mode 127.0.0.1 is named once.
        let sidecar = rc(concat!(
            "metadata: {name: app}\n",
            "spec:\n  replicas: 1\n  tls: {enabled: true}\n  template:\n",
            "    spec: {containers: [{name: app, image: 'my/app:1'}]}\n",
        ));
        assert_eq!(
            node_sans(&sidecar, "default", "127.0.0.1"),
            [
                "127.0.0.1",
                "app",
                "app.default",
                "app.default.svc",
                "localhost"
            ]
        );
    }

    #[test]
    fn a_users_admin_secret_without_a_ca_takes_the_members_secrets() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let admin = admin_secret(&ca, &r, None, t0()).expect("admin").secret;
        let mut bare = admin.clone();
        bare.data.as_mut().expect("data").remove(CA_CRT);
        let nodes = node_certs(&ca, &r, "prod", &dns_hosts(&r, "prod", 0..1), None, t0())
            .expect("nodes")
            .secret;
        let (cert, ca_pem) = client_identity(&bare, Some(&nodes)).expect("identity");
        assert_eq!(ca_pem, ca.cert_pem());
        assert_eq!(client_identity(&admin, None).expect("identity").0, cert);
        assert!(matches!(
            client_identity(&bare, None),
            Err(TlsError::MissingKey { key, .. }) if key == CA_CRT
        ));
    }
}
