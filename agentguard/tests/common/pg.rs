//! A throwaway PostgreSQL cluster for the end-to-end tests (Debian's
//! postgresql package): started on a free loopback port, stopped on drop.

use std::{net::TcpListener, path::PathBuf, process::Command};

/// A throwaway PostgreSQL cluster (Debian's postgresql package), stopped on drop.
pub struct Pg {
    pub port: u16,
    pub dir: tempfile::TempDir,
}

pub fn pg_bin(tool: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/setup.sh)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version").join(tool)
}

impl Pg {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let data = dir.path().join("data");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("chmod").arg("755").arg(dir.path()));
        run(Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres"])
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-l"])
            .arg(data.join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                data.display()
            ))
            .arg("start"));
        Self { port, dir }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    /// psql straight to the server (outside any guard), for setup and checks.
    pub fn psql_direct(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args(psql_args(self.port))
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

pub fn psql_args(port: u16) -> Vec<String> {
    [
        "-X",
        "-q",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-v",
        "VERBOSITY=verbose",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
