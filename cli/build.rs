//! Generates the gRPC client for etcd's KV API (`proto/etcd_kv.proto`, used
//! by the benchmark) with a vendored protoc, so a fresh machine needs no
//! protoc installed. RaftKit's own protocol is generated in `raftkit-proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .bytes(".etcdserverpb")
        .build_server(false)
        .compile_protos(&["proto/etcd_kv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    Ok(())
}
