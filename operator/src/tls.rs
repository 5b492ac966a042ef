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
//! The CA is rotated in three steps, each written to every Secret and
//! given time to reach every pod ([`CaSet::advance`], the workload's
//! `secret_propagation`): a new CA is trusted beside the old one; then it
//! signs, and every certificate is reissued; then the old one is no longer
//! trusted. A rotation starts when less than a third of the CA's lifetime
//! is left, or when the `raftkit.io/caRotatedAt` annotation changes.
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
/// valid unless `spec.tls.certificateLifetimeSecs` says otherwise.
pub const LEAF_VALIDITY: Duration =
    Duration::from_secs(crate::crd::DEFAULT_CERTIFICATE_LIFETIME_SECS);
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
/// Keys of the CA's Secret during a rotation: the new CA, trusted but not
/// signing yet; the old one, trusted but no longer signing; when the step
/// began (UNIX seconds); the `raftkit.io/caRotatedAt` value last acted on.
pub const NEXT_CRT: &str = "next.crt";
pub const NEXT_KEY: &str = "next.key";
pub const PREVIOUS_CRT: &str = "previous.crt";
pub const STEP_SINCE: &str = "step-since";
pub const ROTATED_FOR: &str = "rotated-for";
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
    /// It is valid for another length of time than the spec asks for now
    /// (`spec.tls.certificateLifetimeSecs` changed).
    Lifetime,
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
    /// When the first of its certificates is due for renewal.
    pub renew_at: Option<SystemTime>,
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
    /// How long the certificates it issues are valid.
    leaf_lifetime: Duration,
    /// What the Secrets' `ca.crt` holds, if more than this CA (during a
    /// rotation, [`CaSet::trust_pem`]).
    trust: Option<String>,
}

impl fmt::Debug for ClusterCa {
    /// Without the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.ca.issued.cert_pem)
            .field("leaf_lifetime", &self.leaf_lifetime)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `rc`, valid [`CA_VALIDITY`] from `now`, issuing
    /// certificates valid for `rc`'s certificate lifetime.
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
        Ok(ClusterCa {
            ca,
            leaf_lifetime: rc.certificate_lifetime(),
            trust: None,
        })
    }

    /// This CA issuing certificates valid for `lifetime` (renewed once less
    /// than a third of it is left).
    pub fn with_leaf_lifetime(mut self, lifetime: Duration) -> Self {
        self.leaf_lifetime = lifetime;
        self
    }

    /// This CA, the Secrets it fills saying to trust `trust_pem` (PEM
    /// certificates, this CA's among them).
    pub fn with_trust(mut self, trust_pem: String) -> Self {
        self.trust = Some(trust_pem);
        self
    }

    /// What the Secrets' `ca.crt` holds: this CA's certificate, or during a
    /// rotation both CAs'.
    pub fn trust_pem(&self) -> &str {
        self.trust.as_deref().unwrap_or(self.cert_pem())
    }

    /// When the certificate `cert_pem` this CA issued is due for renewal:
    /// once less than [`RENEW_WHEN_REMAINING`] of the leaf lifetime is left.
    pub fn renewal_due_at(&self, cert_pem: &str) -> Result<SystemTime> {
        renewal_due_at(cert_pem, self.leaf_lifetime, RENEW_WHEN_REMAINING)
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
        Ok(ClusterCa {
            ca,
            leaf_lifetime: LEAF_VALIDITY,
            trust: None,
        })
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

    /// A certificate for `role` named `common_name` with `sans`, valid for
    /// the leaf lifetime from `now`, with a new key.
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
            self.leaf_lifetime,
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
    /// it, it names exactly `sans` with `role`'s organizational unit, it is
    /// valid for the leaf lifetime, and more than [`RENEW_WHEN_REMAINING`]
    /// of that is left.
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
                } else if !lasts(c, self.leaf_lifetime) {
                    Some(Reissue::Lifetime)
                } else {
                    None
                }
            })
        })
        .and_then(|inner| inner);
        match checked {
            Err(e) => Some(Reissue::Unreadable(e.to_string())),
            Ok(Some(why)) => Some(why),
            Ok(None) => match needs_renewal(
                &cert.cert_pem,
                now,
                self.leaf_lifetime,
                RENEW_WHEN_REMAINING,
            ) {
                Ok(true) => Some(Reissue::Renewal),
                Ok(false) => None,
                Err(e) => Some(Reissue::Unreadable(e.to_string())),
            },
        }
    }
}

// ------------------------------------------------------ CA rotation

/// The CA's Secret: the CA that signs, and during a rotation the one
/// beside it that every party trusts too.
#[derive(Debug)]
pub struct CaSet {
    pub signing: ClusterCa,
    /// Introduced: trusted everywhere, signing once that has reached the
    /// pods.
    pub next: Option<ClusterCa>,
    /// Retired from signing: still trusted until every pod has its new
    /// certificate.
    pub previous: Option<String>,
    /// When `next` or `previous` was written.
    pub since: Option<SystemTime>,
    /// The `raftkit.io/caRotatedAt` value that started the last rotation.
    pub rotated_for: Option<String>,
}

impl CaSet {
    /// A new CA for `rc`, nothing else.
    pub fn generate(rc: &RaftCluster, now: SystemTime) -> Result<Self> {
        Ok(CaSet {
            signing: ClusterCa::generate(rc, now)?,
            next: None,
            previous: None,
            since: None,
            rotated_for: rc.ca_rotated_at().map(str::to_string),
        })
    }

    /// The set read back from the CA's Secret ([`ca_secret_name`]).
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let optional = |key: &str| secret_text(secret, key).ok();
        let next = match (optional(NEXT_CRT), optional(NEXT_KEY)) {
            (Some(c), Some(k)) => Some(ClusterCa::from_pem(
                &c,
                &k,
                &format!("Secret {name} ({NEXT_CRT}, {NEXT_KEY})"),
            )?),
            _ => None,
        };
        let since = optional(STEP_SINCE)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|t| UNIX_EPOCH + Duration::from_secs(t));
        Ok(CaSet {
            signing: ClusterCa::from_secret(secret)?,
            next,
            previous: optional(PREVIOUS_CRT),
            since,
            rotated_for: optional(ROTATED_FOR),
        })
    }

    /// The CA's Secret, owned by `rc`.
    pub fn secret(&self, rc: &RaftCluster) -> Secret {
        let mut data = vec![
            (CA_CRT.to_string(), self.signing.cert_pem().to_string()),
            (CA_KEY.to_string(), self.signing.ca.issued.key_pem.clone()),
        ];
        if let Some(n) = &self.next {
            data.push((NEXT_CRT.to_string(), n.cert_pem().to_string()));
            data.push((NEXT_KEY.to_string(), n.ca.issued.key_pem.clone()));
        }
        if let Some(p) = &self.previous {
            data.push((PREVIOUS_CRT.to_string(), p.clone()));
        }
        if let Some(t) = self.since {
            let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            data.push((STEP_SINCE.to_string(), secs.to_string()));
        }
        if let Some(r) = &self.rotated_for {
            data.push((ROTATED_FOR.to_string(), r.clone()));
        }
        secret(rc, ca_secret_name(rc), SECRET_TYPE_OPAQUE, data)
    }

    /// What every party trusts (`ca.crt` of the other Secrets): the
    /// signing CA, and during a rotation the other one.
    pub fn trust_pem(&self) -> String {
        if self.next.is_none() && self.previous.is_none() {
            return self.signing.cert_pem().to_string();
        }
        let mut pems = vec![self.signing.cert_pem()];
        pems.extend(self.next.as_ref().map(ClusterCa::cert_pem));
        pems.extend(self.previous.as_deref());
        let mut out = String::new();
        for p in pems {
            out.push_str(p.trim_end());
            out.push('\n');
        }
        out
    }

    /// When the next step of a rotation under way is due (a rotation not
    /// under way: when the CA falls due).
    pub fn next_step_at(&self, propagation: Duration) -> Result<SystemTime> {
        match self.since {
            Some(since) if self.next.is_some() || self.previous.is_some() => {
                Ok(since + propagation)
            }
            _ => renewal_due_at(self.signing.cert_pem(), CA_VALIDITY, RENEW_WHEN_REMAINING),
        }
    }

    /// The set one rotation step on at `now`, and what the step did, if it
    /// is due; each step waits `propagation` after the last (the time the
    /// workload takes to bring a changed Secret to every pod):
    /// - none under way: a new CA is introduced (trusted, not signing)
    ///   when less than a third of the CA's lifetime is left or the
    ///   `raftkit.io/caRotatedAt` annotation has a value not acted on yet;
    /// - introduced: it signs, the old one stays trusted (every
    ///   certificate is then reissued: another CA signed it);
    /// - retired: the old one is no longer trusted.
    pub fn advance(
        mut self,
        rc: &RaftCluster,
        now: SystemTime,
        propagation: Duration,
    ) -> Result<(Self, Option<String>)> {
        let settled = self.since.is_none_or(|t| now >= t + propagation);
        if let Some(next) = self.next.take() {
            if !settled {
                self.next = Some(next);
                return Ok((self, None));
            }
            let old = std::mem::replace(&mut self.signing, next);
            self.previous = Some(old.cert_pem().to_string());
            self.since = Some(now);
            return Ok((
                self,
                Some("the new CA signs (the old one still trusted)".into()),
            ));
        }
        if self.previous.is_some() {
            if !settled {
                return Ok((self, None));
            }
            self.previous = None;
            self.since = None;
            return Ok((self, Some("the old CA is no longer trusted".into())));
        }
        let asked = rc
            .ca_rotated_at()
            .filter(|a| self.rotated_for.as_deref() != Some(*a));
        let why = if let Some(a) = asked {
            format!(
                "a new CA trusted beside the old ({} {a})",
                crate::crd::CA_ROTATED_AT
            )
        } else if needs_renewal(
            self.signing.cert_pem(),
            now,
            CA_VALIDITY,
            RENEW_WHEN_REMAINING,
        )? {
            "a new CA trusted beside the old (less than a third of the CA's lifetime left)".into()
        } else {
            return Ok((self, None));
        };
        self.rotated_for = rc.ca_rotated_at().map(str::to_string);
        self.next = Some(ClusterCa::generate(rc, now)?);
        self.since = Some(now);
        Ok((self, Some(why)))
    }
}

// ------------------------------------------------------------ renewal

/// When `cert_pem`, issued for `lifetime` (not counting [`BACKDATE`]), is
/// due for renewal: once less than `threshold` of `lifetime` is left
/// before it expires.
pub fn renewal_due_at(
    cert_pem: &str,
    lifetime: Duration,
    threshold: LifetimeShare,
) -> Result<SystemTime> {
    let not_after = with_cert(cert_pem, "the certificate", |c| {
        c.validity().not_after.timestamp()
    })?;
    let not_after = u64::try_from(not_after).unwrap_or(0);
    let keep = u128::from(lifetime.as_secs()) * u128::from(threshold.numerator)
        / u128::from(threshold.denominator.max(1));
    let keep = u64::try_from(keep).unwrap_or(u64::MAX);
    Ok(UNIX_EPOCH + Duration::from_secs(not_after.saturating_sub(keep)))
}

/// Whether `cert_pem`, issued for `lifetime`, is due for renewal at `now`
/// ([`renewal_due_at`]; an expired certificate always is).
pub fn needs_renewal(
    cert_pem: &str,
    now: SystemTime,
    lifetime: Duration,
    threshold: LifetimeShare,
) -> Result<bool> {
    Ok(now > renewal_due_at(cert_pem, lifetime, threshold)?)
}

/// Whether `cert` is valid for `lifetime` after [`BACKDATE`] (give or
/// take two seconds: times are written to the second).
fn lasts(cert: &X509Certificate<'_>, lifetime: Duration) -> bool {
    let v = cert.validity();
    let span = v.not_after.timestamp() - v.not_before.timestamp();
    let want = i64::try_from((lifetime + BACKDATE).as_secs()).unwrap_or(i64::MAX);
    span.abs_diff(want) <= 2
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

/// The earlier of `a` and `b`.
fn earliest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.min(b)))
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
    let mut data = vec![(CA_CRT.to_string(), ca.trust_pem().to_string())];
    let mut issued = Vec::new();
    let mut renew_at = None;
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
        renew_at = earliest(renew_at, ca.renewal_due_at(&cert.cert_pem)?);
        data.push((cert_key, cert.cert_pem));
        data.push((key_key, cert.key_pem));
    }
    Ok(CertSecret {
        secret: secret(rc, nodes_secret_name(rc), SECRET_TYPE_OPAQUE, data),
        issued,
        renew_at,
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
    let renew_at = Some(ca.renewal_due_at(&cert.cert_pem)?);
    Ok(CertSecret {
        renew_at,
        secret: secret(
            rc,
            name,
            SECRET_TYPE_TLS,
            [
                (TLS_CRT.to_string(), cert.cert_pem),
                (TLS_KEY.to_string(), cert.key_pem),
                (CA_CRT.to_string(), ca.trust_pem().to_string()),
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
    /// When the first certificate is due for renewal, or the next step of
    /// a CA rotation: the operator looks again then, however quiet the
    /// cluster is.
    pub renew_at: Option<SystemTime>,
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
    propagation: Duration,
) -> Result<SecretsDue> {
    let mut why = Vec::new();
    let cas = match &current.ca {
        Some(s) => {
            let (cas, step) = CaSet::from_secret(s)?.advance(rc, now, propagation)?;
            why.extend(step);
            cas
        }
        None => {
            why.push("a new CA".to_string());
            CaSet::generate(rc, now)?
        }
    };
    let ca_secret = cas.secret(rc);
    let next_step = cas.next_step_at(propagation)?;
    let trust = cas.trust_pem();
    let ca = cas
        .signing
        .with_leaf_lifetime(rc.certificate_lifetime())
        .with_trust(trust);
    let nodes = node_certs(&ca, rc, namespace, hosts, current.nodes.as_ref(), now)?;
    let admin = admin_secret(&ca, rc, current.admin.as_ref(), now)?;
    let client = client_secret(&ca, rc, current.client.as_ref(), now)?;
    let renew_at = [&nodes, &admin, &client]
        .into_iter()
        .filter_map(|c| c.renew_at)
        .chain([next_step])
        .min();
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
        (ca_secret, &current.ca),
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
        renew_at,
    })
}

/// `demo-0, demo-1: new; demo-2: renewed`: who got a certificate, by why.
fn describe_issued(issued: &[(String, Reissue)]) -> Vec<String> {
    let mut by_why: Vec<(String, Vec<&str>)> = Vec::new();
    for (who, why) in issued {
        let why = match why {
            Reissue::Missing => "new".to_string(),
            Reissue::Renewal => "renewed (less than a third of its lifetime left)".into(),
            Reissue::Lifetime => "reissued (spec.tls.certificateLifetimeSecs changed)".into(),
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

    /// The wait between CA rotation steps in these tests.
    const PROPAGATION: Duration = Duration::from_secs(180);

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

    /// Whether a CA of `bundle` (PEM certificates) signed `cert_pem` for
    /// client authentication at `at`, as a member's rustls checks a peer.
    fn trusts(bundle: &str, cert_pem: &str, at: SystemTime) -> bool {
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .expect("PEM certificates");
        let anchors: Vec<_> = cas
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).expect("a CA"))
            .collect();
        let leaf = der(cert_pem);
        let ee = webpki::EndEntityCert::try_from(&leaf).expect("a certificate");
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).expect("after 1970"));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }

    /// Every certificate (members', admin, client) and every `ca.crt` of a
    /// set of the operator's Secrets.
    fn leaves_and_trust(o: &OwnedSecrets) -> (Vec<String>, Vec<String>) {
        let mut leaves = Vec::new();
        let mut trust = Vec::new();
        for s in [&o.nodes, &o.admin, &o.client].into_iter().flatten() {
            for (k, v) in s.data.as_ref().expect("data") {
                let text = String::from_utf8(v.0.clone()).expect("text");
                if k == CA_CRT {
                    trust.push(text);
                } else if k.ends_with(".crt") {
                    leaves.push(text);
                }
            }
        }
        (leaves, trust)
    }

    /// What a pass wrote, laid over what was there.
    fn written(mut o: OwnedSecrets, due: &SecretsDue) -> OwnedSecrets {
        for s in &due.to_write {
            let name = s.metadata.name.clone().expect("name");
            let slot = match name.as_str() {
                "demo-tls-ca" => &mut o.ca,
                "demo-tls-nodes" => &mut o.nodes,
                "demo-tls-admin" => &mut o.admin,
                "demo-tls-client" => &mut o.client,
                other => panic!("unexpected Secret {other}"),
            };
            *slot = Some(s.clone());
        }
        o
    }

    /// `raftkit.io/caRotatedAt` set: a new CA is trusted beside the old;
    /// once that has had time to reach the pods it signs every certificate
    /// anew; once those have, the old CA is dropped. At every step a pod
    /// still holding the Secrets of the step before and one holding the new
    /// ones trust each other's certificates, so no link is refused. The same
    /// annotation does not rotate twice; a CA with less than a third of its
    /// ten years left rotates by itself.
    #[test]
    fn the_ca_is_rotated_in_steps_that_never_leave_two_pods_distrusting() {
        let r = rc(DEMO);
        let hosts = dns_hosts(&r, "prod", 0..3);
        let pass = |r: &RaftCluster, o: &OwnedSecrets, at: SystemTime| {
            owned_secrets(r, "prod", &hosts, o, at, PROPAGATION).expect("a pass")
        };
        let first = pass(&r, &OwnedSecrets::default(), t0());
        let mut state = written(OwnedSecrets::default(), &first);
        let first_ca = CaSet::from_secret(state.ca.as_ref().expect("ca")).expect("reads");
        let old_ca = first_ca.signing.cert_pem().to_string();
        assert_eq!(first_ca.trust_pem(), old_ca, "one CA: trusted as it is");
        let t1 = t0() + Duration::from_secs(3600);
        assert!(pass(&r, &state, t1).to_write.is_empty());

        let mut asked = r.clone();
        asked.metadata.annotations = Some(
            [(
                crate::crd::CA_ROTATED_AT.to_string(),
                "2027-01-15T01:00:00Z".to_string(),
            )]
            .into_iter()
            .collect(),
        );
        let steps = [
            (t1, "a new CA trusted beside the old (raftkit.io/caRotatedAt 2027-01-15T01:00:00Z)"),
            (t1 + PROPAGATION, "the new CA signs (the old one still trusted); demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: reissued (another CA signed it)"),
            (t1 + 2 * PROPAGATION, "the old CA is no longer trusted"),
        ];
        let renewals = [
            t1 + PROPAGATION,
            t1 + 2 * PROPAGATION,
            t1 + PROPAGATION + LEAF_VALIDITY * 2 / 3,
        ];
        for (i, ((at, want), renew_at)) in steps.into_iter().zip(renewals).enumerate() {
            if i > 0 {
                let early = pass(&asked, &state, at - Duration::from_secs(1));
                assert!(early.to_write.is_empty(), "step {i} waits: {:?}", early.due);
            }
            let due = pass(&asked, &state, at);
            assert_eq!(due.due.as_deref(), Some(want), "step {i}");
            assert_eq!(due.renew_at, Some(renew_at), "step {i}: the next look");
            let next = written(state.clone(), &due);
            // Pods on either side of the step trust each other.
            let (before_leaves, before_trust) = leaves_and_trust(&state);
            let (after_leaves, after_trust) = leaves_and_trust(&next);
            for trust in before_trust.iter().chain(&after_trust) {
                for leaf in before_leaves.iter().chain(&after_leaves) {
                    assert!(
                        trusts(trust, leaf, at),
                        "step {i}: a certificate not trusted"
                    );
                }
            }
            state = next;
        }
        let done = CaSet::from_secret(state.ca.as_ref().expect("ca")).expect("reads");
        let new_ca = done.signing.cert_pem().to_string();
        assert_ne!(new_ca, old_ca);
        assert_eq!((done.next.is_none(), done.previous.is_none()), (true, true));
        let (leaves, trust) = leaves_and_trust(&state);
        assert!(
            trust.iter().all(|t| *t == new_ca),
            "only the new CA trusted"
        );
        let (first_leaves, _) = leaves_and_trust(&written(OwnedSecrets::default(), &first));
        let later = t1 + 3 * PROPAGATION;
        assert!(leaves.iter().all(|l| trusts(&new_ca, l, later)));
        assert!(
            first_leaves.iter().all(|l| !trusts(&new_ca, l, later)),
            "the old CA's certificates are refused"
        );
        assert!(
            pass(&asked, &state, later).to_write.is_empty(),
            "the same annotation rotates once"
        );

        // Unasked, once less than a third of its ten years is left.
        let ca_due = renewal_due_at(&new_ca, CA_VALIDITY, RENEW_WHEN_REMAINING).expect("parses");
        assert!(
            pass(&r, &state, ca_due)
                .to_write
                .iter()
                .all(|s| s.metadata.name.as_deref() != Some("demo-tls-ca")),
            "exactly a third left: the CA stays"
        );
        let auto = pass(&r, &state, ca_due + Duration::from_secs(1));
        assert!(
            auto.due.as_deref().is_some_and(|d| d.starts_with(
                "a new CA trusted beside the old (less than a third of the CA's lifetime left)"
            )),
            "{:?}",
            auto.due
        );
    }

    #[test]
    fn a_certificate_is_renewed_once_less_than_a_third_of_its_lifetime_remains() {
        let r = rc(DEMO);
        let ca = ClusterCa::generate(&r, t0()).expect("CA");
        let cert = ca
            .issue_node(&r, "prod", 0, &pod_dns_name(&r, "prod", 0), t0())
            .expect("cert");
        let not_after = t0() + LEAF_VALIDITY;
        let renew_from = not_after - LEAF_VALIDITY / 3;
        assert_eq!(
            ca.renewal_due_at(&cert.cert_pem).expect("parses"),
            renew_from
        );
        let due = |at| {
            needs_renewal(&cert.cert_pem, at, LEAF_VALIDITY, RENEW_WHEN_REMAINING).expect("parses")
        };
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
        let halfway = not_after - LEAF_VALIDITY / 2;
        assert!(!needs_renewal(&cert.cert_pem, halfway, LEAF_VALIDITY, half).expect("parses"));
        assert!(needs_renewal(
            &cert.cert_pem,
            halfway + Duration::from_secs(1),
            LEAF_VALIDITY,
            half
        )
        .expect("parses"));
        assert!(matches!(
            needs_renewal(
                "not a certificate",
                t0(),
                LEAF_VALIDITY,
                RENEW_WHEN_REMAINING
            ),
            Err(TlsError::BadCertificate { .. })
        ));
        // 30 days of 90: renewed with 29 days left, not with 31.
        let day = Duration::from_secs(DAY);
        assert!(!due(not_after - 31 * day));
        assert!(due(not_after - 29 * day));
    }

    /// `certificateLifetimeSecs: 60`: issued for a minute (after the
    /// backdating), renewed 40 s after issue, not on every pass; a change of
    /// the lifetime reissues every certificate at once.
    #[test]
    fn the_spec_sets_the_lifetime_and_a_new_lifetime_reissues() {
        let short = rc(&DEMO.replace(
            "tls: {enabled: true}",
            "tls: {enabled: true, certificateLifetimeSecs: 60}",
        ));
        assert_eq!(short.certificate_lifetime(), Duration::from_secs(60));
        let hosts = dns_hosts(&short, "prod", 0..3);
        let made = owned_secrets(
            &short,
            "prod",
            &hosts,
            &OwnedSecrets::default(),
            t0(),
            PROPAGATION,
        )
        .expect("made");
        let current = written(OwnedSecrets::default(), &made);
        assert_eq!(made.renew_at, Some(t0() + Duration::from_secs(40)));
        let cert = pod_cert(current.nodes.as_ref().expect("nodes"), "demo-0");
        let validity = with_cert(&cert.cert_pem, "cert", |c| {
            c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
        })
        .expect("parses");
        assert_eq!(validity, 60 + 300, "a minute after five of backdating");
        let at = |secs: u64| {
            owned_secrets(
                &short,
                "prod",
                &hosts,
                &current,
                t0() + Duration::from_secs(secs),
                PROPAGATION,
            )
            .expect("pass")
        };
        assert!(at(39).due.is_none(), "{:?}", at(39).due);
        assert!(at(40).due.is_none(), "exactly a third left");
        let due = at(41).due.expect("due 41 s after issue");
        assert!(
            due.contains("demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: renewed"),
            "{due}"
        );
        // Back to the default: everything is reissued at once.
        let long = rc(DEMO);
        let again =
            owned_secrets(&long, "prod", &hosts, &current, t0(), PROPAGATION).expect("pass");
        let due = again.due.expect("a new lifetime reissues");
        assert!(
            due.contains("reissued (spec.tls.certificateLifetimeSecs changed)"),
            "{due}"
        );
        assert_eq!(again.to_write.len(), 3, "the CA stays");
        assert_eq!(again.renew_at, Some(t0() + LEAF_VALIDITY * 2 / 3));
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
            PROPAGATION,
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
        let stored = written(OwnedSecrets::default(), &first);
        let again = owned_secrets(
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            &stored,
            t0(),
            PROPAGATION,
        )
        .expect("again");
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
        let four = owned_secrets(
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..4),
            &stored,
            t0(),
            PROPAGATION,
        )
        .expect("four");
        assert_eq!(names(&four.to_write), ["demo-tls-nodes"]);
        assert_eq!(four.due.as_deref(), Some("demo-3: new"));
        let stored = written(stored.clone(), &four);
        // Scale-down: demo-3's is dropped.
        let three = owned_secrets(
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            &stored,
            t0(),
            PROPAGATION,
        )
        .expect("three");
        assert_eq!(names(&three.to_write), ["demo-tls-nodes"]);
        assert_eq!(three.due.as_deref(), Some("dropped (no such pod): demo-3"));
        let stored = written(stored.clone(), &three);
        // 61 days on: every leaf is renewed, the CA stays.
        let later = t0() + 61 * Duration::from_secs(DAY);
        let renewed = owned_secrets(
            &r,
            "prod",
            &dns_hosts(&r, "prod", 0..3),
            &stored,
            later,
            PROPAGATION,
        )
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
            owned_secrets(
                &r,
                "prod",
                &dns_hosts(&r, "prod", 0..3),
                &broken,
                t0(),
                PROPAGATION
            ),
            Err(TlsError::MissingKey { .. })
        ));
    }

    #[test]
    fn a_local_pods_certificate_names_the_host_it_advertises() {
        let r = rc(DEMO);
        let hosts = PodHosts::from([(0, "127.0.0.1".to_string()), (1, "127.0.0.1".to_string())]);
        let made = owned_secrets(
            &r,
            "default",
            &hosts,
            &OwnedSecrets::default(),
            t0(),
            PROPAGATION,
        )
        .expect("made");
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
