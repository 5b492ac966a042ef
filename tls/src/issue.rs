//! Issuing certificates (feature `issue`): a CA, and certificates it signs
//! for members, admins and clients, in the roles [`crate::PeerIdentity`]
//! reads. Used by the operator (when the user brings no certificates) and
//! by tests.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Certificate(format!("{what}: {e}"))
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
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

/// What a leaf certificate is for.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// The role ([`crate::ROLE_NODE`], [`crate::ROLE_ADMIN`], ...), as OU.
    pub role: String,
    /// DNS names and IP addresses it is valid for (a member's advertised
    /// host; a client needs none).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// Valid from an hour ago (clock skew) for `lifetime`.
    pub fn new(common_name: &str, role: &str, names: &[&str], lifetime: Duration) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            common_name: common_name.to_string(),
            role: role.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + lifetime,
        }
    }
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    pub issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `common_name`, valid for `lifetime`.
    pub fn new(common_name: &str, lifetime: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = at(now - Duration::from_secs(3600));
        params.not_after = at(now + lifetime);
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

    /// The CA from its PEM certificate and key (to issue more later).
    pub fn from_pem(issued: Issued) -> Result<Ca, TlsError> {
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

    /// Issues a leaf certificate: client and server use (members dial and
    /// are dialled with the same one).
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        dn.push(DnType::OrganizationalUnitName, spec.role.as_str());
        params.distinguished_name = dn;
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
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(spec.not_before);
        params.not_after = at(spec.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("signing a certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
