//! Project chores, run as `cargo xtask …` (the alias lives in .cargo/config.toml):
//! - `setup`: the idempotent machine set-up (scripts/setup.sh);
//! - `install`: binary, systemd unit, config, policies, man page (install.rs);
//! - `bench l4`: direct vs agentguard vs haproxy on loopback (see bench.rs);
//! - `bench pg`: pgbench direct vs agentguard vs pgbouncer (see bench/pg.rs);
//! - `bench mysql`: sysbench direct vs agentguard vs haproxy (see bench/mysql.rs);
//! - `bench http`: wrk direct vs agentguard vs haproxy, and HTTPS interception
//!   vs mitmproxy (see bench/http.rs);
//! - `load`: 1,000 concurrent guarded PostgreSQL and HTTP connections through
//!   the daemon, with its RSS and descriptors sampled (see bench/load.rs);
//! - `vm-test`: the redirect checks in qemu guests on Debian's 6.1 and 6.12
//!   kernels (see vm.rs; `vm-guest` and `vm-client` are its in-guest halves).
//!
//! `bench-server` and `bench-client` are the benchmark's two peers. They are
//! hidden: `bench l4` runs them from a release build of this same binary, the
//! client as its own process so that it can be put under `agentguard exec`.

mod bench;
mod install;
mod setup;
mod vm;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "agentguard project chores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain and the Debian packages (runs scripts/setup.sh).
    Setup,
    /// Install the binary, systemd unit, default config, policies, man page
    /// and completions; create the control socket's groups.
    Install(install::InstallArgs),
    /// Benchmarks (not tests): numbers go to BENCHMARKS.md.
    #[command(subcommand)]
    Bench(Bench),
    /// The benchmark's server (started by `bench l4`).
    #[command(hide = true)]
    BenchServer,
    /// The benchmark's client (started by `bench l4`).
    #[command(hide = true)]
    BenchClient(bench::peer::ClientArgs),
    /// Many concurrent guarded connections through the daemon (results: docs/reliability.md).
    Load(bench::load::LoadArgs),
    /// Boot Debian kernels in qemu and run the redirect checks inside.
    VmTest(vm::VmArgs),
    /// The checks, inside the guest (run by vm-tests/init).
    #[command(hide = true)]
    VmGuest,
    /// One agent connect, inside the guest.
    #[command(hide = true)]
    VmClient {
        /// Join this cgroup first.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Instead of a TCP connect, send an ICMP echo request from this
        /// kind of socket: `ping` (SOCK_DGRAM) or `raw`.
        #[arg(long)]
        icmp: Option<String>,
        addr: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// L4 throughput and connect latency: direct vs agentguard vs haproxy (TCP mode).
    L4(bench::L4Args),
    /// pgbench select-only and TPC-B like: direct vs agentguard vs pgbouncer (session mode).
    Pg(bench::pg::PgArgs),
    /// sysbench oltp_read_only and oltp_read_write: direct vs agentguard vs haproxy (tcp).
    Mysql(bench::mysql::MysqlArgs),
    /// wrk, plain HTTP: direct vs agentguard vs haproxy (http mode); HTTPS:
    /// direct vs agentguard's interception vs mitmproxy.
    Http(bench::http::HttpArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(&workspace_root()),
        Command::Install(args) => install::run(&workspace_root(), &args),
        Command::Bench(Bench::L4(args)) => bench::l4(&workspace_root(), &args),
        Command::Bench(Bench::Pg(args)) => bench::pg::pg(&workspace_root(), &args),
        Command::Bench(Bench::Mysql(args)) => bench::mysql::mysql(&workspace_root(), &args),
        Command::Bench(Bench::Http(args)) => bench::http::http(&workspace_root(), &args),
        Command::BenchServer => bench::peer::serve(),
        Command::BenchClient(args) => bench::peer::client(&args),
        Command::Load(args) => bench::load::load(&workspace_root(), &args),
        Command::VmTest(args) => vm::vm_test(&workspace_root(), &args),
        Command::VmGuest => vm::guest::guest(),
        Command::VmClient { cgroup, icmp, addr } => {
            vm::guest::client(cgroup.as_deref(), icmp.as_deref(), addr)
        }
    }
}

/// The workspace root: this crate's parent folder.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_owned()
}
