#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::issue::{Ca, Issued, LeafSpec};
use crate::*;

const DAY: Duration = Duration::from_secs(86_400);

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Files for `leaf` (or none) trusting `ca`.
    fn files(&self, stem: &str, leaf: Option<&Issued>, ca: &Ca) -> TlsFiles {
        ca.files(self.dir.path(), stem, leaf).unwrap()
    }
}

fn node(ca: &Ca, host: &str) -> Issued {
    ca.issue(&LeafSpec::new(host, ROLE_NODE, &[host, "127.0.0.1"], DAY))
        .unwrap()
}

/// Serves one echo connection per accept; sends back who the client is.
async fn server(
    tls: Arc<Tls>,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Vec<io::Result<PeerIdentity>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..1 {
            let (tcp, _) = listener.accept().await.unwrap();
            match accept(&tls, tcp).await {
                Ok((mut s, id)) => {
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                    s.flush().await.unwrap();
                    seen.push(Ok(id));
                }
                Err(e) => seen.push(Err(e)),
            }
        }
        seen
    });
    (addr, task)
}

async fn call(tls: &Tls, addr: std::net::SocketAddr, name: &str) -> io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = connect(tls, tcp, &format!("{name}:{}", addr.port())).await?;
    s.write_all(b"ping").await?;
    s.flush().await?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    assert_eq!(&b, b"ping");
    Ok(())
}

#[tokio::test]
async fn a_client_with_a_certificate_of_the_ca_is_served_and_known_by_its_role() {
    let ca = Ca::new("test CA", DAY).unwrap();
    let d = Dir::new();
    let server_tls =
        Tls::load(d.files("node", Some(&node(&ca, "demo-0.demo-peers")), &ca)).unwrap();
    let admin = ca
        .issue(&LeafSpec::new("operator", ROLE_ADMIN, &[], DAY))
        .unwrap();
    let client_tls = Tls::load(d.files("admin", Some(&admin), &ca)).unwrap();

    let (addr, task) = server(server_tls.clone()).await;
    call(&client_tls, addr, "127.0.0.1").await.unwrap();
    let seen = task.await.unwrap();
    let id = seen[0].as_ref().unwrap();
    assert!(id.is_admin() && !id.is_node(), "{id:?}");
    assert_eq!(id.describe(), "CN=operator, OU=raftkit-admin");

    let own = server_tls.own_identity().unwrap();
    assert!(own.is_node());
    assert!(own.names("demo-0.demo-peers") && own.names("DEMO-0.demo-peers"));
    assert!(own.names("127.0.0.1") && !own.names("demo-1.demo-peers"));
}

#[tokio::test]
async fn no_certificate_another_ca_expired_or_a_wrong_name_are_refused() {
    let ca = Ca::new("test CA", DAY).unwrap();
    let other = Ca::new("another CA", DAY).unwrap();
    let d = Dir::new();
    let server_tls =
        Tls::load(d.files("node", Some(&node(&ca, "demo-0.demo-peers")), &ca)).unwrap();
    let app = |ca: &Ca, spec: LeafSpec| ca.issue(&spec).unwrap();
    let expired = LeafSpec {
        not_before: SystemTime::now() - 3 * DAY,
        not_after: SystemTime::now() - DAY,
        ..LeafSpec::new("app", ROLE_CLIENT, &[], DAY)
    };
    // What the client is told: the alert the server sent.
    let cases: Vec<(&str, TlsFiles, &str)> = vec![
        (
            "no certificate",
            d.files("none", None, &ca),
            "CertificateRequired",
        ),
        (
            "another CA",
            d.files(
                "other",
                Some(&app(&other, LeafSpec::new("app", ROLE_CLIENT, &[], DAY))),
                &ca,
            ),
            "UnknownCA",
        ),
        (
            "expired",
            d.files("expired", Some(&app(&ca, expired)), &ca),
            "CertificateExpired",
        ),
    ];
    for (what, files, alert) in cases {
        let client = Tls::load(files).unwrap();
        let (addr, task) = server(server_tls.clone()).await;
        let called = call(&client, addr, "127.0.0.1").await;
        let seen = task.await.unwrap();
        assert!(
            seen[0].is_err(),
            "{what}: the server let the client in: {:?}",
            seen[0]
        );
        let e = called.expect_err(what).to_string();
        assert!(e.contains(alert), "{what}: {e:?} should name {alert}");
        let served = seen[0].as_ref().unwrap_err().to_string();
        eprintln!("{what}: client sees {e:?}; server {served:?}");
    }

    // The client checks the server too: a name its certificate lacks.
    let good = Tls::load(d.files(
        "good",
        Some(&app(&ca, LeafSpec::new("app", ROLE_CLIENT, &[], DAY))),
        &ca,
    ))
    .unwrap();
    let (addr, task) = server(server_tls.clone()).await;
    let e = call(&good, addr, "demo-1.demo-peers").await.unwrap_err();
    assert!(
        e.to_string().contains("demo-1.demo-peers") && e.to_string().contains("TLS handshake"),
        "{e}"
    );
    task.abort();
}

#[test]
fn bad_files_are_errors_that_name_the_file_and_the_problem() {
    let ca = Ca::new("test CA", DAY).unwrap();
    let d = Dir::new();
    let ok = d.files("node", Some(&node(&ca, "n0")), &ca);
    let garbage = d.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = d.dir.path().join("missing.pem");
    let other_key = {
        let (_, k) = node(&ca, "n1").write(d.dir.path(), "n1").unwrap();
        k
    };
    let cases = [
        (
            TlsFiles {
                ca: missing.clone(),
                ..ok.clone()
            },
            "missing.pem",
        ),
        (
            TlsFiles {
                cert: Some(garbage.clone()),
                ..ok.clone()
            },
            "no PEM certificate",
        ),
        (
            TlsFiles {
                key: Some(garbage.clone()),
                ..ok.clone()
            },
            "no PEM private key",
        ),
        (
            TlsFiles {
                key: None,
                ..ok.clone()
            },
            "without a key",
        ),
        (
            TlsFiles {
                key: Some(other_key),
                ..ok.clone()
            },
            "do not match",
        ),
    ];
    for (files, want) in cases {
        let e = Tls::load(files.clone()).unwrap_err().to_string();
        assert!(e.contains(want), "{files:?}: {e:?} should say {want:?}");
    }
    Tls::load(ok).unwrap();
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_used_by_new_connections() {
    let ca = Ca::new("test CA", DAY).unwrap();
    let d = Dir::new();
    let files = d.files("node", Some(&node(&ca, "n0")), &ca);
    let server_tls = Tls::load(files.clone()).unwrap();
    let first = server_tls.own_identity().unwrap();
    assert!(first.names("n0"));

    // Replaced in place, as Kubernetes updates a mounted Secret; a broken
    // set in between is not taken.
    std::fs::write(files.cert.as_ref().unwrap(), "not yet").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert!(
            server_tls.own_identity().unwrap().names("n0"),
            "a broken file was taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server_tls.checked.lock().1.is_some() {
            break;
        }
    }
    node(&ca, "n0-renamed").write(d.dir.path(), "node").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server_tls.own_identity().unwrap().names("n0-renamed") {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections present it.
    let client = Tls::load(d.files("c", Some(&node(&ca, "c")), &ca)).unwrap();
    let (addr, task) = server(server_tls.clone()).await;
    call(&client, addr, "n0-renamed").await.unwrap();
    task.await.unwrap()[0].as_ref().unwrap();
}

#[tokio::test]
async fn an_identity_from_pem_in_memory_connects_as_one_from_files() {
    let ca = Ca::new("test CA", DAY).unwrap();
    let d = Dir::new();
    let server_tls = Tls::load(d.files("node", Some(&node(&ca, "n0")), &ca)).unwrap();
    let admin = ca
        .issue(&LeafSpec::new("operator", ROLE_ADMIN, &[], DAY))
        .unwrap();
    let client =
        Tls::from_pem(Some((&admin.cert_pem, &admin.key_pem)), &ca.issued.cert_pem).unwrap();
    assert!(client.files().is_none());
    assert!(client.own_identity().unwrap().is_admin());
    let (addr, task) = server(server_tls).await;
    call(&client, addr, "n0").await.unwrap();
    assert!(task.await.unwrap()[0].as_ref().unwrap().is_admin());
    let e = Tls::from_pem(Some(("garbage", &admin.key_pem)), &ca.issued.cert_pem).unwrap_err();
    assert!(e.to_string().contains("the certificate"), "{e}");
}
