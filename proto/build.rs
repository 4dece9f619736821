//! Compiles the .proto files with protox (pure Rust), so a fresh clone needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tollgate/v1/admin.proto",
        "proto/tollgate/v1/stream.proto",
        "proto/tollgate/v1/raft.proto",
        "proto/tollgate/v1/peer.proto",
        "proto/opentelemetry/otlp.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
