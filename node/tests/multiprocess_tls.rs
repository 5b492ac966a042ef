//! Real `raftkit-node` processes with mutual TLS on their port (issue 21):
//! the cluster forms, replicates and answers a client with a certificate;
//! a client without one, with one of another CA, or a plain one is
//! refused; a client certificate cannot change membership while an admin
//! one can; a raft stream whose certificate does not name its sender is
//! dropped; every refusal is counted in `raftkit_tls_refused_total`, which
//! a plain probe may read; a certificate rotated on disk is presented by
//! new connections; the cluster fails over with TLS on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use raftkit_client::{AdminClient, ClusterClient};
use raftkit_node::transport::stream::{encode_frame, encode_preface};
use raftkit_testkit::procs::{free_ports, wait_http_ok, Proc};
use raftkit_tls::issue::{Ca, LeafSpec};
use raftkit_tls::{Tls, TlsFiles, ROLE_ADMIN, ROLE_CLIENT, ROLE_NODE};

const DAY: Duration = Duration::from_secs(86_400);

fn tls(dir: &std::path::Path, ca: &Ca, stem: &str, spec: Option<LeafSpec>) -> TlsFiles {
    let leaf = spec.map(|s| ca.issue(&s).unwrap());
    ca.files(dir, stem, leaf.as_ref()).unwrap()
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

/// Three nodes on 127.0.0.11-13, each with its own certificate naming its
/// own address.
async fn tls_cluster(d: &std::path::Path, ca: &Ca) -> (Vec<String>, Vec<Proc>) {
    let ports = free_ports(3);
    let addrs: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.{}:{}", 11 + i, ports[i]))
        .collect();
    let s = |p: &std::path::Path| p.display().to_string();
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let host = raftkit_tls::host_of(addr);
        let files = tls(
            d,
            ca,
            &format!("node{i}"),
            Some(LeafSpec::new(host, ROLE_NODE, &[host], DAY)),
        );
        let args = vec![
            "--initial-conf".to_string(),
            addrs.join(","),
            "--tls-cert".to_string(),
            s(files.cert.as_ref().unwrap()),
            "--tls-key".to_string(),
            s(files.key.as_ref().unwrap()),
            "--tls-ca".to_string(),
            s(&files.ca),
        ];
        procs.push(Proc::start(addr, &d.join(format!("n{i}")), d, &args));
    }
    for p in &procs {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{} not ready (a plain probe):\n{}",
            p.addr,
            p.log_tail(20)
        );
    }
    (addrs, procs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_certified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("raftkit test CA", DAY).unwrap();
    let (addrs, mut procs) = tls_cluster(d, &ca).await;

    // A client with a certificate of the CA: writes replicate over TLS.
    let app = Tls::load(tls(
        d,
        &ca,
        "app",
        Some(LeafSpec::new("app", ROLE_CLIENT, &[], DAY)),
    ))
    .unwrap();
    let app_tls = app.clone();
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
    let expired = Tls::load(tls(
        d,
        &ca,
        "expired",
        Some(LeafSpec {
            not_before: std::time::SystemTime::now() - 3 * DAY,
            not_after: std::time::SystemTime::now() - DAY,
            ..LeafSpec::new("app", ROLE_CLIENT, &[], DAY)
        }),
    ))
    .unwrap();
    for (what, t, want) in [
        ("no certificate", none, "CertificateRequired"),
        ("another CA", other, "UnknownIssuer"),
        ("expired", expired, "CertificateExpired"),
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

    // Raft streams: a member's certificate that names another host than
    // the one its stream states, and a node certificate of a host that is
    // no member, are both refused.
    let impostor = Tls::load(tls(
        d,
        &ca,
        "impostor",
        Some(LeafSpec::new("x", ROLE_NODE, &["127.0.0.12"], DAY)),
    ))
    .unwrap();
    let stranger = Tls::load(tls(
        d,
        &ca,
        "stranger",
        Some(LeafSpec::new("y", ROLE_NODE, &["127.0.0.19"], DAY)),
    ))
    .unwrap();
    let mut frame = Vec::new();
    let mut heartbeat = raft::eraftpb::Message::default();
    heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    heartbeat.term = 1_000;
    encode_frame(&mut frame, "counter", &heartbeat).unwrap();
    for (what, t, from) in [
        (
            "a certificate naming another host",
            &impostor,
            addrs[0].clone(),
        ),
        (
            "a node that is no member",
            &stranger,
            "127.0.0.19:1".to_string(),
        ),
    ] {
        let before = refused(&addrs[1], "not_member").await;
        let tcp = std::net::TcpStream::connect(&addrs[1]).unwrap();
        let mut s = raftkit_tls::connect_blocking(t, tcp, &addrs[1]).unwrap();
        s.write_all(&encode_preface(&from).unwrap()).unwrap();
        s.write_all(&frame).unwrap();
        s.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused(&addrs[1], "not_member").await <= before {
            assert!(
                Instant::now() < deadline,
                "{what}: its raft stream was not refused"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The heartbeat of term 1000 was never stepped: the term stands.
    let st = as_admin.cluster_status().await;
    assert!(st.term < 1_000, "a refused message reached raft: {st:?}");
    assert_eq!(client.fetch_add(1).await.unwrap(), 21);

    // A member's certificate rotated on disk: new connections get the new
    // one, without a restart; connections already open go on.
    let host1 = raftkit_tls::host_of(&addrs[1]).to_string();
    ca.issue(&LeafSpec::new("rotated", ROLE_NODE, &[&host1], DAY))
        .unwrap()
        .write(d, "node1")
        .unwrap();
    let presented = || async {
        let tcp = tokio::net::TcpStream::connect(&addrs[1]).await.unwrap();
        let s = raftkit_tls::connect(&app_tls, tcp, &addrs[1])
            .await
            .unwrap();
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        raftkit_tls::PeerIdentity::from_der(&der)
            .unwrap()
            .common_name
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented().await != "rotated" {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.fetch_add(1).await.unwrap(), 22);

    // The leader dies: the others elect one over TLS and go on.
    let leader = as_admin
        .cluster_status()
        .await
        .leader
        .expect("a leader")
        .addr;
    let i = addrs.iter().position(|a| *a == leader).unwrap();
    procs[i].kill9();
    assert_eq!(
        client.fetch_add(1).await.unwrap(),
        23,
        "no write lost across the failover"
    );
    let st = as_admin.cluster_status().await;
    assert!(
        st.leader.as_ref().is_some_and(|l| l.addr != leader),
        "{st:?}"
    );
    for p in &mut procs {
        p.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    }
}

/// Bad TLS start-ups are refused with a message that says what to do: a
/// certificate without its key and CA, and the fault-injection endpoints
/// (which cut links and fail writes) with TLS on unless explicitly allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_start_ups_that_would_be_unsafe_or_incomplete_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("raftkit test CA", DAY).unwrap();
    let node = tls(
        d,
        &ca,
        "node",
        Some(LeafSpec::new("n", ROLE_NODE, &["127.0.0.1"], DAY)),
    );
    let s = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca_path) = (
        s(node.cert.as_ref().unwrap()),
        s(node.key.as_ref().unwrap()),
        s(&node.ca),
    );
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut p = Proc::start_with_env(
            &addr,
            &d.join("data"),
            d,
            &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            env,
        );
        let status = p.wait_exit(Duration::from_secs(10));
        (status, p.log_tail(5))
    };

    let (status, log) = run(&["--tls-cert", &cert], &[]);
    assert!(
        status.is_some_and(|s| !s.success()),
        "started with half the TLS flags"
    );
    assert!(log.contains("missing --tls-key, --tls-ca"), "{log}");

    let all = ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca_path];
    let (status, log) = run(&all, &[("RAFTKIT_FAULT_INJECTION", "1")]);
    assert!(
        status.is_some_and(|s| !s.success()),
        "fault injection with TLS started"
    );
    assert!(log.contains("RAFTKIT_FAULT_INJECTION_WITH_TLS=1"), "{log}");

    let mut p = Proc::start_with_env(
        &addr,
        &d.join("data"),
        d,
        &all.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        &[
            ("RAFTKIT_FAULT_INJECTION", "1"),
            ("RAFTKIT_FAULT_INJECTION_WITH_TLS", "1"),
        ],
    );
    assert!(
        wait_http_ok(&addr, "/livez", Duration::from_secs(10)).await,
        "refused although allowed: {}",
        p.log_tail(5)
    );
    p.kill9();
}
