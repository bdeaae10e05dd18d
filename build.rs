// One cfg for "this build generates machine code": `tierbridge_codegen`,
// set on x86-64 unless `--cfg tierbridge_no_codegen` is given (in
// `RUSTFLAGS`), which compiles the crate as on a CPU without the generated
// backend: no dynasm code, libffi only, and the reference runtime
// interprets.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(tierbridge_codegen)");
    println!("cargo::rustc-check-cfg=cfg(tierbridge_no_codegen)");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    if x86_64 && std::env::var_os("CARGO_CFG_TIERBRIDGE_NO_CODEGEN").is_none() {
        println!("cargo::rustc-cfg=tierbridge_codegen");
    }
}
