//! Compiles the strata.v1 protos, and the vendored Open Inference Protocol v2 (`proto/grpc_predict_v2.proto`,
//! package `inference`), with protox (no `protoc` needed) and generates tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "strata/v1/types.proto",
        "strata/v1/routes.proto",
        "strata/v1/control.proto",
        "strata/v1/inference.proto",
        "proto/grpc_predict_v2.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .bytes(".strata.v1.TensorChunk.data")
        .bytes(".strata.v1.BlobChunk.data")
        .bytes(".strata.v1.PushModelRequest.data")
        .compile_fds(fds)?;
    Ok(())
}
