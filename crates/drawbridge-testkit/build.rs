//! Compiles the gRPC test service when the `grpc` feature is on, with the protoc that the
//! protoc-bin-vendored crate ships.

fn main() {
    #[cfg(feature = "grpc")]
    {
        println!("cargo:rerun-if-changed=proto/echo.proto");
        let protoc = match protoc_bin_vendored::protoc_bin_path() {
            Ok(p) => p,
            Err(e) => panic!("no vendored protoc for this platform: {e}"),
        };
        // SAFETY: a build script runs one thread; PROTOC is how prost-build is told which
        // compiler to run.
        unsafe { std::env::set_var("PROTOC", protoc) };
        if let Err(e) = tonic_prost_build::compile_protos("proto/echo.proto") {
            panic!("compiling proto/echo.proto: {e}");
        }
    }
}
