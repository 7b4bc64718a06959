//! Compiles TensorFlow Serving's gRPC interface (`proto/`, see proto/README.md) into prost
//! messages, tonic server traits and clients (the clients drive the benchmark load, src/load.rs) (`$OUT_DIR/tensorflow.serving.rs` and friends).
//!
//! `protox` parses the files (no `protoc` needed on the build machine); `tonic-prost-build`
//! generates the code. `tensorflow.Example` and its features are not generated: they are
//! `quickdraw_data::example`'s, the project's one owner of that format. The descriptor set is
//! kept too (`$OUT_DIR/descriptors.bin`): the config files are text-format protobufs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tensorflow.proto",
        "proto/tensorflow_error.proto",
        "proto/tensorflow_serving.proto",
        "proto/tensorflow_serving_config.proto",
    ];
    for f in files.iter().chain(&["proto/README.md"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The descriptors, for reading the config files' text format at run time (src/config.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let example = "::quickdraw_data::example";
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".tensorflow.Example", format!("{example}::Example"))
        .extern_path(".tensorflow.Features", format!("{example}::Features"))
        .extern_path(".tensorflow.Feature", format!("{example}::Feature"))
        .extern_path(".tensorflow.BytesList", format!("{example}::BytesList"))
        .extern_path(".tensorflow.FloatList", format!("{example}::FloatList"))
        .extern_path(".tensorflow.Int64List", format!("{example}::Int64List"))
        .compile_fds(fds)?;
    Ok(())
}
