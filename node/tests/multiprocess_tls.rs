//! Real `raftkit-node` processes with mutual TLS on their port (issue 21):
//! the cluster forms, replicates and answers a client with a certificate;
//! a client without one, with one of another CA, or a plain one is
//! refused; a client certificate cannot change membership while an admin
//! one can; a raft stream whose certificate does not name its sender is
//! dropped; every refusal is counted in `raftkit_tls_refused_total`, which
//! a plain probe may read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use raftkit_client::{AdminClient, ClusterClient};
use raftkit_testkit::procs::start_cluster;
use raftkit_tls::issue::{Ca, LeafSpec};
use raftkit_tls::{Tls, TlsFiles, ROLE_ADMIN, ROLE_CLIENT, ROLE_NODE};

const DAY: Duration = Duration::from_secs(86_400);

fn tls(dir: &std::path::Path, ca: &Ca, stem: &str, spec: Option<LeafSpec>) -> TlsFiles {
    let ca_path = dir.join(format!("{stem}-ca.crt"));
    std::fs::write(&ca_path, &ca.issued.cert_pem).unwrap();
    let (cert, key) = match spec {
        Some(s) => {
            let (c, k) = ca.issue(&s).unwrap().write(dir, stem).unwrap();
            (Some(c), Some(k))
        }
        None => (None, None),
    };
    TlsFiles {
        cert,
        key,
        ca: ca_path,
    }
}

/// `raftkit_tls_refused_total{reason}` as a plain probe reads it.
async fn refused(addr: &str, reason: &str) -> u64 {
    let (code, body) = raftkit_client::probe::probe(addr, "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200, "a plain probe may read /metrics");
    let key = format!("raftkit_tls_refused_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_certified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("raftkit test CA", DAY).unwrap();
    let node = tls(
        d,
        &ca,
        "node",
        Some(LeafSpec::new("node", ROLE_NODE, &["127.0.0.1"], DAY)),
    );
    let s = |p: &std::path::Path| p.display().to_string();
    let args = [
        "--tls-cert".to_string(),
        s(node.cert.as_ref().unwrap()),
        "--tls-key".to_string(),
        s(node.key.as_ref().unwrap()),
        "--tls-ca".to_string(),
        s(&node.ca),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = start_cluster(3, &args, &[]).await;
    let addrs = cluster.addrs.clone();

    // A client with a certificate of the CA: writes replicate over TLS.
    let app = Tls::load(tls(
        d,
        &ca,
        "app",
        Some(LeafSpec::new("app", ROLE_CLIENT, &[], DAY)),
    ))
    .unwrap();
    let client = ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(20))
        .unwrap()
        .with_tls(app.clone());
    for i in 0..20 {
        assert_eq!(client.fetch_add(1).await.unwrap(), i);
    }
    assert_eq!(client.counter_get().await.unwrap(), 20);

    // Refused: no certificate, another CA, plain.
    let before = refused(&addrs[0], "handshake").await;
    let none = Tls::load(tls(d, &ca, "none", None)).unwrap();
    let other_ca = Ca::new("another CA", DAY).unwrap();
    let other = Tls::load(tls(
        d,
        &other_ca,
        "other",
        Some(LeafSpec::new("app", ROLE_CLIENT, &[], DAY)),
    ))
    .unwrap();
    for (what, t, want) in [
        ("no certificate", none, "CertificateRequired"),
        ("another CA", other, "UnknownIssuer"),
    ] {
        let c = ClusterClient::new(vec![addrs[0].clone()], "counter", Duration::from_secs(2))
            .unwrap()
            .with_tls(t);
        let e = c.fetch_add(1).await.expect_err(what).to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
    let plain =
        ClusterClient::new(vec![addrs[0].clone()], "counter", Duration::from_secs(2)).unwrap();
    plain
        .fetch_add(1)
        .await
        .expect_err("a plain client was served");
    assert!(refused(&addrs[0], "handshake").await > before);
    assert!(refused(&addrs[0], "plain").await >= 1);

    // A client certificate may not change membership; an admin one may.
    let roles_before = refused(&addrs[0], "role").await
        + refused(&addrs[1], "role").await
        + refused(&addrs[2], "role").await;
    let as_app = AdminClient::new(addrs.clone(), "counter", Duration::from_secs(5))
        .unwrap()
        .with_tls(app);
    let e = as_app
        .transfer_leader(None)
        .await
        .expect_err("an app moved leadership");
    assert!(e.to_string().contains("OU=raftkit-admin"), "{e}");
    let roles_after = refused(&addrs[0], "role").await
        + refused(&addrs[1], "role").await
        + refused(&addrs[2], "role").await;
    assert!(roles_after > roles_before, "the refusal was not counted");
    let admin = Tls::load(tls(
        d,
        &ca,
        "admin",
        Some(LeafSpec::new("operator", ROLE_ADMIN, &[], DAY)),
    ))
    .unwrap();
    let as_admin = AdminClient::new(addrs.clone(), "counter", Duration::from_secs(10))
        .unwrap()
        .with_tls(admin);
    as_admin
        .transfer_leader(None)
        .await
        .expect("an admin moves leadership");
    assert_eq!(
        client.fetch_add(1).await.unwrap(),
        20,
        "still serving after the transfer"
    );

    // A raft stream whose member certificate names another host.
    let impostor = Tls::load(tls(
        d,
        &ca,
        "impostor",
        Some(LeafSpec::new("x", ROLE_NODE, &["127.0.0.9"], DAY)),
    ))
    .unwrap();
    let before = refused(&addrs[0], "not_member").await;
    let tcp = std::net::TcpStream::connect(&addrs[0]).unwrap();
    let mut s = raftkit_tls::connect_blocking(&impostor, tcp, &addrs[0]).unwrap();
    let preface = raftkit_node::transport::stream::encode_preface(&addrs[1]).unwrap();
    s.write_all(&preface).unwrap();
    s.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&addrs[0], "not_member").await <= before {
        assert!(
            Instant::now() < deadline,
            "the impostor's raft stream was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop_all();
}
