//! What `agentguard exec` adds around its command that no cgroup program
//! can: a seccomp filter (inherited by every descendant, and not removable,
//! even by root) that refuses with EPERM
//! - `socket()` of any family but AF_UNIX, AF_INET, AF_INET6 and
//!   AF_NETLINK: AF_VSOCK (a channel to the hypervisor on VM hosts),
//!   AF_PACKET and AF_XDP (raw frames for a root agent), and the rest of
//!   the families the cgroup hooks never see (docs/threat-model.md);
//! - `io_uring_setup()`: a ring's IORING_OP_SOCKET creates sockets without
//!   the `socket()` system call, so seccomp would not see them. (TCP and
//!   UDP through a ring would still meet the cgroup hooks; other families
//!   would not.)
//!
//! The daemon's attached cgroups get no such filter (their processes were
//! started by someone else); `RestrictAddressFamilies=` in an agent's unit
//! does the same job there.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The families an agent keeps.
pub const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building exec's seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("building exec's seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
    #[error("exec's seccomp filter: this architecture is not supported ({0})")]
    Arch(String),
}

/// The compiled filter, built before the fork (nothing may allocate
/// between fork and exec).
pub fn filter() -> Result<BpfProgram, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH.to_owned()))?;
    let other_family = ALLOWED_FAMILIES
        .iter()
        .map(|family| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *family as u64)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rules = BTreeMap::from([
        (libc::SYS_socket, vec![SeccompRule::new(other_family)?]),
        // No conditions: every call matches.
        (libc::SYS_io_uring_setup, vec![]),
    ]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `prog` on the calling thread. Only system calls, no
/// allocation: safe between fork and exec.
///
/// As root the filter goes on without `no_new_privs`, so set-uid and
/// file-capability programs inside keep working as they did; without
/// CAP_SYS_ADMIN the kernel insists on it.
pub fn install(prog: &BpfProgram) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut().cast(),
    };
    // SAFETY: the kernel copies the program in; `fprog` outlives the call.
    let set = || unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::from_ref(&fprog),
        )
    };
    if set() == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::EACCES) {
        return Err(first);
    }
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 || set() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles() {
        let prog = filter().expect("filter");
        assert!(!prog.is_empty());
        assert!(prog.len() < usize::from(u16::MAX));
    }
}
