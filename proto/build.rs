//! Compiles the project's `.proto` files with protox (pure Rust: no `protoc` needed) and
//! generates prost types, plus an encoded `FileDescriptorSet` for server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &["flyteidl/service/agent.proto", "flyteidl2/connector/service.proto", "agenthost/plugin/v1/plugin.proto"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=flyteidl");
    println!("cargo:rerun-if-changed=flyteidl2");
    println!("cargo:rerun-if-changed=agenthost");
    let fds = protox::compile(FILES, [&root]).unwrap_or_else(|e| panic!("compiling proto files: {e:?}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let encoded = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("descriptor_set.bin"), encoded).expect("writing the descriptor set");
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .include_file("_includes.rs")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust types: {e}"));
}
