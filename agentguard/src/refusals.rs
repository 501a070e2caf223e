//! What the kernel programs refused on their own, with no connection ever
//! reaching the proxy: a socket kind at `socket()`, a UDP datagram that is
//! not DNS, a connect of another socket type (`SOCKET_REFUSALS`), and a unix
//! socket outside the allow list (`UNIX_REFUSALS`). Each becomes a deny in
//! the audit log with who asked.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agentguard_common::{Addr, Origin, SocketRefusal, UnixRefusal, refusal};
use aya::maps::{MapData, RingBuf};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::{
    audit::{DecisionRecord, Recorder, RequestSummary},
    config::Config,
    decide::Decision,
    identity::{AgentRegistry, Identity},
    net, socket_kinds, unixguard,
};

#[derive(Debug, Clone, Copy)]
pub enum KernelRefusal {
    Socket(SocketRefusal),
    Unix(UnixRefusal),
}

/// Drains one ring of `T` records into `tx` until `tx` closes.
pub fn spawn_ring_reader<T: Copy + Send + 'static>(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<KernelRefusal>,
    wrap: fn(T) -> KernelRefusal,
) {
    tokio::spawn(async move {
        // SAFETY: the ring buffer owns its fd and keeps it open for as long
        // as it is registered here (as for the aya-log reader).
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<T>() {
                    continue;
                }
                // SAFETY: the programs write whole `T` values (plain
                // `#[repr(C)]` data); the length was checked.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
                drop(item);
                if tx.send(wrap(event)).await.is_err() {
                    return;
                }
            }
            guard.clear_ready();
        }
    });
}

/// Records each refusal the kernel reports as a deny, with who asked.
pub async fn audit(
    mut rx: mpsc::Receiver<KernelRefusal>,
    recorder: Recorder,
    config: Arc<Config>,
    agents: Arc<AgentRegistry>,
    cgroup_mount: Option<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let record = |event| record(event, &recorder, &config, &agents, cgroup_mount.as_deref());
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => {
                // Refusals already in a ring when the guard stops (an exec
                // guard's command just exited) are still recorded.
                while let Ok(Some(event)) =
                    tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                {
                    record(event).await;
                }
                return;
            }
            event = rx.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        record(event).await;
    }
}

/// Who asked and what: the origin fields the identity needs, the summary
/// and the reason.
fn describe(event: &KernelRefusal) -> (Origin, String, String) {
    match event {
        KernelRefusal::Unix(e) => {
            let path = unixguard::display_path(&e.path);
            let origin = Origin {
                dst: Addr::default(),
                dst_port: 0,
                family: libc::AF_UNIX as u16,
                tgid: e.tgid,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
            };
            (
                origin,
                format!("unix socket {path}"),
                "unix socket not in unix_sockets.allow".to_owned(),
            )
        }
        KernelRefusal::Socket(e) => {
            let origin = Origin {
                dst: e.dst,
                dst_port: e.dst_port,
                family: e.kind.family,
                tgid: e.tgid,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
            };
            let kind = socket_kinds::describe(&e.kind);
            let dst = || format!("{}:{}", net::from_addr(&e.dst), e.dst_port);
            match e.what {
                refusal::SOCKET_CREATE => (
                    origin,
                    format!("socket {kind}"),
                    format!(
                        "socket kind {kind}: the guard sees only TCP and UDP (allow it with [sockets] allow)"
                    ),
                ),
                refusal::UDP => (
                    origin,
                    format!("udp {}", dst()),
                    "UDP other than DNS to a configured resolver refused".to_owned(),
                ),
                _ => (
                    origin,
                    format!("connect {kind} {}", dst()),
                    format!("connect of a {kind} socket refused"),
                ),
            }
        }
    }
}

async fn record(
    event: KernelRefusal,
    recorder: &Recorder,
    config: &Config,
    agents: &AgentRegistry,
    cgroup_mount: Option<&Path>,
) {
    let (origin, summary, reason) = describe(&event);
    let identity = Identity::resolve(&origin, config, agents, cgroup_mount);
    warn!(pid = identity.pid, uid = identity.uid, exe = identity.exe.as_deref().unwrap_or(&identity.comm), what = %summary, "refused: {reason}");
    let record = DecisionRecord::new(
        None,
        Some(&identity),
        None,
        RequestSummary::Other { summary },
        &Decision::deny(&reason),
        Duration::ZERO,
    );
    let _ = recorder.decision(record).await;
}
