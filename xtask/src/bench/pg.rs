//! `cargo xtask bench pg`: pgbench against one throwaway PostgreSQL cluster,
//! reached three ways in one run:
//! - direct: pgbench dials the server;
//! - agentguard: pgbench runs under `agentguard exec` (no daemon, so exec
//!   guards in-process); the eBPF hook sends its connects to the proxy, which
//!   decodes the PostgreSQL protocol, asks the shipped Rego policies about
//!   every statement and masks the rows (the policies' default mask list);
//! - pgbouncer: pgbench dials a pgbouncer in session mode in front of the
//!   server — what a conventional PostgreSQL proxy costs on the same machine.
//!
//! Two workloads, select-only (`pgbench -S`) and TPC-B like (pgbench's default
//! script), each with the same clients, threads and duration on every path.
//! The paths of a workload run back to back (rotating the order when there
//! are several rounds), so that drift on a small shared machine hits all of
//! them alike. TPS and average latency come from pgbench's own summary.
//!
//! `--audit` measures what recording costs instead of comparing with
//! pgbouncer: agentguard as shipped (each reply held until its decision is
//! committed), with `[audit] commit_before_reply = false`, and with
//! `[audit] enabled = false`.

use std::{
    ffi::CString,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Binaries, WorkDir, build, find_program, free_port,
    process::{self, Running, Stop},
    tail,
};

#[derive(clap::Args, Debug)]
pub struct PgArgs {
    /// Seconds per pgbench run (`-T`).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// pgbench clients (`-c`).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// pgbench threads (`-j`).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// pgbench scale factor for `pgbench -i`.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Rounds; each runs every path once per workload.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// What recording costs: agentguard with its audit log as shipped, with
    /// `commit_before_reply = false`, and with `[audit] enabled = false`
    /// (instead of pgbouncer).
    #[arg(long)]
    audit: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PgPath {
    Direct,
    Agentguard,
    Pgbouncer,
    /// `[audit] commit_before_reply = false`.
    AgentguardNoWait,
    /// `[audit] enabled = false`.
    AgentguardNoAudit,
}

const PATHS: [PgPath; 3] = [PgPath::Direct, PgPath::Agentguard, PgPath::Pgbouncer];
const AUDIT_PATHS: [PgPath; 4] = [
    PgPath::Direct,
    PgPath::Agentguard,
    PgPath::AgentguardNoWait,
    PgPath::AgentguardNoAudit,
];

impl PgPath {
    fn name(self) -> &'static str {
        match self {
            PgPath::Direct => "direct",
            PgPath::Agentguard => "agentguard",
            PgPath::Pgbouncer => "pgbouncer (session)",
            PgPath::AgentguardNoWait => "agentguard, replies not held",
            PgPath::AgentguardNoAudit => "agentguard, audit off",
        }
    }

    /// The `[audit]` section of this path's agentguard config.
    fn audit_config(self) -> &'static str {
        match self {
            PgPath::AgentguardNoWait => "\n[audit]\ncommit_before_reply = false\n",
            PgPath::AgentguardNoAudit => "\n[audit]\nenabled = false\n",
            _ => "",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    SelectOnly,
    TpcB,
}

const WORKLOADS: [Workload; 2] = [Workload::SelectOnly, Workload::TpcB];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only (-S)",
            Workload::TpcB => "TPC-B like",
        }
    }
}

/// The database pgbench fills and uses.
pub(super) const DATABASE: &str = "bench";
/// The cluster's superuser, whom everyone connects as (trust auth).
pub(super) const DB_USER: &str = "postgres";

/// What one pgbench run reported.
struct Report {
    tps: f64,
    latency_ms: f64,
    transactions: u64,
    failed: u64,
}

pub fn pg(root: &Path, args: &PgArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.clients == 0 || args.jobs == 0 || args.seconds == 0 {
        bail!("--rounds, --clients, --jobs and --seconds must be at least 1");
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "bench pg needs root: `agentguard exec` loads eBPF programs and makes cgroups, \
             and PostgreSQL and pgbouncer run as the postgres user"
        );
    }
    let pg_bin = pg_bin_dir()
        .context("PostgreSQL server not found under /usr/lib/postgresql: run scripts/setup.sh")?;
    let pgbouncer = find_program("pgbouncer")
        .context("pgbouncer not found: run scripts/setup.sh (or `cargo xtask setup`)")?;
    let user = User::lookup(DB_USER)?;
    let bins = build(root)?;
    let work = WorkDir::create()?;

    // Drop order is the reverse of declaration: pgbouncer stops before the
    // server, then the work folder goes.
    let server = Postgres::start(&pg_bin, &work, &user, &[])?;
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
    println!(
        "filling the database: pgbench -i -s {} (direct)…",
        args.scale
    );
    let started = Instant::now();
    server.initialise(args.scale)?;
    println!("  done in {:.1} s", started.elapsed().as_secs_f64());
    let paths: &[PgPath] = if args.audit { &AUDIT_PATHS } else { &PATHS };
    for path in paths {
        let file = work.file(&config_name(*path));
        let text = agentguard_config_text(root, &work.path, server_addr) + path.audit_config();
        fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let bouncer = Pgbouncer::start(&pgbouncer, &work, &user, server_addr)?;

    println!(
        "\nbench pg: {} round(s) × {} workloads × {} paths, pgbench -c {} -j {} -T {}, scale {}, on {}\n",
        args.rounds,
        WORKLOADS.len(),
        paths.len(),
        args.clients,
        args.jobs,
        args.seconds,
        args.scale,
        machine_facts(&server.version, &bouncer.version),
    );
    let mut results: Vec<(Workload, PgPath, Vec<Report>)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for workload in WORKLOADS {
        for path in paths {
            results.push((workload, *path, Vec::new()));
        }
        for round in 0..args.rounds {
            for i in 0..paths.len() {
                let path = paths[(i + round) % paths.len()];
                if workload == Workload::TpcB {
                    // What pgbench does before a run without -n (which the
                    // guard would refuse: TRUNCATE), done directly.
                    server.psql(&[
                        "VACUUM pgbench_branches",
                        "VACUUM pgbench_tellers",
                        "TRUNCATE pgbench_history",
                    ])?;
                }
                let port = match path {
                    PgPath::Pgbouncer => bouncer.port,
                    _ => server.port,
                };
                let started = Instant::now();
                let run = PgbenchRun {
                    pgbench: &server.bin.join("pgbench"),
                    bins: &bins,
                    agentguard_config: &work.file(&config_name(path)),
                    work: &work,
                    port,
                    args,
                };
                match run.run(workload, path) {
                    Ok(report) => {
                        println!(
                            "  round {}  {:<17} {:<20} {:>8.0} TPS  {:>7.3} ms avg  {} transactions, {} failed  ({:.1} s)",
                            round + 1,
                            workload.name(),
                            path.name(),
                            report.tps,
                            report.latency_ms,
                            report.transactions,
                            report.failed,
                            started.elapsed().as_secs_f64(),
                        );
                        if let Some((_, _, reports)) = results
                            .iter_mut()
                            .find(|(w, p, _)| *w == workload && *p == path)
                        {
                            reports.push(report);
                        }
                    }
                    Err(e) => {
                        let message = format!(
                            "round {}, {}, {}: {e:#}",
                            round + 1,
                            workload.name(),
                            path.name()
                        );
                        println!("  FAILED {message}");
                        failures.push(message);
                    }
                }
            }
        }
    }
    drop(bouncer);
    drop(server);
    println!("\n{}", table(&results));
    if !failures.is_empty() {
        bail!(
            "{} pgbench run(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// The newest PostgreSQL under Debian's /usr/lib/postgresql/VERSION/bin.
pub(super) fn pg_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pgbench").is_file())
                .then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// An unprivileged account that PostgreSQL and pgbouncer run as (both refuse
/// to run as root).
pub(super) struct User {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl User {
    pub(super) fn lookup(name: &str) -> anyhow::Result<Self> {
        let c_name = CString::new(name)?;
        // SAFETY: getpwnam(3) with a valid C string; the record is copied out
        // at once, and nothing else in this process calls getpw* concurrently.
        let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if pw.is_null() {
            bail!("no user {name:?}: is the postgresql package installed? (scripts/setup.sh)");
        }
        // SAFETY: non-null pointer to a passwd record, valid until the next getpw* call.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
        })
    }

    /// Makes `cmd` run as this user, with only its primary group.
    fn apply(&self, cmd: &mut Command) {
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: setgroups(2), setgid(2) and setuid(2) are async-signal-safe,
        // and nothing else runs between fork and exec. This closure runs before
        // the one process::spawn adds, so the parent-death signal is set after
        // the credential change (which would clear it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(1, &gid) == -1
                    || libc::setgid(gid) == -1
                    || libc::setuid(uid) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A throwaway cluster on 127.0.0.1 (trust auth, its socket in its data
/// folder), stopped with a fast shutdown when dropped.
pub(super) struct Postgres {
    bin: PathBuf,
    pub(super) port: u16,
    version: String,
    process: Running,
}

impl Postgres {
    /// `settings`: extra `-c name=value` server settings.
    pub(super) fn start(
        bin: &Path,
        work: &WorkDir,
        user: &User,
        settings: &[&str],
    ) -> anyhow::Result<Self> {
        let data = work.file("pg");
        fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
        std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid))
            .with_context(|| format!("cannot chown {} to {}", data.display(), user.name))?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", DB_USER]);
        user.apply(&mut initdb);
        run_quiet("initdb", initdb)?;

        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "PostgreSQL (version unknown)".into());
        let port = free_port()?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // The proxies' cost is in the round trips; with a WAL flush per
            // commit the TPC-B runs would measure this machine's disk.
            .args(["-c", "synchronous_commit=off"]);
        for setting in settings {
            cmd.args(["-c", setting]);
        }
        user.apply(&mut cmd);
        let err = work.file("postgres.err");
        let mut process =
            process::spawn("postgres", cmd, Stop::Int, &work.file("postgres.out"), &err)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if let Some(status) = process.exited()? {
                bail!("postgres exited ({status}): {}", tail(&err));
            }
            if Instant::now() >= deadline {
                bail!("postgres was not ready within 30 s: {}", tail(&err));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            bin: bin.to_owned(),
            port,
            version,
            process,
        })
    }

    /// Creates the bench database and fills it (`pgbench -i`), directly.
    pub(super) fn initialise(&self, scale: u32) -> anyhow::Result<()> {
        let mut createdb = self.client("createdb");
        createdb.arg(DATABASE);
        run_quiet("createdb", createdb)?;
        let mut init = self.client("pgbench");
        init.args(["-i", "-q", "-s", &scale.to_string(), DATABASE]);
        run_quiet("pgbench -i", init)
    }

    /// Runs SQL statements directly (not through any proxy), each on its own
    /// (VACUUM cannot run inside a transaction block).
    fn psql(&self, statements: &[&str]) -> anyhow::Result<()> {
        let mut psql = self.client("psql");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE]);
        for sql in statements {
            psql.args(["-c", sql]);
        }
        run_quiet("psql", psql)
    }

    /// A client program of this cluster's version, pointed at it over TCP.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            DB_USER,
        ]);
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // `process` stops the postmaster (SIGINT: fast shutdown) when it drops;
        // say so if it had already died, which would explain failed runs.
        if let Ok(Some(status)) = self.process.exited() {
            eprintln!("postgres had exited before the end of the bench ({status})");
        }
    }
}

/// Runs a set-up command to completion; its output only matters when it fails.
fn run_quiet(name: &str, mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {name} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

struct Pgbouncer {
    port: u16,
    version: String,
    _process: Running,
}

impl Pgbouncer {
    fn start(
        pgbouncer: &Path,
        work: &WorkDir,
        user: &User,
        server: SocketAddr,
    ) -> anyhow::Result<Self> {
        let version = super::version_line(pgbouncer, "--version", "PgBouncer (version unknown)");
        let port = free_port()?;
        let auth_file = work.file("pgbouncer.users");
        // trust still wants the user listed; the password is not checked.
        fs::write(&auth_file, format!("\"{DB_USER}\" \"\"\n"))
            .with_context(|| format!("cannot write {}", auth_file.display()))?;
        // Defaults otherwise (default_pool_size 20 ≥ the clients; no log file,
        // no pid file, no unix socket: it writes nothing in the work folder).
        let config = format!(
            "; Generated by `cargo xtask bench pg`.\n\
             [databases]\n\
             {DATABASE} = host={host} port={port} dbname={DATABASE}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             pool_mode = session\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             max_client_conn = 200\n",
            host = server.ip(),
            port = server.port(),
            listen = port,
            auth = auth_file.display(),
        );
        let config_path = work.file("pgbouncer.ini");
        fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut cmd = Command::new(pgbouncer);
        // Without -d it stays in the foreground, so stopping our child stops it.
        cmd.arg(&config_path);
        user.apply(&mut cmd);
        let err = work.file("pgbouncer.err");
        let mut process = process::spawn(
            "pgbouncer",
            cmd,
            Stop::Term,
            &work.file("pgbouncer.out"),
            &err,
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = process.exited()? {
                bail!("pgbouncer exited ({status}): {}", tail(&err));
            }
            if Instant::now() >= deadline {
                bail!(
                    "pgbouncer did not listen on 127.0.0.1:{port} within 5 s: {}",
                    tail(&err)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            port,
            version,
            _process: process,
        })
    }
}

/// Isolated from any installed agentguard (its own run folder, so a daemon
/// running on this machine is not picked up and `exec` guards in-process),
/// with the repository's shipped policies: statements are judged by them and
/// rows masked by their default mask list.
fn agentguard_config_text(root: &Path, work: &Path, server: SocketAddr) -> String {
    format!(
        "{}\n[[targets]]\nname = \"bench-db\"\naddress = \"{server}\"\nprotocol = \"postgres\"\n",
        super::config_header("bench pg", work, Some(&root.join("policies"))),
    )
}

fn config_name(path: PgPath) -> String {
    match path.audit_config() {
        "" => "agentguard.toml".into(),
        _ => format!("agentguard-{}.toml", path.name().replace([' ', ','], "")),
    }
}

/// One pgbench run, the same command line on every path.
struct PgbenchRun<'a> {
    pgbench: &'a Path,
    bins: &'a Binaries,
    agentguard_config: &'a Path,
    work: &'a WorkDir,
    port: u16,
    args: &'a PgArgs,
}

impl PgbenchRun<'_> {
    fn run(&self, workload: Workload, path: PgPath) -> anyhow::Result<Report> {
        let mut cmd = match path {
            PgPath::Direct | PgPath::Pgbouncer => Command::new(self.pgbench),
            PgPath::Agentguard | PgPath::AgentguardNoWait | PgPath::AgentguardNoAudit => {
                let mut cmd = Command::new(&self.bins.agentguard);
                cmd.arg("--config")
                    .arg(self.agentguard_config)
                    .arg("exec")
                    .arg("--")
                    .arg(self.pgbench);
                // Per-connection info lines off; denials still show (warn).
                cmd.env("AGENTGUARD_LOG", "warn");
                cmd
            }
        };
        // -n: no vacuum before the run (the TRUNCATE it includes is refused
        // by the shipped policy); the orchestrator does it directly instead.
        cmd.args(["-n", "-h", "127.0.0.1", "-U", DB_USER])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(self.args.clients.to_string())
            .arg("-j")
            .arg(self.args.jobs.to_string())
            .arg("-T")
            .arg(self.args.seconds.to_string());
        if workload == Workload::SelectOnly {
            cmd.arg("-S");
        }
        cmd.arg(DATABASE);
        let (stdout, stderr) = (self.work.file("pgbench.out"), self.work.file("pgbench.err"));
        let mut client = process::spawn("pgbench", cmd, Stop::Term, &stdout, &stderr)?;
        let limit = Duration::from_secs(self.args.seconds + 60);
        let status = client.wait(limit)?;
        let out = fs::read_to_string(&stdout).unwrap_or_default();
        let err = fs::read_to_string(&stderr).unwrap_or_default();
        // pgbench's errors and, on the agentguard path, the guard's warnings
        // (denied or held statements) share this file.
        let err_lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        if !err_lines.is_empty() {
            println!(
                "    stderr of {} ({} lines, first 20):",
                path.name(),
                err_lines.len()
            );
            for line in err_lines.iter().take(20) {
                println!("      {line}");
            }
        }
        if !status.success() {
            bail!(
                "{} exited with {status}; stdout:{}",
                client.name(),
                tail(&stdout)
            );
        }
        let report = Report::parse(&out).with_context(|| format!("pgbench output:\n{out}"))?;
        if report.failed > 0 {
            bail!("{} failed transactions", report.failed);
        }
        Ok(report)
    }
}

impl Report {
    /// pgbench's summary: `number of transactions actually processed: N`,
    /// `number of failed transactions: N (…)`, `latency average = X ms`,
    /// `tps = X (without initial connection time)`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let value = |prefix: &str| -> anyhow::Result<f64> {
            let rest = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .with_context(|| format!("no {prefix:?} line"))?;
            let number = rest
                .split_whitespace()
                .next()
                .with_context(|| format!("nothing after {prefix:?}"))?;
            number
                .parse::<f64>()
                .with_context(|| format!("{prefix:?}: bad number {number:?}"))
        };
        let transactions = value("number of transactions actually processed:")?;
        // Older pgbench versions do not print the line; none failed there,
        // or the run would have aborted.
        let failed = value("number of failed transactions:").unwrap_or(0.0);
        Ok(Self {
            tps: value("tps =")?,
            latency_ms: value("latency average =")?,
            transactions: transactions as u64,
            failed: failed as u64,
        })
    }
}

fn machine_facts(postgres_version: &str, pgbouncer_version: &str) -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine skews everything; say how busy it was.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    format!(
        "{cpus} CPUs, Linux {}, {postgres_version}, {pgbouncer_version}; load average {load} at start",
        kernel.trim()
    )
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

/// A Markdown table (pasted as is into BENCHMARKS.md), then the goals.
fn table(results: &[(Workload, PgPath, Vec<Report>)]) -> String {
    let stats = |reports: &[Report]| {
        (
            median(reports.iter().map(|r| r.tps)),
            median(reports.iter().map(|r| r.latency_ms)),
        )
    };
    let find = |workload: Workload, path: PgPath| {
        results
            .iter()
            .find(|(w, p, r)| *w == workload && *p == path && !r.is_empty())
            .map(|(_, _, r)| stats(r))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | path | TPS | avg latency ms | TPS vs direct | latency vs direct |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for (workload, path, reports) in results {
        if reports.is_empty() {
            let _ = writeln!(
                out,
                "| {} | {} | failed | failed | – | – |",
                workload.name(),
                path.name()
            );
            continue;
        }
        let (tps, latency) = stats(reports);
        let (tps_ratio, latency_ratio) = match find(*workload, PgPath::Direct) {
            Some((d_tps, d_latency)) => (
                format!("{:.2}×", tps / d_tps),
                format!("{:.2}×", latency / d_latency),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {tps:.0} | {latency:.3} | {tps_ratio} | {latency_ratio} |",
            workload.name(),
            path.name(),
        );
    }
    let _ = writeln!(
        out,
        "\nMedian over rounds; pgbench's `tps` (without initial connection time) and `latency average`."
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let select = (
        find(Workload::SelectOnly, PgPath::Direct),
        find(Workload::SelectOnly, PgPath::Agentguard),
    );
    if let (Some((d_tps, _)), Some((g_tps, _))) = select {
        let ratio = g_tps / d_tps;
        let _ = writeln!(
            out,
            "goal ≥ 0.8× direct TPS on select-only: {} ({ratio:.2}×)",
            verdict(ratio >= 0.8),
        );
        if let Some((b_tps, _)) = find(Workload::SelectOnly, PgPath::Pgbouncer) {
            let _ = writeln!(
                out,
                "issue 14: goal select-only ≥ 0.6× direct TPS: {} ({ratio:.2}×); \
                 goal select-only ≥ 0.85× pgbouncer's TPS: {} ({:.2}×)",
                verdict(ratio >= 0.6),
                verdict(g_tps / b_tps >= 0.85),
                g_tps / b_tps,
            );
        }
    }
    for workload in WORKLOADS {
        let audited = find(workload, PgPath::Agentguard);
        for variant in [PgPath::AgentguardNoWait, PgPath::AgentguardNoAudit] {
            if let (Some((_, on)), Some((_, off))) = (audited, find(workload, variant)) {
                let _ = writeln!(
                    out,
                    "recording as shipped vs {}, {}: latency {:.3}× ({:+.1}%)",
                    variant.name(),
                    workload.name(),
                    on / off,
                    (on / off - 1.0) * 100.0,
                );
            }
        }
        if let (Some((g_tps, _)), Some((b_tps, _))) = (
            find(workload, PgPath::Agentguard),
            find(workload, PgPath::Pgbouncer),
        ) {
            let _ = writeln!(
                out,
                "goal ahead of pgbouncer, {}: {} (agentguard {:.2}× pgbouncer's TPS)",
                workload.name(),
                verdict(g_tps > b_tps),
                g_tps / b_tps,
            );
        }
    }
    out
}
