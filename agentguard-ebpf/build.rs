// Rebuild the programs when bpf-linker changes: cargo cannot see that
// dependency by itself (aya-template does the same).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
