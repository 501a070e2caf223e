//! Builds the kernel programs (agentguard-ebpf) for bpfel-unknown-none with
//! the nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. `scripts/setup.sh` installs what this needs.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agentguard-ebpf",
            root_dir: "../agentguard-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
