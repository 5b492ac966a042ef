//! The committed CRD (`crds/raftcluster.yaml`) is what `raftkit-operator
//! crdgen` prints from the Rust types: a change of the types without
//! regenerating the file fails here.

use std::path::Path;
use std::process::Command;

#[test]
fn the_committed_crd_equals_the_generated_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkit-operator"))
        .arg("crdgen")
        .output()
        .expect("run crdgen");
    assert!(
        out.status.success(),
        "crdgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/raftcluster.yaml");
    let committed = std::fs::read_to_string(&path).expect("read crds/raftcluster.yaml");
    assert!(
        generated == committed,
        "crds/raftcluster.yaml is stale; regenerate it with\n  cargo run --bin raftkit-operator -- crdgen > crds/raftcluster.yaml"
    );
}

#[test]
fn the_crd_has_the_names_subresources_and_checks_users_rely_on() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/raftcluster.yaml"),
    )
    .expect("read");
    let crd: serde_yaml::Value = serde_yaml::from_str(&committed).expect("yaml");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "raftkit.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["shortNames"][0], "raftc");
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert!(v["subresources"]["status"].is_mapping());
    let props = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(props["replicas"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(props["replicas"]["maximum"].as_f64(), Some(9.0));
    assert_eq!(props["image"]["minLength"].as_u64(), Some(1));
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Replicas", "Ready", "Leader", "Phase", "Age"]);
    let rule = props["storage"]["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .expect("a CEL rule on storage");
    assert!(
        rule.contains("oldSelf.storageClassName"),
        "the storage class is immutable: {rule}"
    );
    // The API server fills in spec.networkPolicy: a cluster made without
    // it is guarded.
    let np = &props["networkPolicy"];
    assert_eq!(np["default"]["enabled"], true);
    assert_eq!(np["default"]["otherPortsOpen"], true);
    assert_eq!(np["properties"]["enabled"]["default"], true);
    assert!(np["properties"]["allowedNamespaces"]["items"]["pattern"]
        .as_str()
        .is_some_and(|p| p.starts_with("^[a-z0-9]")));
}
