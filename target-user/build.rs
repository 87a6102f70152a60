//! Embeds the XDP object: builds target-ebpf with Debian's toolchain when its inputs
//! change, or takes a prebuilt object from `XDP_TARGET_EBPF_OBJ`.

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("target-ebpf.o");
    println!("cargo::rerun-if-env-changed=XDP_TARGET_EBPF_OBJ");
    let obj = if let Some(prebuilt) = std::env::var_os("XDP_TARGET_EBPF_OBJ") {
        let p = PathBuf::from(prebuilt);
        println!("cargo::rerun-if-changed={}", p.display());
        p
    } else {
        for input in ebpf_build::inputs(&root) {
            println!("cargo::rerun-if-changed={}", input.display());
        }
        match ebpf_build::build(&root) {
            Ok(p) => p,
            Err(why) => {
                println!("cargo::error=cannot build the XDP program: {why}");
                std::process::exit(1);
            }
        }
    };
    if let Err(e) = std::fs::copy(&obj, &out) {
        println!(
            "cargo::error=cannot copy the XDP object {}: {e}",
            obj.display()
        );
        std::process::exit(1);
    }
}
