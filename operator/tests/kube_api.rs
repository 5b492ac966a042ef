//! The exact requests the Kubernetes backend and the leader election make,
//! against a mock API server (tower-test): server-side apply of every owned
//! object under one field manager (the TLS Secrets and the NetworkPolicy too), the status
//! subresource, Events, pod and claim deletion, and the Lease.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use raftkit_operator::backend::kube::{KubeBackend, FIELD_MANAGER};
use raftkit_operator::backend::{EventType, Workload};
use raftkit_operator::build::OperatorPods;
use raftkit_operator::crd::{RaftCluster, RaftClusterStatus};
use raftkit_operator::leader::{LeaseLock, Outcome};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn rc() -> RaftCluster {
    serde_yaml::from_str(
        "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo, namespace: prod, uid: u-1}\nspec: {replicas: 3}\n",
    )
    .unwrap()
}

/// The operator's own pods, as `raftkit-operator run` is told them.
fn operator_pods() -> OperatorPods {
    OperatorPods {
        namespace: "ops".into(),
        labels: [("app.kubernetes.io/name", "raftkit-operator")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server saw it.
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// Takes the next request and answers it with `status` and `body`, or with
/// the request's own body (`None`: an apply echoed as the server stores it).
async fn respond(handle: &mut ApiHandle, status: StatusCode, body: Option<Value>) -> Seen {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5 s")
        .expect("the client is alive");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    let reply = body.unwrap_or_else(|| sent.clone());
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    Seen {
        method,
        path,
        query,
        content_type,
        body: sent,
    }
}

async fn answer(handle: &mut ApiHandle, status: StatusCode, body: Value) -> Seen {
    respond(handle, status, Some(body)).await
}

async fn echo(handle: &mut ApiHandle) -> Seen {
    respond(handle, StatusCode::OK, None).await
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

fn assert_applied(s: &Seen, path: &str) {
    assert_eq!(s.method, Method::PATCH, "{path}");
    assert_eq!(s.path, path);
    assert!(
        s.query.contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{path}: {}",
        s.query
    );
    assert!(s.query.contains("force=true"), "{path}: {}", s.query);
    assert_eq!(s.content_type, "application/apply-patch+yaml", "{path}");
}

#[tokio::test]
async fn the_workload_is_server_side_applied_object_by_object_under_one_field_manager() {
    let (client, mut handle) = mock_client();
    let backend = KubeBackend::new(client, Some("op-0".into()), operator_pods());
    let r = rc();
    let call = tokio::spawn(async move { backend.apply(&r, 3, "abc").await });
    let expected = [
        "/api/v1/namespaces/prod/configmaps/demo-config",
        "/api/v1/namespaces/prod/services/demo-peers",
        "/api/v1/namespaces/prod/services/demo",
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/demo",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/demo-node",
        "/apis/apps/v1/namespaces/prod/statefulsets/demo",
    ];
    let mut seen = Vec::new();
    for path in expected {
        let s = echo(&mut handle).await;
        assert_applied(&s, path);
        seen.push(s);
    }
    call.await.unwrap().unwrap();
    let sts = &seen[5].body;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(
        sts["spec"]["template"]["metadata"]["labels"]["raftkit.io/revision"],
        "abc"
    );
    assert_eq!(seen[1].body["spec"]["publishNotReadyAddresses"], true);
    let np = &seen[4].body;
    assert_eq!(np["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(np["kind"], "NetworkPolicy");
    assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"raftkit.io/cluster": "demo"}})
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"][0],
        json!({
            "ports": [{"protocol": "TCP", "port": 8080}],
            "from": [
                {"podSelector": {"matchLabels": {"raftkit.io/cluster": "demo"}}},
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "raftkit-operator"}},
                },
            ],
        })
    );
    assert!(
        np["spec"]["ingress"][1]["from"].is_null(),
        "every other port from anywhere"
    );
}

/// `spec.networkPolicy.enabled: false`: nothing is applied to
/// networkpolicies; the policy is read back and deleted only when this
/// cluster made it (a user's policy of that name, or none, stays as is).
#[tokio::test]
async fn with_the_network_policy_off_the_clusters_own_is_deleted_and_no_other() {
    use raftkit_operator::build;
    let mut r = rc();
    r.spec.network_policy.enabled = false;
    let ours = serde_json::to_value(build::network_policy(&rc(), &operator_pods())).unwrap();
    let mut theirs = ours.clone();
    theirs["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let policy = "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/demo-node";
    for (status, live, deleted) in [
        (StatusCode::OK, ours, true),
        (StatusCode::OK, theirs, false),
        (StatusCode::NOT_FOUND, not_found(), false),
    ] {
        let (client, mut handle) = mock_client();
        let backend = KubeBackend::new(client, None, operator_pods());
        let rr = r.clone();
        let call = tokio::spawn(async move { backend.apply(&rr, 3, "abc").await });
        for _ in 0..4 {
            let s = echo(&mut handle).await;
            assert_eq!(s.method, Method::PATCH);
            assert!(!s.path.contains("networkpolicies"), "{}", s.path);
        }
        let s = answer(&mut handle, status, live).await;
        assert_eq!((s.method, s.path.as_str()), (Method::GET, policy));
        if deleted {
            let gone =
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
            let s = answer(&mut handle, StatusCode::OK, gone).await;
            assert_eq!((s.method, s.path.as_str()), (Method::DELETE, policy));
        }
        let s = echo(&mut handle).await;
        assert_applied(&s, "/apis/apps/v1/namespaces/prod/statefulsets/demo");
        call.await.unwrap().unwrap();
    }
}

/// Observe reads the NetworkPolicy back: missing, or applied from another
/// spec, it is reported as drift (the plan then applies the workload again
/// without a new revision); the one applied from this spec is in step.
#[tokio::test]
async fn observe_reports_a_missing_or_stale_network_policy() {
    use raftkit_operator::build;
    let r = rc();
    let sts = serde_json::to_value(build::stateful_set(&r, "prod", 3, "abc").unwrap()).unwrap();
    let in_step = serde_json::to_value(build::network_policy(&r, &operator_pods())).unwrap();
    let mut edited = r.clone();
    edited.spec.network_policy.allowed_namespaces = vec!["frontend".into()];
    let stale = serde_json::to_value(build::network_policy(&edited, &operator_pods())).unwrap();
    let cases = [
        (
            StatusCode::NOT_FOUND,
            not_found(),
            Some("the NetworkPolicy is missing"),
        ),
        (
            StatusCode::OK,
            stale,
            Some("the NetworkPolicy is out of date"),
        ),
        (StatusCode::OK, in_step, None),
    ];
    for (status, policy, want) in cases {
        let (client, mut handle) = mock_client();
        let backend = KubeBackend::new(client, None, operator_pods());
        let rr = r.clone();
        let call = tokio::spawn(async move { backend.observe(&rr).await });
        let s = answer(&mut handle, StatusCode::OK, sts.clone()).await;
        assert_eq!(s.path, "/apis/apps/v1/namespaces/prod/statefulsets/demo");
        let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []});
        let s = answer(&mut handle, StatusCode::OK, pods).await;
        assert_eq!(s.path, "/api/v1/namespaces/prod/pods");
        let s = answer(&mut handle, status, policy).await;
        assert_eq!(s.method, Method::GET);
        assert_eq!(
            s.path,
            "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/demo-node"
        );
        let state = call.await.unwrap().unwrap().expect("a workload");
        assert_eq!(state.drifted.as_deref(), want);
        assert_eq!((state.replicas, state.revision.as_str()), (3, "abc"));
    }
}

/// The members' Secret the operator makes for `demo` in `prod`.
fn nodes_secret() -> k8s_openapi::api::core::v1::Secret {
    use raftkit_operator::tls;
    let mut r = rc();
    r.spec.tls = serde_yaml::from_str("{enabled: true}").unwrap();
    let now = std::time::SystemTime::now();
    let ca = tls::ClusterCa::generate(&r, now).unwrap();
    let hosts = tls::dns_hosts(&r, "prod", 0..3);
    tls::node_certs(&ca, &r, "prod", &hosts, None, now)
        .unwrap()
        .secret
}

#[tokio::test]
async fn tls_secrets_are_read_by_name_and_server_side_applied_owned_by_the_cluster() {
    let (client, mut handle) = mock_client();
    let backend = KubeBackend::new(client, None, operator_pods());
    let r = rc();
    let secret = nodes_secret();
    let sent = secret.clone();
    let call = tokio::spawn(async move {
        let missing = backend.read_secret(&r, "demo-tls-ca").await?;
        backend.apply_secret(&r, &sent).await?;
        let back = backend.read_secret(&r, "demo-tls-nodes").await?;
        Ok::<_, raftkit_operator::Error>((missing, back))
    });
    let s = answer(&mut handle, StatusCode::NOT_FOUND, not_found()).await;
    assert_eq!(
        (s.method, s.path.as_str()),
        (Method::GET, "/api/v1/namespaces/prod/secrets/demo-tls-ca")
    );
    let s = echo(&mut handle).await;
    assert_applied(&s, "/api/v1/namespaces/prod/secrets/demo-tls-nodes");
    let body = &s.body;
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "demo-tls-nodes");
    assert_eq!(body["metadata"]["namespace"], "prod");
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "RaftCluster");
    assert_eq!(owner["uid"], "u-1");
    assert_eq!(owner["controller"], true);
    assert_eq!(body["metadata"]["labels"]["raftkit.io/cluster"], "demo");
    let data = body["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "demo-0.crt",
            "demo-0.key",
            "demo-1.crt",
            "demo-1.key",
            "demo-2.crt",
            "demo-2.key"
        ]
    );
    let pem: k8s_openapi::ByteString = serde_json::from_value(data["demo-1.crt"].clone()).unwrap();
    assert!(
        pem.0.starts_with(b"-----BEGIN CERTIFICATE-----"),
        "base64 of the PEM"
    );
    assert!(
        body.get("stringData").is_none(),
        "data only: the apply owns exactly these keys"
    );
    // Read back as the server stores it.
    let s = answer(
        &mut handle,
        StatusCode::OK,
        serde_json::to_value(&secret).unwrap(),
    )
    .await;
    assert_eq!(
        (s.method, s.path.as_str()),
        (
            Method::GET,
            "/api/v1/namespaces/prod/secrets/demo-tls-nodes"
        )
    );
    let (missing, back) = call.await.unwrap().unwrap();
    assert!(missing.is_none(), "a missing Secret is None, not an error");
    assert_eq!(back.unwrap().data, secret.data);
}

#[tokio::test]
async fn status_is_applied_to_the_status_subresource() {
    let (client, mut handle) = mock_client();
    let backend = KubeBackend::new(client, None, operator_pods());
    let r = rc();
    let status = RaftClusterStatus {
        phase: "Running".into(),
        replicas: 3,
        bootstrapped: true,
        ..RaftClusterStatus::default()
    };
    let mut stored = serde_json::to_value(&r).unwrap();
    stored["status"] = serde_json::to_value(&status).unwrap();
    let call = tokio::spawn(async move { backend.write_status(&r, &status).await });
    // The server answers with the whole resource.
    let s = answer(&mut handle, StatusCode::OK, stored).await;
    assert_applied(
        &s,
        "/apis/raftkit.io/v1alpha1/namespaces/prod/raftclusters/demo/status",
    );
    assert_eq!(s.body["apiVersion"], "raftkit.io/v1alpha1");
    assert_eq!(s.body["kind"], "RaftCluster");
    assert_eq!(s.body["status"]["phase"], "Running");
    assert_eq!(s.body["status"]["bootstrapped"], true);
    assert!(
        s.body.get("spec").is_none(),
        "the status patch owns no spec field"
    );
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn events_are_recorded_on_the_raftcluster() {
    let (client, mut handle) = mock_client();
    let backend = KubeBackend::new(client, Some("op-0".into()), operator_pods());
    let r = rc();
    let call = tokio::spawn(async move {
        backend
            .event(
                &r,
                EventType::Normal,
                "AddLearner",
                "add demo-3 as a learner",
            )
            .await
    });
    let s = echo(&mut handle).await;
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.path, "/apis/events.k8s.io/v1/namespaces/prod/events");
    assert_eq!(s.body["regarding"]["kind"], "RaftCluster");
    assert_eq!(s.body["regarding"]["name"], "demo");
    assert_eq!(s.body["reason"], "AddLearner");
    assert_eq!(s.body["note"], "add demo-3 as a learner");
    assert_eq!(s.body["type"], "Normal");
    assert_eq!(s.body["reportingController"], FIELD_MANAGER);
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_wiped_pod_loses_its_claim_first_and_missing_objects_are_not_errors() {
    let (client, mut handle) = mock_client();
    let backend = KubeBackend::new(client, None, operator_pods());
    let r = rc();
    let call = tokio::spawn(async move { backend.wipe_pod(&r, "demo-2").await });
    let s = answer(&mut handle, StatusCode::NOT_FOUND, not_found()).await;
    assert_eq!(s.method, Method::DELETE);
    assert_eq!(
        s.path,
        "/api/v1/namespaces/prod/persistentvolumeclaims/data-demo-2"
    );
    let s = answer(
        &mut handle,
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-2"}}),
    )
    .await;
    assert_eq!(s.method, Method::DELETE);
    assert_eq!(s.path, "/api/v1/namespaces/prod/pods/demo-2");
    call.await.unwrap().unwrap();
}

fn lease(holder: &str, renewed: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "raftkit-operator", "namespace": "ops", "resourceVersion": "41"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": renewed,
            "leaseTransitions": transitions
        }
    })
}

/// Replica op-a contending for the lease, against a fresh mock server.
fn contend() -> (
    tokio::task::JoinHandle<Result<Outcome, raftkit_operator::Error>>,
    ApiHandle,
) {
    let (client, handle) = mock_client();
    let lock = LeaseLock::new(
        client,
        "ops",
        "raftkit-operator",
        "op-a",
        Duration::from_secs(15),
    );
    (
        tokio::spawn(async move { lock.try_acquire_or_renew().await }),
        handle,
    )
}

const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[tokio::test]
async fn the_lease_is_created_when_missing_kept_when_held_and_taken_over_when_expired() {
    let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/raftkit-operator";

    // Missing: created with this replica as holder.
    let (call, mut handle) = contend();
    let s = answer(&mut handle, StatusCode::NOT_FOUND, not_found()).await;
    assert_eq!((s.method, s.path.as_str()), (Method::GET, path));
    let s = echo(&mut handle).await;
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(s.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(call.await.unwrap().unwrap(), Outcome::Held);

    // Held by another replica and fresh: nothing is written.
    let (call, mut handle) = contend();
    answer(&mut handle, StatusCode::OK, lease("op-b", &now_micro(), 3)).await;
    assert_eq!(call.await.unwrap().unwrap(), Outcome::HeldBy("op-b".into()));
    drop(handle);

    // Held by another replica but expired: taken over, conditionally on
    // the version read.
    let (call, mut handle) = contend();
    answer(&mut handle, StatusCode::OK, lease("op-b", LONG_AGO, 3)).await;
    let s = echo(&mut handle).await;
    assert_eq!((s.method, s.path.as_str()), (Method::PUT, path));
    assert_eq!(s.body["metadata"]["resourceVersion"], "41");
    assert_eq!(s.body["spec"]["holderIdentity"], "op-a");
    assert_eq!(s.body["spec"]["leaseTransitions"], 4);
    assert_eq!(call.await.unwrap().unwrap(), Outcome::Held);

    // Two contenders race for the expired lease: the loser's write is
    // refused (409) and it does not act.
    let (call, mut handle) = contend();
    answer(&mut handle, StatusCode::OK, lease("op-b", LONG_AGO, 3)).await;
    let s = answer(&mut handle, StatusCode::CONFLICT, conflict()).await;
    assert_eq!(s.method, Method::PUT);
    assert!(matches!(call.await.unwrap().unwrap(), Outcome::HeldBy(_)));
}
