//! Issuing certificates (feature `issue`): a CA, and the certificates it
//! signs for members, admins and clients in the roles
//! [`crate::PeerIdentity`] reads. The one issuer: the operator makes its
//! clusters' certificates with it (`raftkit-operator`'s `tls`, which adds
//! the Secrets and the renewal rules), and tests theirs.
//!
//! Subjects are `O=raftkit, OU=<role>, CN=<name>`. A CA signs leaves only
//! (path length 0). A member's certificate serves and dials (server and
//! client authentication); an admin's or an application's only dials.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

use crate::TlsError;

/// The organization of every subject.
pub const ORGANIZATION: &str = "raftkit";

/// How long before "now" a certificate made now starts to be valid, for
/// clocks a little behind.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Certificate(format!("{what}: {e}"))
}

fn at(t: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(_) => None,
    };
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| {
            TlsError::Certificate(format!(
                "time {t:?} is before 1970 or past what X.509 can hold"
            ))
        })
}

fn subject(common_name: &str, role: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(ou) = role {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    /// Without the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            write_replacing(path, text.as_bytes())?;
        }
        Ok((cert, key))
    }
}

/// Writes a file by renaming a finished temporary one over it, so a
/// reader (a node reloading its certificate) never sees half of it.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Read {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Whether `key_pem` is the private key of `cert_pem`. An error says which
/// of the two cannot be read.
pub fn key_belongs(cert_pem: &str, key_pem: &str) -> Result<bool, TlsError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Pem {
        path: "the key".into(),
        what: format!("not a PEM private key: {e}"),
    })?;
    let bad_cert = |what: String| TlsError::Pem {
        path: "the certificate".into(),
        what,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad_cert(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad_cert(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.public_key().raw == key.subject_public_key_info().as_slice())
}

/// What a leaf certificate is for.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// The role ([`crate::ROLE_NODE`], [`crate::ROLE_ADMIN`], ...), as OU.
    /// A member's certificate serves and dials; the others only dial.
    pub role: String,
    /// DNS names and IP addresses it is valid for (a member's advertised
    /// host; a client needs none).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// Valid from [`BACKDATE`] ago for `lifetime`.
    pub fn new(common_name: &str, role: &str, names: &[&str], lifetime: Duration) -> LeafSpec {
        LeafSpec::at(
            common_name,
            role,
            names.iter().map(|n| n.to_string()).collect(),
            SystemTime::now(),
            lifetime,
        )
    }

    /// Valid from [`BACKDATE`] before `now` for `lifetime`.
    pub fn at(
        common_name: &str,
        role: &str,
        names: Vec<String>,
        now: SystemTime,
        lifetime: Duration,
    ) -> LeafSpec {
        LeafSpec {
            common_name: common_name.to_string(),
            role: role.to_string(),
            names,
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now.checked_add(lifetime).unwrap_or(now),
        }
    }
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    pub issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    /// Without the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("issued", &self.issued).finish()
    }
}

impl Ca {
    /// A new CA named `common_name`, valid from [`BACKDATE`] ago for
    /// `lifetime`.
    pub fn new(common_name: &str, lifetime: Duration) -> Result<Ca, TlsError> {
        Ca::generate(common_name, SystemTime::now(), lifetime)
    }

    /// A new CA named `common_name`, valid from [`BACKDATE`] before `now`
    /// for `lifetime`. It signs leaves only.
    pub fn generate(
        common_name: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = at(now.checked_add(lifetime).unwrap_or(now))?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("signing the CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA from its PEM certificate and key (to issue more later); the
    /// key must be the certificate's.
    pub fn from_pem(issued: Issued) -> Result<Ca, TlsError> {
        if !key_belongs(&issued.cert_pem, &issued.key_pem)? {
            return Err(TlsError::Pair(
                "the CA's private key does not belong to its certificate".into(),
            ));
        }
        let key = KeyPair::from_pem(&issued.key_pem).map_err(rcgen_err("the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&issued.cert_pem, key)
            .map_err(rcgen_err("the CA certificate"))?;
        Ok(Ca { issued, issuer })
    }

    /// The files a node or client loads, written into `dir`: this CA's
    /// certificate as `<stem>-ca.crt`, and `leaf` (if any) as `<stem>.crt`
    /// and `<stem>.key`.
    pub fn files(
        &self,
        dir: &Path,
        stem: &str,
        leaf: Option<&Issued>,
    ) -> Result<crate::TlsFiles, TlsError> {
        let ca = dir.join(format!("{stem}-ca.crt"));
        write_replacing(&ca, self.issued.cert_pem.as_bytes())?;
        let (cert, key) = match leaf {
            Some(l) => {
                let (c, k) = l.write(dir, stem)?;
                (Some(c), Some(k))
            }
            None => (None, None),
        };
        Ok(crate::TlsFiles { cert, key, ca })
    }

    /// Issues a leaf certificate with a new key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(&spec.common_name, Some(&spec.role));
        params.subject_alt_names = spec
            .names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(rcgen_err("a DNS name")),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if spec.role == crate::ROLE_NODE {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(spec.not_before)?;
        params.not_after = at(spec.not_after)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("signing a certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
