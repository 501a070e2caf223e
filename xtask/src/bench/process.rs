//! Child processes that never outlive the benchmark: each is stopped when its
//! [`Running`] guard drops (on success, on error and on panic), and the kernel
//! stops it if this process dies first (`PR_SET_PDEATHSIG`).

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How a child is asked to stop. `agentguard exec` gets SIGTERM: it forwards
/// it to the command and then removes its cgroup, which SIGKILL would leave behind.
/// The PostgreSQL postmaster gets SIGINT, its fast shutdown (SIGTERM waits for
/// clients to leave).
#[derive(Clone, Copy)]
pub enum Stop {
    Term,
    Int,
    Kill,
}

impl Stop {
    fn signal(self) -> libc::c_int {
        match self {
            Stop::Term => libc::SIGTERM,
            Stop::Int => libc::SIGINT,
            Stop::Kill => libc::SIGKILL,
        }
    }
}

pub struct Running {
    name: String,
    child: Child,
    stop: Stop,
}

/// Starts `cmd` with stdout and stderr going to files (no pipe can fill up
/// and stall the child).
pub fn spawn(
    name: &str,
    mut cmd: Command,
    stop: Stop,
    stdout: &Path,
    stderr: &Path,
) -> anyhow::Result<Running> {
    let out =
        File::create(stdout).with_context(|| format!("cannot create {}", stdout.display()))?;
    let err =
        File::create(stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let signal = stop.signal();
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
    Ok(Running {
        name: name.to_owned(),
        child,
        stop,
    })
}

impl Running {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot wait for {}", self.name))
    }

    /// Waits for the child to exit, at most `limit`; past it the child is stopped.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!("{} did not finish within {limit:?}; stopped it", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the child to stop, then kills it if it has not gone after a grace period.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, self.stop.signal()) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} ignored {}; killing it", self.name, self.stop.signal());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
