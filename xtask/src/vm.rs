//! `cargo xtask vm-test`: the redirect checks on other kernels than the
//! host's. Builds agentguard, packs it with this binary (the in-guest checker,
//! guest.rs), busybox and their shared libraries into an initramfs, boots each
//! Debian kernel in qemu (KVM when /dev/kvm is usable, TCG otherwise) with
//! vm-tests/init as PID 1, and judges from the serial console.
//!
//! Kernels come from Debian's archive with `apt-get download` (no install)
//! and are cached, with the initramfs, under `<target>/vm-cache`.

pub mod guest;

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Kernels to boot: Debian 12's 6.1 (linux-image-amd64) and 6.12 (backports line).
    #[arg(long = "kernel", value_parser = ["6.1", "6.12"], default_values_t = ["6.1".to_owned(), "6.12".to_owned()])]
    kernels: Vec<String>,
    /// Seconds one guest may run (boot, checks, power-off) before it is called hung.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// `auto`: KVM when /dev/kvm works, else TCG.
    #[arg(long, value_parser = ["auto", "kvm", "tcg"], default_value = "auto")]
    accel: String,
}

/// Under `auto`, a KVM guest that has not reached /init by then is taken for
/// a KVM that cannot run it (nested KVM inside some microVMs stalls in the
/// kernel's decompressor), and the kernel is booted again under TCG.
const KVM_PROBE: Duration = Duration::from_secs(30);
/// The line vm-tests/init prints first.
const INIT_LINE: &str = "VM-TEST kernel ";

/// The meta-package that depends on the current image of each line.
fn meta_package(kernel: &str) -> &'static str {
    match kernel {
        "6.1" => "linux-image-amd64",
        _ => "linux-image-6.12-amd64",
    }
}

pub fn vm_test(root: &Path, args: &VmArgs) -> anyhow::Result<()> {
    let qemu = crate::bench::find_program("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found: run scripts/setup.sh (package qemu-system-x86)")?;
    for tool in ["cpio", "apt-get", "dpkg-deb", "ldd"] {
        crate::bench::find_program(tool)
            .with_context(|| format!("{tool} not found: run scripts/setup.sh"))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox not found: run scripts/setup.sh (package busybox-static)");
    }
    let target = crate::bench::target_dir(root)?;
    let cache = target.join("vm-cache");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "-p", "agentguard"])
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build -p agentguard failed ({status})");
    }
    let initramfs = build_initramfs(
        root,
        &cache,
        &target.join("debug/agentguard"),
        &std::env::current_exe().context("cannot find this binary")?,
        busybox,
    )?;
    let mut kvm = match args.accel.as_str() {
        "tcg" => false,
        wanted => {
            let usable = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            if !usable && wanted == "kvm" {
                bail!("--accel kvm: /dev/kvm is not usable");
            }
            if !usable {
                println!("vm-test: /dev/kvm is not usable; using TCG");
            }
            usable
        }
    };
    let limit = Duration::from_secs(args.timeout_secs);

    let mut failed = Vec::new();
    for kernel in &args.kernels {
        let vmlinuz = fetch_kernel(&cache, meta_package(kernel))?;
        let log = cache.join(format!("console-{kernel}.log"));
        let start = Instant::now();
        let probe = (kvm && args.accel == "auto").then_some(KVM_PROBE);
        let mut verdict = boot(&qemu, &vmlinuz, &initramfs, kvm, &log, limit, probe)?;
        if matches!(verdict, Err(Failure::NoInit)) {
            println!(
                "vm-test {kernel}: the KVM guest did not reach /init within {KVM_PROBE:?}; using TCG from here on"
            );
            kvm = false;
            verdict = boot(&qemu, &vmlinuz, &initramfs, kvm, &log, limit, None)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let accel = if kvm { "kvm" } else { "tcg" };
        match verdict {
            Ok(()) => println!("vm-test {kernel}: PASS in {secs:.1} s ({accel})"),
            Err(why) => {
                println!(
                    "vm-test {kernel}: FAIL in {secs:.1} s ({accel}): {why} (console: {})",
                    log.display()
                );
                failed.push(kernel.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Downloads the image package the meta-package points at (once) and
/// returns its vmlinuz.
fn fetch_kernel(cache: &Path, meta: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("apt-cache")
        .args(["depends", "--no-recommends", "--no-suggests", meta])
        .output()
        .context("cannot run apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!("apt-cache knows no image behind {meta} (apt-get update? bookworm-updates/backports in sources?): {text}")
        })?
        .trim()
        .to_owned();
    let dir = cache.join(&package);
    let boot = dir.join("root/boot");
    if let Some(vmlinuz) = find_vmlinuz(&boot) {
        return Ok(vmlinuz);
    }
    println!("vm-test: downloading {package}");
    fs::create_dir_all(&dir)?;
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
    // Only the kernel: the guest needs no modules (loopback, serial console,
    // cgroup BPF and bpffs are built in).
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")))?;
    let _ = fs::remove_file(&deb);
    find_vmlinuz(&boot).with_context(|| format!("{} holds no vmlinuz", boot.display()))
}

fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An uncompressed newc initramfs: /init, busybox, agentguard, the checker
/// and every shared library they load.
fn build_initramfs(
    root: &Path,
    cache: &Path,
    agentguard: &Path,
    checker: &Path,
    busybox: &Path,
) -> anyhow::Result<PathBuf> {
    let staging = cache.join("initramfs");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    fs::create_dir_all(staging.join("bin"))?;
    fs::copy(root.join("vm-tests/init"), staging.join("init"))?;
    let mut libs = BTreeSet::new();
    for (from, name) in [
        (agentguard, "agentguard"),
        (checker, "vmcheck"),
        (busybox, "busybox"),
    ] {
        let to = staging.join("bin").join(name);
        // Debug info is most of a debug build; the guest only runs it.
        let stripped = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&to)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} into the initramfs", from.display()))?;
        }
        libs.extend(shared_libraries(from)?);
    }
    for lib in &libs {
        let to = staging.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(lib, &to).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    // Debian's loader path is /lib64/ld-linux-x86-64.so.2 → /lib/x86_64-linux-gnu/…;
    // ldd names both forms, so both are present as files already.
    let image = cache.join("initramfs.cpio");
    let list = Command::new("find")
        .args([".", "-mindepth", "1"])
        .current_dir(&staging)
        .output()
        .context("cannot run find")?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&image)?)
        .spawn()
        .context("cannot run cpio")?;
    {
        use std::io::Write as _;
        let mut stdin = cpio.stdin.take().context("cpio stdin")?;
        stdin.write_all(&list.stdout)?;
    }
    let status = cpio.wait()?;
    if !status.success() {
        bail!("cpio failed ({status})");
    }
    println!(
        "vm-test: initramfs {} ({} MiB)",
        image.display(),
        fs::metadata(&image)?.len() >> 20
    );
    Ok(image)
}

/// Absolute paths of the shared libraries `bin` loads (none when static).
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[derive(Debug)]
enum Failure {
    /// `probe` passed without the guest reaching /init.
    NoInit,
    Hung(Duration),
    NoPass(std::process::ExitStatus),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoInit => f.write_str("the guest never reached /init"),
            Failure::Hung(limit) => write!(f, "no power-off within {limit:?}"),
            Failure::NoPass(status) => {
                write!(
                    f,
                    "no `VM-TEST RESULT: PASS` on the console (qemu {status})"
                )
            }
        }
    }
}

/// Boots one guest; the outer `Result` is for failures to run qemu at all,
/// the inner one is the verdict.
fn boot(
    qemu: &Path,
    vmlinuz: &Path,
    initramfs: &Path,
    kvm: bool,
    log: &Path,
    limit: Duration,
    probe: Option<Duration>,
) -> anyhow::Result<Result<(), Failure>> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-serial", "stdio", "-m", "1024", "-smp", "2"])
        .args(if kvm {
            // Some nested hosts refuse IA32_ARCH_CAPABILITIES; the guest needs none of it.
            ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
        } else {
            ["-accel", "tcg", "-cpu", "max"]
        })
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1 with -no-reboot: a guest panic ends qemu instead of hanging.
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start qemu")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel();
    let err_tx = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(format!("qemu: {line}"));
        }
    });
    let start = Instant::now();
    let mut console: Vec<String> = Vec::new();
    let mut failure = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                // The console carries the kernel's CRs.
                let line = line.trim_end_matches('\r').to_owned();
                if line.starts_with("VM") || line.starts_with("qemu:") {
                    println!("  {line}");
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let reached_init = || console.iter().any(|l| l.starts_with(INIT_LINE));
        // qemu stops the guest (and waits) on a KVM emulation failure.
        let kvm_failed = || {
            console
                .iter()
                .any(|l| l.starts_with("qemu: KVM internal error"))
        };
        if probe.is_some_and(|p| start.elapsed() > p || kvm_failed()) && !reached_init() {
            failure = Some(Failure::NoInit);
        } else if start.elapsed() > limit {
            failure = Some(Failure::Hung(limit));
        }
        if failure.is_some() {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait()?;
    fs::write(log, console.join("\n") + "\n")?;
    let passed = console.iter().any(|l| l == "VM-TEST RESULT: PASS");
    if probe.is_some() && failure.is_none() && !console.iter().any(|l| l.starts_with(INIT_LINE)) {
        failure = Some(Failure::NoInit);
    }
    Ok(match failure {
        Some(f) => Err(f),
        None if passed => Ok(()),
        None => Err(Failure::NoPass(status)),
    })
}
