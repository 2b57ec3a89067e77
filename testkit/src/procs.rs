//! Service processes for the chaos and benchmark commands: the real binaries,
//! started, killed with SIGKILL, paused with SIGSTOP, restarted, and measured
//! (CPU time and peak memory, from `/proc`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The repository's saga definitions, which the orchestrators started here
/// register (a service's own `SAGAS_DIR` overrides it).
pub const SAGAS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas");

/// One service process and how to start it again.
pub struct Service {
    pub name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub url: String,
    child: Option<Child>,
}

impl Service {
    pub fn new(
        bin_dir: &Path,
        binary: &str,
        name: String,
        url: String,
        env: Vec<(String, String)>,
        logs: &Path,
    ) -> Self {
        Self {
            binary: bin_dir.join(binary),
            log: logs.join(format!("{name}.log")),
            name,
            env,
            url,
            child: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .env("SAGAS_DIR", SAGAS_DIR)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// CPU seconds used so far (user and system) and peak resident memory
    /// in bytes, read from `/proc`.
    pub fn usage(&self) -> Option<(f64, u64)> {
        let pid = self.child.as_ref()?.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_kb: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some((ticks as f64 / hz as f64, peak_kb * 1024))
    }

    /// Resets the peak resident memory that [`Service::usage`] reports to
    /// the memory in use now (Linux `clear_refs`), so that the next reading
    /// is the peak of what came after.
    pub fn reset_peak_memory(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    fn pid(&self) -> Option<Pid> {
        let id = self.child.as_ref()?.id()?;
        Some(Pid::from_raw(i32::try_from(id).ok()?))
    }

    /// SIGSTOP, then SIGCONT after `pause`.
    pub async fn pause(&mut self, pause: Duration) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGSTOP);
            tokio::time::sleep(pause).await;
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ready = client
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if !self.is_running() {
                bail!("{} exited; see {}", self.name, self.log.display());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not ready within {within:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A free port on 127.0.0.1 (bound, then let go for the child to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the four service binaries are: `given`, or the folder of the
/// running binary (`target/<profile>/`); an error says how to build them.
pub fn service_bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder beside this binary")?
            .to_owned(),
    };
    for bin in ["orchestrator", "flights-svc", "cars-svc", "payments-svc"] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} is missing; build the binaries first: cargo build --release --bins",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}
