//! Generates the gRPC code for `proto/*.proto` with a vendored protoc, so a
//! fresh machine needs no protoc installed. Nothing generated is committed.

const PROTOS: [&str; 3] = ["proto/peer.proto", "proto/admin.proto", "proto/app.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .bytes(".raftkit.v1")
        .build_server(true)
        .compile_protos(&PROTOS, &["proto"])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
