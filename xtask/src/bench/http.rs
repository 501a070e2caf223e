//! `cargo xtask bench http`: wrk against one nginx on loopback serving a JSON
//! body full of emails, card numbers and phone numbers, reached six ways in
//! one run:
//! - plain HTTP, direct: wrk dials nginx;
//! - plain HTTP, agentguard: wrk runs under `agentguard exec` (no daemon, so
//!   exec guards in-process) with the shipped policies: every request is
//!   decided, every reply masked by the default mask list, every decision
//!   recorded (as shipped: replies wait for their record's commit);
//! - plain HTTP, haproxy: wrk dials an haproxy frontend in http mode — what a
//!   conventional HTTP proxy costs on the same machine;
//! - HTTPS, direct: wrk dials nginx's TLS port (the reference for the next two);
//! - HTTPS, agentguard: the same under `agentguard exec`; the proxy terminates
//!   TLS with a leaf from its CA, decides, masks, and re-encrypts towards
//!   nginx, verifying it against the bench CA (`ca_file`);
//! - HTTPS, mitmproxy: wrk dials mitmdump in reverse mode, which terminates
//!   TLS with its own CA and re-encrypts towards nginx, verifying it against
//!   the same bench CA — the usual interception proxy, no policy, no masking.
//!
//! Each path gets two wrk runs: throughput with `--connections` keep-alive
//! connections, and latency with one connection (one request at a time, so
//! the figure is what a hop adds, not queueing). Before measuring, one curl
//! per path checks that the guarded replies are masked and the others not.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Binaries, WorkDir, build, find_program, free_port, median,
    process::{self, Running, Stop},
    tail,
};

#[derive(clap::Args, Debug)]
pub struct HttpArgs {
    /// Seconds per throughput run (wrk -d).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections of the throughput run (wrk -c).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads of the throughput run (wrk -t).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds; each runs every path once, in a rotating order.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also plain HTTP through agentguard with `[audit] commit_before_reply
    /// = false` and with `[audit] enabled = false`: what recording costs.
    #[arg(long)]
    audit: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path6 {
    Direct,
    Agentguard,
    Haproxy,
    TlsDirect,
    TlsAgentguard,
    Mitmproxy,
    /// `[audit] commit_before_reply = false` (with `--audit`).
    AgentguardNoWait,
    /// `[audit] enabled = false` (with `--audit`).
    AgentguardNoAudit,
}

const PLAIN: [Path6; 3] = [Path6::Direct, Path6::Agentguard, Path6::Haproxy];
const TLS: [Path6; 3] = [Path6::TlsDirect, Path6::TlsAgentguard, Path6::Mitmproxy];

impl Path6 {
    fn name(self) -> &'static str {
        match self {
            Path6::Direct => "http direct",
            Path6::Agentguard => "http agentguard",
            Path6::Haproxy => "http haproxy (http mode)",
            Path6::TlsDirect => "https direct",
            Path6::TlsAgentguard => "https agentguard (intercept)",
            Path6::Mitmproxy => "https mitmproxy (reverse)",
            Path6::AgentguardNoWait => "http agentguard, replies not held",
            Path6::AgentguardNoAudit => "http agentguard, audit off",
        }
    }

    fn guarded(self) -> bool {
        matches!(
            self,
            Path6::Agentguard
                | Path6::TlsAgentguard
                | Path6::AgentguardNoWait
                | Path6::AgentguardNoAudit
        )
    }

    /// The `[audit]` section of this path's agentguard config.
    fn audit_config(self) -> &'static str {
        match self {
            Path6::AgentguardNoWait => "\n[audit]\ncommit_before_reply = false\n",
            Path6::AgentguardNoAudit => "\n[audit]\nenabled = false\n",
            _ => "",
        }
    }
}

/// What nginx serves: 20 customer records, about 2.5 KB of JSON, every one
/// with an email, a card number and a phone number the shipped policies mask.
fn body() -> String {
    let cards = [
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
    ];
    let rows: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "name": "Customer {i}", "email": "customer{i}@example.com", "card": "{}", "phone": "+1 415 555 01{i:02}", "plan": "pro"}}"#,
                cards[i % cards.len()]
            )
        })
        .collect();
    format!("{{\"customers\": [{}]}}\n", rows.join(", "))
}

pub fn http(root: &Path, args: &HttpArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.connections == 0 || args.threads == 0 || args.seconds == 0 {
        bail!("--rounds, --connections, --threads and --seconds must be at least 1");
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench http needs root: `agentguard exec` loads eBPF programs and makes cgroups");
    }
    let need = |name: &str| {
        find_program(name).with_context(|| format!("{name} not found: run scripts/setup.sh"))
    };
    let (wrk, nginx, haproxy, mitmdump, curl) = (
        need("wrk")?,
        need("nginx")?,
        need("haproxy")?,
        need("mitmdump")?,
        need("curl")?,
    );
    let bins = build(root)?;
    let work = WorkDir::create()?;
    let pki = bench_pki(&work.path)?;
    fs::create_dir_all(work.file("www"))?;
    fs::write(work.file("www/customers.json"), body())?;

    let nginx = Nginx::start(&nginx, &work, &pki)?;
    let haproxy_port = free_port()?;
    let _haproxy = start_haproxy(&haproxy, &work, haproxy_port, nginx.plain)?;
    let mitm_port = free_port()?;
    let _mitm = start_mitmdump(&mitmdump, &work, &pki, mitm_port, nginx.tls)?;

    let base_config = agentguard_config_text(root, &work.path, &nginx, &pki);
    let config = work.file("agentguard.toml");
    fs::write(&config, &base_config)?;
    let out = Command::new(&bins.agentguard)
        .arg("--config")
        .arg(&config)
        .args(["ca", "init"])
        .output()
        .context("cannot run agentguard ca init")?;
    if !out.status.success() {
        bail!(
            "agentguard ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let url = |path: Path6| -> String {
        match path {
            Path6::Direct
            | Path6::Agentguard
            | Path6::AgentguardNoWait
            | Path6::AgentguardNoAudit => {
                format!("http://127.0.0.1:{}/customers.json", nginx.plain)
            }
            Path6::Haproxy => format!("http://127.0.0.1:{haproxy_port}/customers.json"),
            Path6::TlsDirect | Path6::TlsAgentguard => {
                format!("https://127.0.0.1:{}/customers.json", nginx.tls)
            }
            Path6::Mitmproxy => format!("https://127.0.0.1:{mitm_port}/customers.json"),
        }
    };
    let runner = Runner {
        bins: &bins,
        base_config: &base_config,
        work: &work,
    };
    let plain: Vec<Path6> = if args.audit {
        vec![
            Path6::Direct,
            Path6::Agentguard,
            Path6::AgentguardNoWait,
            Path6::AgentguardNoAudit,
            Path6::Haproxy,
        ]
    } else {
        PLAIN.to_vec()
    };

    // Every path answers, and only the guarded ones mask.
    for &path in plain.iter().chain(&TLS) {
        let mut cmd = runner.command(path, &curl)?;
        cmd.args(["-sS", "-k", "--max-time", "10"]).arg(url(path));
        let out = cmd.output().context("cannot run curl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("\"customers\"") {
            bail!(
                "{}: no JSON reply ({}): {text}{}",
                path.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let raw = text.contains("customer3@example.com") || text.contains("4111 1111 1111 1111");
        if raw == path.guarded() {
            bail!(
                "{}: expected the reply {}masked, got: {}",
                path.name(),
                if path.guarded() { "" } else { "un" },
                &text[..text.len().min(300)]
            );
        }
    }

    println!(
        "\nbench http: wrk {} connections × {} s (throughput) and 1 connection × {} s (latency) per path, {} round(s), on {}\n",
        args.connections,
        args.seconds,
        latency_seconds(args),
        args.rounds,
        machine_facts(&haproxy, &mitmdump, &nginx.version),
    );
    let mut results: Vec<(Path6, Vec<Wrk>, Vec<Wrk>)> = plain
        .iter()
        .chain(&TLS)
        .map(|&p| (p, Vec::new(), Vec::new()))
        .collect();
    for round in 0..args.rounds {
        for group in [&plain[..], &TLS[..]] {
            for i in 0..group.len() {
                let path = group[(i + round) % group.len()];
                let many = runner
                    .wrk(
                        &wrk,
                        path,
                        &url(path),
                        args.connections,
                        args.threads,
                        args.seconds,
                    )
                    .with_context(|| format!("round {}, {}", round + 1, path.name()))?;
                let one = runner
                    .wrk(&wrk, path, &url(path), 1, 1, latency_seconds(args))
                    .with_context(|| format!("round {}, {} (1 conn)", round + 1, path.name()))?;
                println!(
                    "  round {}  {:<30} {:>9.0} req/s  p50 {:>7.0} µs | 1 conn: {:>7.0} req/s  p50 {:>6.0} µs",
                    round + 1,
                    path.name(),
                    many.requests_per_sec,
                    many.p50_us,
                    one.requests_per_sec,
                    one.p50_us,
                );
                if let Some((_, m, o)) = results.iter_mut().find(|(p, _, _)| *p == path) {
                    m.push(many);
                    o.push(one);
                }
            }
        }
    }
    println!("\n{}", table(&results, args.connections));
    Ok(())
}

fn latency_seconds(args: &HttpArgs) -> u64 {
    args.seconds.div_ceil(2).max(1)
}

struct Runner<'a> {
    bins: &'a Binaries,
    base_config: &'a str,
    work: &'a WorkDir,
}

impl Runner<'_> {
    /// `program`, under `agentguard exec` on the guarded paths.
    fn command(&self, path: Path6, program: &Path) -> anyhow::Result<Command> {
        if path.guarded() {
            let config = self.work.file(&format!("agentguard-{path:?}.toml"));
            fs::write(
                &config,
                format!("{}{}", self.base_config, path.audit_config()),
            )
            .with_context(|| format!("cannot write {}", config.display()))?;
            let mut cmd = Command::new(&self.bins.agentguard);
            cmd.arg("--config")
                .arg(config)
                .arg("exec")
                .arg("--")
                .arg(program);
            // Per-request info lines off, as an operator would run it for speed.
            cmd.env("AGENTGUARD_LOG", "warn");
            Ok(cmd)
        } else {
            Ok(Command::new(program))
        }
    }

    fn wrk(
        &self,
        wrk: &Path,
        path: Path6,
        url: &str,
        connections: u32,
        threads: u32,
        seconds: u64,
    ) -> anyhow::Result<Wrk> {
        let mut cmd = self.command(path, wrk)?;
        cmd.arg("--latency")
            .arg("-c")
            .arg(connections.to_string())
            .arg("-t")
            .arg(threads.to_string())
            .arg("-d")
            .arg(format!("{seconds}s"))
            .arg(url);
        let (stdout, stderr) = (self.work.file("wrk.out"), self.work.file("wrk.err"));
        let mut client = process::spawn("wrk", cmd, Stop::Term, &stdout, &stderr)?;
        let status = client.wait(Duration::from_secs(seconds + 60))?;
        let out = fs::read_to_string(&stdout).unwrap_or_default();
        if !status.success() {
            bail!("wrk exited with {status}:\n{out}{}", tail(&stderr));
        }
        let report = Wrk::parse(&out).with_context(|| format!("wrk output:\n{out}"))?;
        if report.errors > 0 {
            bail!(
                "wrk saw {} errors or non-2xx replies:\n{out}",
                report.errors
            );
        }
        Ok(report)
    }
}

/// wrk's summary (with `--latency`).
struct Wrk {
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Socket errors plus non-2xx/3xx replies.
    errors: u64,
}

impl Wrk {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let line_value = |prefix: &str| {
            text.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
        };
        let requests_per_sec = line_value("Requests/sec:")
            .and_then(|v| v.parse::<f64>().ok())
            .context("no Requests/sec line")?;
        let percentile = |p: &str| -> anyhow::Result<f64> {
            let v = line_value(p).with_context(|| format!("no {p} latency line"))?;
            duration_us(v).with_context(|| format!("bad latency {v:?}"))
        };
        // "Socket errors: connect 0, read 0, write 0, timeout 0" only appears
        // when there were some.
        let socket_errors: u64 = line_value("Socket errors:").map_or(0, |v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
        let non_2xx = line_value("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Self {
            requests_per_sec,
            p50_us: percentile("50%")?,
            p99_us: percentile("99%")?,
            errors: socket_errors + non_2xx,
        })
    }
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_us(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix("m") {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// A CA of the bench's own and a leaf for 127.0.0.1 signed by it: nginx
/// serves the leaf; agentguard (`ca_file`) and mitmproxy verify against the CA.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn bench_pki(dir: &Path) -> anyhow::Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "agentguard bench upstream CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &issuer)?;
    let pki = Pki {
        ca: dir.join("upstream-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    fs::write(&pki.ca, ca_cert.pem())?;
    fs::write(&pki.cert, leaf.pem())?;
    fs::write(&pki.key, key.serialize_pem())?;
    Ok(pki)
}

struct Nginx {
    plain: u16,
    tls: u16,
    version: String,
    _process: Running,
}

impl Nginx {
    /// One worker (the machine has few cores and every path shares them),
    /// keep-alive without a request limit, no access log.
    fn start(nginx: &Path, work: &WorkDir, pki: &Pki) -> anyhow::Result<Self> {
        let (plain, tls) = (free_port()?, free_port()?);
        let dir = work.file("nginx");
        fs::create_dir_all(dir.join("tmp"))?;
        let d = dir.display();
        let conf = format!(
            r#"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  types {{ application/json json; }}
  server {{
    listen 127.0.0.1:{plain} backlog=4096;
    listen 127.0.0.1:{tls} ssl backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    root {www};
  }}
}}
"#,
            cert = pki.cert.display(),
            key = pki.key.display(),
            www = work.file("www").display(),
        );
        let path = dir.join("nginx.conf");
        fs::write(&path, conf)?;
        let version = super::version_line(nginx, "-v", "nginx (version unknown)")
            .replace("nginx version: ", "");
        let mut cmd = Command::new(nginx);
        cmd.arg("-c").arg(&path).arg("-p").arg(&dir);
        let err = work.file("nginx.err");
        let process = process::spawn("nginx", cmd, Stop::Term, &work.file("nginx.out"), &err)?;
        let mut process = wait_listening("nginx", process, plain, &err)?;
        process = wait_listening("nginx", process, tls, &err)?;
        Ok(Self {
            plain,
            tls,
            version,
            _process: process,
        })
    }
}

fn start_haproxy(
    haproxy: &Path,
    work: &WorkDir,
    port: u16,
    server: u16,
) -> anyhow::Result<Running> {
    // Defaults otherwise: threads = CPUs, keep-alive both ways.
    let config = format!(
        "# Generated by `cargo xtask bench http`.\n\
         global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 2m\n    timeout server 2m\n\
         frontend bench\n    bind 127.0.0.1:{port}\n    default_backend server\n\
         backend server\n    server nginx 127.0.0.1:{server}\n"
    );
    let path = work.file("haproxy.cfg");
    fs::write(&path, config)?;
    let mut cmd = Command::new(haproxy);
    // -db: stay in the foreground, so that stopping our child stops haproxy.
    cmd.arg("-db").arg("-f").arg(&path);
    let err = work.file("haproxy.err");
    let process = process::spawn("haproxy", cmd, Stop::Term, &work.file("haproxy.out"), &err)?;
    wait_listening("haproxy", process, port, &err)
}

/// mitmdump as a reverse proxy in front of nginx's TLS port: TLS towards the
/// client with its own CA (under the work folder), TLS towards nginx verified
/// against the bench CA, nothing printed per flow.
fn start_mitmdump(
    mitmdump: &Path,
    work: &WorkDir,
    pki: &Pki,
    port: u16,
    server: u16,
) -> anyhow::Result<Running> {
    let mut cmd = Command::new(mitmdump);
    cmd.arg("--quiet")
        .arg("--mode")
        .arg(format!("reverse:https://127.0.0.1:{server}"))
        .args(["--listen-host", "127.0.0.1", "--listen-port"])
        .arg(port.to_string())
        .arg("--set")
        .arg(format!("confdir={}", work.file("mitmproxy").display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            pki.ca.display()
        ));
    let err = work.file("mitmdump.err");
    let process = process::spawn(
        "mitmdump",
        cmd,
        Stop::Term,
        &work.file("mitmdump.out"),
        &err,
    )?;
    wait_listening("mitmdump", process, port, &err)
}

fn wait_listening(
    name: &str,
    mut process: Running,
    port: u16,
    err: &Path,
) -> anyhow::Result<Running> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
        if let Some(status) = process.exited()? {
            bail!("{name} exited ({status}): {}", tail(err));
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not listen on port {port} within 20 s: {}",
                tail(err)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// Isolated from any installed agentguard (its own run and state folders),
/// with the repository's shipped policies; both nginx ports are `http`
/// targets, the TLS one intercepted and verified against the bench CA.
fn agentguard_config_text(root: &Path, work: &Path, nginx: &Nginx, pki: &Pki) -> String {
    format!(
        "{}\n[[targets]]\nname = \"bench-http\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"http\"\n\
         \n[[targets]]\nname = \"bench-https\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"http\"\nca_file = \"{}\"\n",
        super::config_header("bench http", work, Some(&root.join("policies"))),
        nginx.plain,
        nginx.tls,
        pki.ca.display(),
    )
}

fn machine_facts(haproxy: &Path, mitmdump: &Path, nginx: &str) -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpus} CPUs, Linux {}, {nginx}, {}, {}; load average {} at start",
        kernel.trim(),
        super::version_line(haproxy, "-v", "haproxy (version unknown)"),
        super::version_line(mitmdump, "--version", "mitmproxy (version unknown)"),
        load.split_whitespace().next().unwrap_or("?"),
    )
}

/// Markdown tables (pasted as is into BENCHMARKS.md), then the goals.
fn table(results: &[(Path6, Vec<Wrk>, Vec<Wrk>)], connections: u32) -> String {
    struct Row {
        path: Path6,
        rps: f64,
        p50: f64,
        p99: f64,
        one_p50: f64,
        one_p99: f64,
    }
    let rows: Vec<Row> = results
        .iter()
        .map(|(path, many, one)| Row {
            path: *path,
            rps: median(many.iter().map(|w| w.requests_per_sec)),
            p50: median(many.iter().map(|w| w.p50_us)),
            p99: median(many.iter().map(|w| w.p99_us)),
            one_p50: median(one.iter().map(|w| w.p50_us)),
            one_p99: median(one.iter().map(|w| w.p99_us)),
        })
        .collect();
    let find = |p: Path6| rows.iter().find(|r| r.path == p);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| path | req/s ({connections} conns) | vs direct | p50 µs | p99 µs | 1 conn p50 µs | 1 conn p99 µs | added p50 µs (1 conn) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let base = if TLS.contains(&row.path) {
            find(Path6::TlsDirect)
        } else {
            find(Path6::Direct)
        };
        let Some(base) = base else { continue };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0} |",
            row.path.name(),
            row.rps,
            row.rps / base.rps,
            row.p50,
            row.p99,
            row.one_p50,
            row.one_p99,
            row.one_p50 - base.one_p50,
        );
    }
    let _ = writeln!(
        out,
        "\nMedians over rounds of wrk's own figures; \"vs direct\" against the direct path of the same scheme."
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if let (Some(direct), Some(guard), Some(haproxy), Some(mitm), Some(tls_guard)) = (
        find(Path6::Direct),
        find(Path6::Agentguard),
        find(Path6::Haproxy),
        find(Path6::Mitmproxy),
        find(Path6::TlsAgentguard),
    ) {
        let ratio = guard.rps / direct.rps;
        let added = guard.one_p50 - direct.one_p50;
        let haproxy_added = haproxy.one_p50 - direct.one_p50;
        let vs_mitm = tls_guard.rps / mitm.rps;
        let _ = writeln!(
            out,
            "goal ≥ 0.7× direct req/s (plain HTTP): {} ({ratio:.2}×); \
             goal added latency within 1.5× haproxy's: {} ({added:+.0} µs vs {haproxy_added:+.0} µs, {:.2}×); \
             goal ≥ 10× mitmproxy's HTTPS req/s: {} ({vs_mitm:.1}×)",
            verdict(ratio >= 0.7),
            verdict(added <= 1.5 * haproxy_added.max(0.0)),
            added / haproxy_added,
            verdict(vs_mitm >= 10.0),
        );
        let _ = writeln!(
            out,
            "issue 14: goal 32 conns ≥ 0.3× direct req/s: {} ({ratio:.2}×); \
             goal 1-conn added p50 ≤ 2× haproxy's: {} ({:.2}×)",
            verdict(ratio >= 0.3),
            verdict(added <= 2.0 * haproxy_added.max(0.0)),
            added / haproxy_added,
        );
    }
    out
}
