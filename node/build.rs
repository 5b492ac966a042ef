//! Generates the gRPC code for `proto/raftkit.proto` with a vendored protoc,
//! so a fresh machine needs no protoc installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .bytes(".raftkit.v1")
        .bytes(".etcdserverpb")
        .build_server(true)
        .compile_protos(&["proto/raftkit.proto", "proto/etcd_kv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/raftkit.proto");
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    Ok(())
}
