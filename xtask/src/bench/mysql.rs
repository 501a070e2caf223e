//! `cargo xtask bench mysql`: sysbench against one throwaway MariaDB,
//! reached three ways in one run:
//! - direct: sysbench dials the server;
//! - agentguard: sysbench runs under `agentguard exec` (no daemon, so exec
//!   guards in-process); the proxy decodes the MySQL protocol, asks the
//!   shipped Rego policies about every statement (sysbench prepares on the
//!   server: each COM_STMT_EXECUTE is decided) and masks the rows;
//! - haproxy: sysbench dials an haproxy frontend in TCP mode — what a
//!   proxy that reads nothing costs on the same machine.
//!
//! Two workloads, `oltp_read_only` and `oltp_read_write`, with the same
//! threads and duration on every path, back to back (rotating the order
//! across rounds). TPS and average latency come from sysbench's summary.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    WorkDir, build, find_program, free_port, median,
    process::{self, Running, Stop},
    start_haproxy, tail,
};

#[derive(clap::Args, Debug)]
pub struct MysqlArgs {
    /// Seconds per sysbench run (`--time`).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// sysbench threads (client connections).
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Tables and rows per table for `sysbench prepare`.
    #[arg(long, default_value_t = 4)]
    tables: usize,
    #[arg(long, default_value_t = 10000)]
    table_size: usize,
    /// Rounds; each runs every path once per workload.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Agentguard,
    Haproxy,
}

const ROUTES: [Route; 3] = [Route::Direct, Route::Agentguard, Route::Haproxy];

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Agentguard => "agentguard",
            Route::Haproxy => "haproxy (tcp)",
        }
    }
}

const WORKLOADS: [&str; 2] = ["oltp_read_only", "oltp_read_write"];
const DATABASE: &str = "sbtest";
const USER: &str = "bench";
const PASSWORD: &str = "bench";

struct Report {
    tps: f64,
    latency_ms: f64,
}

pub fn mysql(root: &Path, args: &MysqlArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.threads == 0 || args.seconds == 0 {
        bail!("--rounds, --threads and --seconds must be at least 1");
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench mysql needs root: `agentguard exec` loads eBPF programs and makes cgroups");
    }
    let sysbench = find_program("sysbench").context("sysbench not found: run scripts/setup.sh")?;
    let haproxy = find_program("haproxy").context("haproxy not found: run scripts/setup.sh")?;
    let bins = build(root)?;
    let work = WorkDir::create()?;
    let server = Mariadb::start(&work)?;
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
    let config = work.file("agentguard.toml");
    fs::write(
        &config,
        format!(
            "{}\n[[targets]]\nname = \"bench-db\"\naddress = \"{server_addr}\"\nprotocol = \"mysql\"\n",
            super::config_header("bench mysql", &work.path, Some(&root.join("policies"))),
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let haproxy = start_haproxy(&haproxy, &work, server_addr)?;
    let common = |port: u16| -> Vec<String> {
        vec![
            "--db-driver=mysql".into(),
            "--mysql-host=127.0.0.1".into(),
            format!("--mysql-port={port}"),
            format!("--mysql-user={USER}"),
            format!("--mysql-password={PASSWORD}"),
            format!("--mysql-db={DATABASE}"),
            format!("--tables={}", args.tables),
            format!("--table-size={}", args.table_size),
        ]
    };
    println!("filling the database: sysbench oltp_read_write prepare (direct)…");
    let started = Instant::now();
    let out = Command::new(&sysbench)
        .args(common(server.port))
        .args(["oltp_read_write", "prepare"])
        .output()
        .context("cannot run sysbench prepare")?;
    if !out.status.success() {
        bail!(
            "sysbench prepare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("  done in {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "\nbench mysql: {} round(s) × {} workloads × {} paths, sysbench --threads={} --time={}, {} tables × {} rows, {}, {}\n",
        args.rounds,
        WORKLOADS.len(),
        ROUTES.len(),
        args.threads,
        args.seconds,
        args.tables,
        args.table_size,
        server.version,
        haproxy.version,
    );
    let mut results: Vec<(&str, Route, Vec<Report>)> = Vec::new();
    let mut failures = Vec::new();
    for workload in WORKLOADS {
        for route in ROUTES {
            results.push((workload, route, Vec::new()));
        }
        for round in 0..args.rounds {
            for i in 0..ROUTES.len() {
                let route = ROUTES[(i + round) % ROUTES.len()];
                let port = match route {
                    Route::Haproxy => haproxy.addr.port(),
                    _ => server.port,
                };
                let mut cmd = match route {
                    Route::Agentguard => {
                        let mut cmd = Command::new(&bins.agentguard);
                        cmd.arg("--config")
                            .arg(&config)
                            .args(["exec", "--"])
                            .arg(&sysbench);
                        cmd.env("AGENTGUARD_LOG", "warn");
                        cmd
                    }
                    _ => Command::new(&sysbench),
                };
                cmd.args(common(port))
                    .arg(format!("--threads={}", args.threads))
                    .arg(format!("--time={}", args.seconds))
                    .args([workload, "run"]);
                match run(&work, cmd, args.seconds) {
                    Ok(report) => {
                        println!(
                            "  round {}  {workload:<16} {:<14} {:>8.0} TPS  {:>7.3} ms avg",
                            round + 1,
                            route.name(),
                            report.tps,
                            report.latency_ms
                        );
                        if let Some((_, _, r)) = results
                            .iter_mut()
                            .find(|(w, p, _)| *w == workload && *p == route)
                        {
                            r.push(report);
                        }
                    }
                    Err(e) => {
                        let message =
                            format!("round {}, {workload}, {}: {e:#}", round + 1, route.name());
                        println!("  FAILED {message}");
                        failures.push(message);
                    }
                }
            }
        }
    }
    drop(haproxy);
    drop(server);
    println!("\n{}", table(&results));
    if !failures.is_empty() {
        bail!(
            "{} sysbench run(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

fn run(work: &WorkDir, cmd: Command, seconds: u64) -> anyhow::Result<Report> {
    let (stdout, stderr) = (work.file("sysbench.out"), work.file("sysbench.err"));
    let mut client = process::spawn("sysbench", cmd, Stop::Term, &stdout, &stderr)?;
    let status = client.wait(Duration::from_secs(seconds + 60))?;
    let out = fs::read_to_string(&stdout).unwrap_or_default();
    let err = fs::read_to_string(&stderr).unwrap_or_default();
    for line in err.lines().filter(|l| !l.trim().is_empty()).take(20) {
        println!("      {line}");
    }
    if !status.success() {
        bail!("sysbench exited with {status}; stdout:{}", tail(&stdout));
    }
    // `transactions:  N  (X per sec.)` and `avg:  Y` (ms).
    let tps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no transactions line in:\n{out}"))?;
    let latency_ms = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("avg:"))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .with_context(|| format!("no avg latency line in:\n{out}"))?;
    if out.contains("FATAL") {
        bail!("sysbench reported a fatal error:\n{out}");
    }
    Ok(Report { tps, latency_ms })
}

/// A throwaway MariaDB on 127.0.0.1 (its datadir in the work folder).
struct Mariadb {
    port: u16,
    version: String,
    _process: Running,
}

impl Mariadb {
    fn start(work: &WorkDir) -> anyhow::Result<Self> {
        let data = work.file("mariadb");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .output()
            .context("cannot run mariadb-install-db (scripts/setup.sh installs mariadb-server)")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = free_port()?;
        let socket: PathBuf = work.file("mariadb.sock");
        let mut cmd = Command::new("mariadbd");
        cmd.args(["--no-defaults", "--user=root", "--skip-log-bin"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--max-connections=500")
            // The proxies' cost is in the round trips, not this disk's.
            .arg("--innodb-flush-log-at-trx-commit=0");
        let err = work.file("mariadb.err");
        let mut process =
            process::spawn("mariadbd", cmd, Stop::Term, &work.file("mariadb.out"), &err)?;
        let sql = |statement: &str| {
            Command::new("mariadb")
                .args(["--no-defaults", "-uroot"])
                .arg(format!("--socket={}", socket.display()))
                .args(["-N", "-e", statement])
                .output()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sql("SELECT 1").is_ok_and(|o| o.status.success()) {
            if let Some(status) = process.exited()? {
                bail!("mariadbd exited ({status}): {}", tail(&err));
            }
            if Instant::now() >= deadline {
                bail!("mariadbd was not ready within 30 s: {}", tail(&err));
            }
            thread::sleep(Duration::from_millis(100));
        }
        let setup = format!(
            "CREATE DATABASE {DATABASE}; CREATE USER {USER}@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON {DATABASE}.* TO {USER}@'%';"
        );
        let out = sql(&setup).context("cannot run mariadb")?;
        if !out.status.success() {
            bail!("setup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let version = sql("SELECT CONCAT('MariaDB ', VERSION())")
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "MariaDB (version unknown)".into());
        Ok(Self {
            port,
            version,
            _process: process,
        })
    }
}

/// A Markdown table (pasted as is into BENCHMARKS.md), then the goal.
fn table(results: &[(&str, Route, Vec<Report>)]) -> String {
    let stats = |r: &[Report]| {
        (
            median(r.iter().map(|r| r.tps)),
            median(r.iter().map(|r| r.latency_ms)),
        )
    };
    let find = |w: &str, route: Route| {
        results
            .iter()
            .find(|(rw, rr, r)| *rw == w && *rr == route && !r.is_empty())
            .map(|(_, _, r)| stats(r))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | path | TPS | avg latency ms | TPS vs direct |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    for (workload, route, reports) in results {
        if reports.is_empty() {
            let _ = writeln!(
                out,
                "| {workload} | {} | failed | failed | – |",
                route.name()
            );
            continue;
        }
        let (tps, latency) = stats(reports);
        let ratio = find(workload, Route::Direct)
            .map_or_else(|| "–".into(), |(d, _)| format!("{:.2}×", tps / d));
        let _ = writeln!(
            out,
            "| {workload} | {} | {tps:.0} | {latency:.3} | {ratio} |",
            route.name()
        );
    }
    let _ = writeln!(
        out,
        "\nMedian over rounds; sysbench's transactions per second and average latency."
    );
    if let (Some((d, _)), Some((g, _))) = (
        find("oltp_read_only", Route::Direct),
        find("oltp_read_only", Route::Agentguard),
    ) {
        let ratio = g / d;
        let _ = writeln!(
            out,
            "issue 16: goal oltp_read_only ≥ 0.6× direct TPS: {} ({ratio:.2}×)",
            if ratio >= 0.6 { "met" } else { "NOT met" }
        );
    }
    out
}
