//! A throwaway PostgreSQL server for tests and benchmarks: Debian's
//! `postgresql` package, `initdb` and `pg_ctl` as the `postgres` user (not
//! root), on loopback at a free port, in a temp dir removed with it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// The newest installed PostgreSQL's `bin` directory, if any.
pub fn installed() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("pg_ctl").exists() && b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgServer {
    /// Make a cluster and start it (`fsync` on: durability is what is measured).
    pub fn start() -> Result<PgServer> {
        let bin = installed().context("PostgreSQL is not installed (scripts/setup.sh installs it)")?;
        let dir = tempfile::Builder::new().prefix("greenfill-pg-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let server = PgServer { bin, dir, port: free_port()? };
        if is_root() {
            let id = |flag: &str| -> Result<String> {
                let out = Command::new("id").args([flag, "postgres"]).output()?;
                if !out.status.success() {
                    bail!("no `postgres` user to run the server as (the postgresql package makes it)");
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            };
            let (uid, gid) = (id("-u")?.parse()?, id("-g")?.parse()?);
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(server.dir.path(), Some(uid), Some(gid))?;
        }
        server.run("initdb", &["-D", &data.to_string_lossy(), "-A", "trust", "-U", "greenfill", "--no-sync"])?;
        server.ctl(&["start", "-w", "-t", "30"])?;
        Ok(server)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).current_dir(self.dir.path()).output().with_context(|| exe.display().to_string())?;
        if !out.status.success() {
            bail!("{tool} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> Result<()> {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let mut all =
            vec!["-D", data.to_str().unwrap_or_default(), "-o", &opts, "-l", log.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// `postgres://…` for the scheduler (plain TCP on loopback).
    pub fn url(&self) -> String {
        format!("postgres://greenfill@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// Restart the server (fast shutdown: every session is cut).
    pub fn restart(&self) -> Result<()> {
        self.ctl(&["restart", "-m", "fast", "-w", "-t", "30"])
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "immediate", "-w"]);
    }
}

fn is_root() -> bool {
    greenfill_core::testing::is_root()
}
