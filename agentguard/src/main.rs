//! agentguard: one binary, the daemon and its CLI.
//!
//! Reading order for one connection: `redirect.rs` (kernel programs and the
//! origin map) → `proxy.rs` (accept, origin, decision, upstream, copy) →
//! `identity.rs` → `decide.rs` → the protocol guards: `pg.rs` (PostgreSQL),
//! `http.rs` (HTTP, HTTPS, LLM APIs, the Kubernetes API). `exec.rs` and
//! `daemon.rs` wire them up.

// The modules live in the library (lib.rs) so benches can reach them.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use hyper::Method;

use agentguard::{
    audit,
    cgroup::{self, Cgroup},
    config::Config,
    control, daemon, exec, policy,
    redirect::{self, LoadOptions, Redirect},
    unixguard,
};

#[derive(Parser)]
#[command(name = "agentguard", version, about = "Host-level guard for AI agents")]
struct Cli {
    /// Config file (default /etc/agentguard/agentguard.toml; built-in
    /// defaults when that does not exist).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Policy folder (overrides the config's policy_dir).
    #[arg(long, global = true, value_name = "DIR")]
    policy: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: pin and attach the programs, serve the proxy.
    Run,
    /// Run a command inside a guarded cgroup.
    Exec {
        /// Agent name (one from the config, or any name with no daemon).
        #[arg(long)]
        agent: Option<String>,
        /// Log lines on stderr (the command's): -v info, -vv debug, -vvv
        /// trace; by default only warnings that are not about one request
        /// (the client shows its refusals). AGENTGUARD_LOG (a tracing filter
        /// such as `info,agentguard::pg=debug`) overrides it.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Guard an existing cgroup or systemd unit (programs stay pinned).
    Attach(CgroupArg),
    /// Stop guarding a cgroup or unit.
    Detach(CgroupArg),
    /// Show the daemon, the programs, attached cgroups and counters.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Requests held for a person's approval, and standing grants.
    Approvals {
        #[arg(long)]
        json: bool,
    },
    /// Let a held request through.
    Approve {
        /// The id `agentguard approvals` shows.
        id: String,
        /// Also let the same agent send the same kind of request (same
        /// statement shape, method and path template) for this long: 15m, 2h.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        grant: Option<std::time::Duration>,
        /// Recorded in the audit log and shown to the agent.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a held request (the client gets the policy error).
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The daemon's metrics (Prometheus/OpenMetrics text).
    Metrics,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// The decision log: who asked for what, and what was decided.
    Audit(audit::cli::AuditArgs),
    /// Recorded sessions (guarded connections), one row each.
    Sessions(audit::cli::SessionsArgs),
    /// Play a recorded session back: requests, decisions, masked rows.
    Replay(audit::cli::ReplayArgs),
    /// Check, test and evaluate Rego policies; reload the daemon's.
    Policy {
        #[command(subcommand)]
        command: policy::cli::PolicyCommand,
    },
    /// The local CA that HTTPS interception mints certificates with.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA under <state_dir>/ca (key readable by root only).
    Init,
    /// Print the CA certificate (PEM), for clients to trust.
    Export,
    /// Add the CA to the system trust store (update-ca-certificates).
    Install,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct CgroupArg {
    /// Path relative to the cgroup2 mount, e.g. /agentguard/coder.
    #[arg(long)]
    cgroup: Option<String>,
    /// A systemd unit, e.g. coder.service.
    #[arg(long)]
    unit: Option<String>,
}

impl CgroupArg {
    fn resolve(&self) -> anyhow::Result<Cgroup> {
        let mount = cgroup::cgroup2_mount()?;
        let rel = match (&self.cgroup, &self.unit) {
            (Some(c), _) => c.clone(),
            (None, Some(u)) => cgroup::unit_cgroup(u)?,
            (None, None) => bail!("give --cgroup or --unit"),
        };
        Ok(Cgroup::new(&mount, &rel)?)
    }
}

fn main() -> ExitCode {
    // Before any file is made: the audit log and approvals are not for
    // every local user, whatever umask we were started with.
    agentguard::perms::restrict_umask();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log(&cli)));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentguard: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("agentguard: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, each said once: most of our messages already
/// name their cause (`cannot read config X: No such file…`), so anyhow's
/// `{:#}` would repeat it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Without AGENTGUARD_LOG: info for the daemon, warnings for the CLI.
fn default_log(cli: &Cli) -> &'static str {
    match &cli.command {
        Command::Run => "info",
        Command::Exec { verbose, .. } => match verbose {
            // exec's stderr is the guarded command's: a client already
            // shows each refusal in its own protocol, so per-request lines
            // stay out; a hold still says how to answer it.
            0 => {
                "warn,agentguard::proxy=error,agentguard::pg=error,agentguard::http=error,agentguard::pipeline=error,agentguard::refusals=error"
            }
            1 => "info",
            2 => "debug",
            _ => "trace",
        },
        _ => "warn",
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    // Before the config: these must work whatever state it is in.
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "agentguard",
                &mut std::io::stdout(),
            );
            return Ok(0);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(0);
        }
        _ => {}
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.policy {
        config.policy_dir = dir;
    }
    match cli.command {
        Command::Run => daemon::run(config).await.map(|()| 0),
        Command::Exec { agent, command, .. } => exec::exec(config, agent, command).await,
        Command::Attach(arg) => attach(&config, &arg).map(|()| 0),
        Command::Detach(arg) => detach(&config, &arg).map(|()| 0),
        Command::Status { json } => status(&config, json).await.map(|()| 0),
        Command::Approvals { json } => approvals(&config, json).await.map(|()| 0),
        Command::Approve { id, grant, reason } => {
            let body =
                serde_json::json!({ "reason": reason, "for_secs": grant.map(|d| d.as_secs()) });
            let answer = control::answer(&config, &id, "approve", body).await?;
            match grant {
                Some(d) => println!(
                    "approved {id}: {} (and the same kind of request for {})",
                    answer["request"].as_str().unwrap_or(""),
                    humantime(d)
                ),
                None => println!(
                    "approved {id}: {}",
                    answer["request"].as_str().unwrap_or("")
                ),
            }
            Ok(0)
        }
        Command::Deny { id, reason } => {
            let answer = control::answer(
                &config,
                &id,
                "deny",
                serde_json::json!({ "reason": reason }),
            )
            .await?;
            println!("denied {id}: {}", answer["request"].as_str().unwrap_or(""));
            Ok(0)
        }
        Command::Metrics => {
            let (status, body) =
                control::call(&config.control_socket(), Method::GET, "/metrics", None).await?;
            if !status.is_success() {
                bail!("{}", String::from_utf8_lossy(&body));
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(0)
        }
        Command::Completions { .. } | Command::Man => Ok(0),
        // Through the control socket when there is one: authorized by
        // group (approvers), and the answer is the reload's own outcome.
        Command::Policy {
            command: policy::cli::PolicyCommand::Reload,
        } if config.control_socket().exists() => {
            let v = control::call_json(
                &config.control_socket(),
                Method::POST,
                "/v1/policy/reload",
                None,
            )
            .await?;
            let state = &v["state"];
            println!(
                "reloaded: version {} ({} files, {} tests){}",
                state["version"].as_str().unwrap_or("?"),
                state["files"].as_array().map_or(0, Vec::len),
                state["tests"],
                if v["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("Unchanged"))
                {
                    " — unchanged"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        Command::Policy { command } => policy::cli::run(&config, command),
        Command::Ca { command } => ca(&config, command).map(|()| 0),
        Command::Audit(args) => Ok(audit::cli::audit(&config, args).await?),
        Command::Sessions(args) => Ok(audit::cli::sessions(&config, args)?),
        Command::Replay(args) => Ok(audit::cli::replay(&config, args).await?),
    }
}

fn ca(config: &Config, command: CaCommand) -> anyhow::Result<()> {
    use agentguard::http::tls;
    match command {
        CaCommand::Init => {
            let cert = tls::ca_init(&config.state_dir)?;
            println!("created the agentguard CA: {}", cert.display());
            println!("trust it in clients with `agentguard ca install` or `agentguard ca export`");
        }
        CaCommand::Export => print!("{}", tls::ca_export(&config.state_dir)?),
        CaCommand::Install => {
            let path = tls::ca_install(&config.state_dir)?;
            println!(
                "installed {} and updated the system trust store",
                path.display()
            );
        }
    }
    Ok(())
}

fn attach(config: &Config, arg: &CgroupArg) -> anyhow::Result<()> {
    daemon::ensure_bpffs(&config.bpffs_dir)?;
    let cg = arg.resolve()?;
    if !cg.exists() {
        bail!("cgroup {} does not exist", cg.dir.display());
    }
    // The running daemon's port wins over the config's: its listener is
    // where the attached cgroup's connects must go.
    let port = daemon::running(&config.run_dir).map_or(config.listener.port, |d| d.port);
    let mut redirect = Redirect::load(&LoadOptions {
        proxy_port: port,
        pin_dir: Some(&config.bpffs_dir),
        config,
    })?;
    redirect.attach(&cg)?;
    println!(
        "attached {} (cgroup id {}) → proxy port {port}",
        cg.rel,
        cg.id()?
    );
    Ok(())
}

fn detach(config: &Config, arg: &CgroupArg) -> anyhow::Result<()> {
    let cg = arg.resolve()?;
    let id = cg
        .id()
        .with_context(|| format!("cgroup {} not found", cg.rel))?;
    if redirect::detach_pinned(&config.bpffs_dir, id)? {
        println!("detached {} (cgroup id {id})", cg.rel);
        Ok(())
    } else {
        bail!("{} is not attached", cg.rel)
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    audit::time::parse_duration(s.trim())
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("`{s}`: want a duration such as 30s, 15m, 2h, 1d"))
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn approvals(config: &Config, json: bool) -> anyhow::Result<()> {
    // The daemon's holds and those of every `exec` guarding in-process.
    let list = control::list_approvals(config).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let now = agentguard::approvals::unix_now();
    let pending = list["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        println!("no requests waiting for approval");
    } else {
        println!(
            "{:<8} {:>5} {:>7}  {:<12} {:<22} {:<14} {:<40} REASON",
            "ID", "AGE", "EXPIRES", "AGENT", "IDENTITY", "TARGET", "REQUEST"
        );
    }
    for p in &pending {
        let identity = &p["identity"];
        let who = format!(
            "{} {}",
            identity["user"]
                .as_str()
                .map_or_else(|| format!("uid {}", identity["uid"]), str::to_owned),
            identity["exe"]
                .as_str()
                .map_or("", |e| e.rsplit('/').next().unwrap_or(e)),
        );
        let since = p["since"].as_u64().unwrap_or(now);
        let expires = p["expires"].as_u64().unwrap_or(now);
        let target = p["target"]["name"].as_str().map_or_else(
            || format!("{}:{}", p["target"]["ip"], p["target"]["port"]),
            str::to_owned,
        );
        println!(
            "{:<8} {:>5} {:>7}  {:<12} {:<22} {:<14} {:<40} {}",
            p["id"].as_str().unwrap_or("?"),
            humantime(std::time::Duration::from_secs(now.saturating_sub(since))),
            humantime(std::time::Duration::from_secs(expires.saturating_sub(now))),
            p["agent"].as_str().unwrap_or("-"),
            audit::cli::clip(&who, 22),
            audit::cli::clip(&target, 14),
            audit::cli::clip(p["request"].as_str().unwrap_or(""), 40),
            p["reason"].as_str().unwrap_or(""),
        );
    }
    let grants = list["grants"].as_array().cloned().unwrap_or_default();
    for g in &grants {
        println!(
            "grant: {} — by {} for {} more",
            g["request"].as_str().unwrap_or(""),
            g["approver"]["user"]
                .as_str()
                .map_or_else(|| format!("uid {}", g["approver"]["uid"]), str::to_owned),
            humantime(std::time::Duration::from_secs(
                g["until"].as_u64().unwrap_or(now).saturating_sub(now)
            )),
        );
    }
    if !pending.is_empty() {
        println!(
            "answer with `agentguard approve ID [--for 15m]` or `agentguard deny ID [--reason …]`"
        );
    }
    Ok(())
}

async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    if json {
        let running = daemon::running(&config.run_dir);
        let state = redirect::pinned_state(&config.bpffs_dir);
        let daemon = match &running {
            Some(_) => {
                control::call_json(&config.control_socket(), Method::GET, "/v1/status", None)
                    .await
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
            }
            None => serde_json::Value::Null,
        };
        let out = serde_json::json!({
            "running": running.is_some(),
            "pid": running.as_ref().map(|d| d.pid),
            "port": running.as_ref().map(|d| d.port),
            "bpffs_dir": config.bpffs_dir,
            "state_dir": config.state_dir,
            "policy_dir": config.policy_dir,
            "control_socket": config.control_socket(),
            "programs": state.programs.iter().map(|(n, id)| (n.to_string(), *id)).collect::<std::collections::BTreeMap<_, _>>(),
            "attached": state.attached,
            "counters": state.counters.iter().map(|(n, v)| (n.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "daemon": daemon,
        });
        println!("{out}");
        return Ok(());
    }
    match daemon::running(&config.run_dir) {
        Some(d) => println!(
            "daemon:    running (pid {}), proxy on 127.0.0.1:{} and [::1]:{}",
            d.pid, d.port, d.port
        ),
        None => println!(
            "daemon:    not running — attached cgroups have their connections refused (fail closed)"
        ),
    }
    let execs = control::exec_sockets(&config.run_dir);
    if !execs.is_empty() {
        println!(
            "exec:      {} in-process guard(s) (`agentguard exec`) answer approvals on {}",
            execs.len(),
            config.run_dir.join("exec").display()
        );
    }
    println!("bpffs:     {}", config.bpffs_dir.display());
    println!("state:     {}", config.state_dir.display());
    let ca = agentguard::http::tls::ca_dir(&config.state_dir).join("ca.crt");
    if ca.exists() {
        println!("tls ca:    {} (HTTPS interception on)", ca.display());
    } else {
        println!(
            "tls ca:    none — HTTPS to http/llm/k8s targets is refused; `agentguard ca init`"
        );
    }
    println!("policies:  {}", config.policy_dir.display());
    if daemon::running(&config.run_dir).is_some() {
        match control::call_json(&config.control_socket(), Method::GET, "/v1/status", None).await {
            Ok(v) => println!(
                "control:   {} ({} request(s) waiting for approval)",
                config.control_socket().display(),
                v["approvals_pending"]
            ),
            Err(e) => println!("control:   {}", error_chain(&e)),
        }
    }
    if daemon::running(&config.run_dir).is_some()
        && let Some(line) = audit::cli::status_line(&audit::cli::stats_file(&config.run_dir))
    {
        println!("{line}");
    }
    for line in policy::status_lines(&config.run_dir, daemon::running(&config.run_dir).is_some()) {
        println!("{line}");
    }
    let state = redirect::pinned_state(&config.bpffs_dir);
    let programs: Vec<String> = state
        .programs
        .iter()
        .map(|(name, id)| {
            format!(
                "{name}={}",
                id.map_or("not loaded".to_owned(), |i| format!("id {i}"))
            )
        })
        .collect();
    println!("programs:  {}", programs.join(", "));
    let unix = if state.unix_guard {
        "guarded (cgroup/connect_unix, cgroup/sendmsg_unix)".to_owned()
    } else if !config.unix_sockets.guard {
        "NOT guarded (unix_sockets.guard = false)".to_owned()
    } else {
        match unixguard::probe() {
            Ok(()) => "guard not loaded yet (this kernel supports it)".to_owned(),
            Err(e) => e.to_string(),
        }
    };
    println!("unix sockets: {unix}");
    let mount = cgroup::cgroup2_mount().ok();
    if state.attached.is_empty() {
        println!("attached:  none");
    }
    for id in &state.attached {
        let path = mount
            .as_deref()
            .and_then(|m| cgroup::path_of_id(m, *id))
            .unwrap_or_else(|| "(cgroup gone)".into());
        println!("attached:  {path} (cgroup id {id})");
    }
    let counters: Vec<String> = state
        .counters
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !counters.is_empty() {
        println!("counters:  {}", counters.join(" "));
    }
    Ok(())
}
