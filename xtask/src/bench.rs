//! `cargo xtask bench l4`: the same loopback server reached three ways, in one
//! run, side by side:
//! - direct: the client dials the server;
//! - agentguard: the client runs under `agentguard exec` (no daemon, so exec
//!   guards in-process); the eBPF hook redirects its connect to the proxy,
//!   which dials the server (a configured target) and copies bytes;
//! - haproxy: the client dials an haproxy frontend in TCP mode in front of the
//!   server — what a conventional L4 proxy costs on the same machine.
//!
//! Each client run measures 1-stream and N-stream receive throughput and
//! sequential connect + first-byte latency (peer.rs). Paths are interleaved
//! over a few rounds, in a rotating order, so that drift on a small shared
//! machine hits all of them alike. Throughput is the median over rounds;
//! latency percentiles are over all probes of all rounds.
//!
//! `cargo xtask bench pg` (pg.rs) uses the same build, work folder and child
//! process handling for pgbench: direct vs agentguard vs pgbouncer.

pub mod http;
pub mod load;
pub mod mysql;
pub mod peer;
pub mod pg;
mod process;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    peer::Report,
    process::{Running, Stop},
};

#[derive(clap::Args, Debug)]
pub struct L4Args {
    /// MiB received by the single-stream run.
    #[arg(long, default_value_t = 1024)]
    one_stream_mib: u64,
    /// MiB received in total by the parallel run (split over the streams).
    #[arg(long, default_value_t = 1024)]
    many_stream_mib: u64,
    /// Parallel streams.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Sequential connect + first-byte probes per round.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Rounds; each runs every path once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Direct,
    Agentguard,
    Haproxy,
}

const PATHS: [Path3; 3] = [Path3::Direct, Path3::Agentguard, Path3::Haproxy];

impl Path3 {
    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct",
            Path3::Agentguard => "agentguard",
            Path3::Haproxy => "haproxy (tcp)",
        }
    }
}

/// One client run may take this long before it is called hung.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

pub fn l4(root: &Path, args: &L4Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.streams == 0 || args.connects == 0 {
        bail!("--rounds, --streams and --connects must be at least 1");
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench l4 needs root: `agentguard exec` loads eBPF programs and makes cgroups");
    }
    let haproxy = find_program("haproxy")
        .context("haproxy not found: run scripts/setup.sh (or `cargo xtask setup`)")?;
    let bins = build(root)?;
    let work = WorkDir::create()?;

    let server = start_server(&bins.xtask, &work)?;
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
    let agentguard_config = work.path.join("agentguard.toml");
    fs::write(
        &agentguard_config,
        agentguard_config_text(&work.path, server_addr),
    )
    .with_context(|| format!("cannot write {}", agentguard_config.display()))?;
    let haproxy = start_haproxy(&haproxy, &work, server_addr)?;

    println!(
        "\nbench l4: {} rounds × (1 stream × {} MiB, {} streams × {} MiB total, {} connects), on {}\n",
        args.rounds,
        args.one_stream_mib,
        args.streams,
        args.many_stream_mib,
        args.connects,
        machine_facts(&haproxy.version),
    );
    let mut results: Vec<(Path3, Vec<Report>)> = PATHS.iter().map(|&p| (p, Vec::new())).collect();
    for round in 0..args.rounds {
        for i in 0..PATHS.len() {
            let path = PATHS[(i + round) % PATHS.len()];
            let addr = match path {
                Path3::Direct | Path3::Agentguard => server_addr,
                Path3::Haproxy => haproxy.addr,
            };
            let started = Instant::now();
            let report = run_client(&bins, &work, &agentguard_config, path, addr, args)
                .with_context(|| format!("round {}, path {}", round + 1, path.name()))?;
            println!(
                "  round {}  {:<14} 1-stream {:>7.0} MB/s  {}-stream {:>7.0} MB/s  p50 {:>5.0} µs  ({:.1} s)",
                round + 1,
                path.name(),
                report.one_stream_bytes_per_sec / 1e6,
                args.streams,
                report.many_stream_bytes_per_sec / 1e6,
                percentile_us(&report.connect_first_byte, 50.0),
                started.elapsed().as_secs_f64(),
            );
            if let Some((_, reports)) = results.iter_mut().find(|(p, _)| *p == path) {
                reports.push(report);
            }
        }
    }
    drop(haproxy);
    drop(server);
    println!("\n{}", table(&results, args.streams));
    Ok(())
}

struct Binaries {
    agentguard: PathBuf,
    xtask: PathBuf,
}

/// Release builds of agentguard and of this crate (whose hidden subcommands
/// are the client and the server), found through cargo's own idea of the
/// target folder (CARGO_TARGET_DIR, config, or the workspace default).
fn build(root: &Path) -> anyhow::Result<Binaries> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building agentguard and the bench peers (release)…");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "agentguard", "-p", "xtask"])
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release -p agentguard -p xtask failed ({status})");
    }
    let release = target_dir(root)?.join("release");
    let bins = Binaries {
        agentguard: release.join("agentguard"),
        xtask: release.join("xtask"),
    };
    for bin in [&bins.agentguard, &bins.xtask] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    Ok(bins)
}

/// Cargo's own idea of the target folder (CARGO_TARGET_DIR, config, or the
/// workspace default).
pub fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata: bad JSON")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    Ok(PathBuf::from(target))
}

/// A scratch folder for configs and logs, removed at the end.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        const PREFIX: &str = "agentguard-bench-";
        let tmp = std::env::temp_dir();
        // Leftovers of runs that were killed (their children died with them:
        // process.rs), recognised by a pid that no longer exists.
        for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let path = tmp.join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

struct Server {
    port: u16,
    _process: Running,
}

fn start_server(xtask: &Path, work: &WorkDir) -> anyhow::Result<Server> {
    let mut cmd = Command::new(xtask);
    cmd.arg("bench-server");
    let stdout = work.file("server.out");
    let mut process = process::spawn(
        "bench server",
        cmd,
        Stop::Kill,
        &stdout,
        &work.file("server.err"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let first = fs::File::open(&stdout)
            .ok()
            .and_then(|f| BufReader::new(f).lines().next()?.ok())
            .and_then(|l| l.trim().parse::<u16>().ok());
        if let Some(port) = first {
            return Ok(Server {
                port,
                _process: process,
            });
        }
        if let Some(status) = process.exited()? {
            bail!(
                "the bench server exited ({status}): {}",
                tail(&work.file("server.err"))
            );
        }
        if Instant::now() >= deadline {
            bail!("the bench server did not report its port within 5 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Isolated from any installed agentguard: its own run folder, so a daemon
/// running on this machine is not picked up and `exec` guards in-process.
fn agentguard_config_text(work: &Path, server: SocketAddr) -> String {
    format!(
        "{}\n[[targets]]\nname = \"bench\"\naddress = \"{server}\"\n",
        config_header("bench l4", work, None)
    )
}

/// The top of a bench's agentguard config: who wrote it, its own state and
/// run folders under `work`, and the policy folder if any.
fn config_header(bench: &str, work: &Path, policy_dir: Option<&Path>) -> String {
    let mut text = format!(
        "# Generated by `cargo xtask {bench}`.\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n",
        work.join("state").display(),
        work.join("run").display(),
    );
    if let Some(dir) = policy_dir {
        let _ = writeln!(text, "policy_dir = \"{}\"", dir.display());
    }
    text
}

struct Haproxy {
    addr: SocketAddr,
    version: String,
    _process: Running,
}

fn start_haproxy(haproxy: &Path, work: &WorkDir, server: SocketAddr) -> anyhow::Result<Haproxy> {
    let version = Command::new(haproxy)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "haproxy (version unknown)".into());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    // Defaults otherwise: threads = CPUs, no splicing.
    let config = format!(
        "# Generated by `cargo xtask bench l4`.\n\
         global\n    maxconn 4096\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 2m\n    timeout server 2m\n\
         frontend bench\n    bind {addr}\n    default_backend server\n\
         backend server\n    server bench {server}\n"
    );
    let config_path = work.file("haproxy.cfg");
    fs::write(&config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut cmd = Command::new(haproxy);
    // -db: stay in the foreground, so that stopping our child stops haproxy.
    cmd.arg("-db").arg("-f").arg(&config_path);
    let err = work.file("haproxy.err");
    let mut process = process::spawn("haproxy", cmd, Stop::Term, &work.file("haproxy.out"), &err)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = process.exited()? {
            bail!("haproxy exited ({status}): {}", tail(&err));
        }
        if Instant::now() >= deadline {
            bail!(
                "haproxy did not listen on {addr} within 5 s: {}",
                tail(&err)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Haproxy {
        addr,
        version,
        _process: process,
    })
}

fn run_client(
    bins: &Binaries,
    work: &WorkDir,
    agentguard_config: &Path,
    path: Path3,
    addr: SocketAddr,
    args: &L4Args,
) -> anyhow::Result<Report> {
    let mut cmd = match path {
        Path3::Direct | Path3::Haproxy => Command::new(&bins.xtask),
        Path3::Agentguard => {
            let mut cmd = Command::new(&bins.agentguard);
            cmd.arg("--config")
                .arg(agentguard_config)
                .arg("exec")
                .arg("--")
                .arg(&bins.xtask);
            // Per-connection info lines off, as an operator would run it for speed.
            cmd.env("AGENTGUARD_LOG", "warn");
            cmd
        }
    };
    cmd.arg("bench-client")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--one-stream-bytes")
        .arg((args.one_stream_mib << 20).to_string())
        .arg("--many-stream-bytes")
        .arg((args.many_stream_mib << 20).to_string())
        .arg("--streams")
        .arg(args.streams.to_string())
        .arg("--connects")
        .arg(args.connects.to_string());
    let (stdout, stderr) = (work.file("client.out"), work.file("client.err"));
    let mut client = process::spawn("bench client", cmd, Stop::Term, &stdout, &stderr)?;
    let status = client.wait(CLIENT_LIMIT)?;
    if !status.success() {
        bail!("{} failed ({status}): {}", client.name(), tail(&stderr));
    }
    let text =
        fs::read_to_string(&stdout).with_context(|| format!("cannot read {}", stdout.display()))?;
    Report::parse(&text)
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        format!("\n{tail}")
    }
}

/// The first line a program prints about its version (stdout, else
/// stderr, where nginx puts it), or `fallback`.
fn version_line(program: &Path, arg: &str, fallback: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| fallback.to_owned())
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's tools live in sbin, which a user's PATH may lack.
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn machine_facts(haproxy_version: &str) -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine skews everything; say how busy it was.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    format!(
        "{cpus} CPUs, Linux {}, {haproxy_version}; load average {load} at start",
        kernel.trim()
    )
}

/// Nearest-rank percentile, in microseconds.
fn percentile_us(samples: &[std::time::Duration], pct: f64) -> f64 {
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_unstable_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Row {
    name: &'static str,
    one: f64,
    many: f64,
    p50: f64,
    p99: f64,
}

/// A Markdown table (pasted as is into BENCHMARKS.md), then the goals.
fn table(results: &[(Path3, Vec<Report>)], streams: usize) -> String {
    let rows: Vec<Row> = results
        .iter()
        .map(|(path, reports)| {
            let probes: Vec<Duration> = reports
                .iter()
                .flat_map(|r| r.connect_first_byte.iter().copied())
                .collect();
            Row {
                name: path.name(),
                one: median(reports.iter().map(|r| r.one_stream_bytes_per_sec / 1e6)),
                many: median(reports.iter().map(|r| r.many_stream_bytes_per_sec / 1e6)),
                p50: percentile_us(&probes, 50.0),
                p99: percentile_us(&probes, 99.0),
            }
        })
        .collect();
    let Some(direct) = rows.first() else {
        return String::new();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| path | 1-stream MB/s | {streams}-stream MB/s | p50 connect+first byte µs | p99 µs | 1-stream vs direct | {streams}-stream vs direct | added p50 µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:+.0} |",
            row.name,
            row.one,
            row.many,
            row.p50,
            row.p99,
            row.one / direct.one,
            row.many / direct.many,
            row.p50 - direct.p50,
        );
    }
    let _ = writeln!(
        out,
        "\nMB = 10^6 bytes; throughput: median over rounds; latency: all probes of all rounds."
    );
    if let Some(guard) = rows.iter().find(|r| r.name == Path3::Agentguard.name()) {
        let ratio = (guard.one / direct.one).min(guard.many / direct.many);
        let added = guard.p50 - direct.p50;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "goal ≥ 0.9× direct throughput: {} (worst {ratio:.2}×); goal added p50 < 100 µs: {} ({added:+.0} µs)",
            verdict(ratio >= 0.9),
            verdict(added < 100.0),
        );
    }
    out
}
