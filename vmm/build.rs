//! Builds the guest kernel (`guest/kernel`, its own Cargo workspace for the
//! freestanding target setup) and embeds it, so `lockstep run` works without
//! `--kernel`. Set `LOCKSTEP_GUEST_ELF=/path` to embed a prebuilt guest
//! instead, or `LOCKSTEP_GUEST_ELF=none` to embed none.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // This crate lives one level below the repository's root.
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = crate_dir.parent().unwrap_or(&crate_dir).to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("guest.elf");
    println!("cargo:rerun-if-env-changed=LOCKSTEP_GUEST_ELF");
    for p in [
        "../guest/kernel/src",
        "../guest/kernel/Cargo.toml",
        "../guest/kernel/Cargo.lock",
        "../guest/kernel/linker.ld",
        "../guest/kernel/.cargo/config.toml",
        "../guest/abi/src",
        "../guest/services/src",
        "../guest/services/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    match env::var("LOCKSTEP_GUEST_ELF") {
        Ok(v) if v == "none" => return write(&out, &[]),
        Ok(path) => {
            let elf = fs::read(&path).unwrap_or_else(|e| panic!("LOCKSTEP_GUEST_ELF={path}: {e}"));
            return write(&out, &elf);
        }
        Err(_) => {}
    }
    let kernel = root.join("guest/kernel");
    if !kernel.join("Cargo.toml").exists() {
        return write(&out, &[]);
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&kernel)
        .args(["build", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", kernel.join("target"));
    // The outer build's flags are for the host; the guest brings its own.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", kernel.join("target"));
    let status = cmd.status().expect("run cargo for the guest");
    if !status.success() {
        panic!("building the guest kernel failed (cd guest/kernel && cargo build --release)");
    }
    let elf = kernel.join("target/x86_64-unknown-linux-gnu/release/lockstep-guest");
    let bytes = fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
    write(&out, &bytes);
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
