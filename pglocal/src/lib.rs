//! A private PostgreSQL server in a data folder of its own, started from the
//! machine's PostgreSQL binaries (found on `PATH`, through `pg_config
//! --bindir`, or under `/usr/lib/postgresql/<version>/bin`).
//!
//! `initdb` refuses to run as root, so as root the server runs as the
//! `postgres` system user. The server is tied to this process: a small shell
//! watchdog stops it and deletes its data folder when this process's end of
//! a pipe closes, so a test run that dies leaves nothing behind.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// How the private server trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// PostgreSQL's defaults: every commit reaches the disk.
    Durable,
    /// `fsync=off`: a commit still reaches the operating system before it
    /// is acknowledged, so it survives a crash of PostgreSQL (kill -9,
    /// immediate restart) but not of the machine. For throwaway databases
    /// only. `synchronous_commit` stays on: with it off, an immediate restart
    /// loses acknowledged commits, which the fault-injection suite catches.
    Throwaway,
}

/// A running private PostgreSQL. Dropping it stops the server and deletes
/// its data.
#[derive(Debug)]
pub struct PrivatePostgres {
    url: String,
    port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    watchdog: Child,
    /// Closing this pipe tells the watchdog to stop the server.
    lifeline: Option<ChildStdin>,
}

/// Runs PostgreSQL in the foreground, starting it again whenever it stops
/// (so that [`PrivatePostgres::restart_immediate`] is a crash and a restart),
/// until this process's end of the pipe on fd 0 closes: then it stops the
/// server and deletes the data. Three quick failures in a row give up.
const WATCHDOG: &str = r#"
exec 3<&0
{
    cat <&3 >/dev/null
    touch "$PGTOP/stop"
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null)
        [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && break
        sleep 0.1
    done
} &
quick=0
while [ ! -e "$PGTOP/stop" ] && [ "$quick" -lt 3 ]; do
    started=$(date +%s)
    "$POSTGRES" -D "$PGDATA" -p "$PGPORT" -k "$PGDATA" -c listen_addresses=127.0.0.1 "$@" </dev/null
    if [ $(( $(date +%s) - started )) -lt 2 ]; then quick=$((quick + 1)); else quick=0; fi
done
rm -rf "$PGTOP"
"#;

impl PrivatePostgres {
    /// Initialises a new data folder and starts a server on a free port of
    /// 127.0.0.1, waiting until it accepts connections.
    pub fn start(durability: Durability) -> anyhow::Result<Self> {
        let bindir = find_bindir().context(
            "no PostgreSQL server binaries found (looked on PATH, `pg_config --bindir` and \
             /usr/lib/postgresql/*/bin); install PostgreSQL or set DATABASE_URL",
        )?;
        let owner = server_user()?;
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let top = std::env::temp_dir().join(format!(
            "pglocal-{}-{nanos}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = top.join("data");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            for path in [&top, &dir] {
                chown(path, Some(uid), Some(gid)).with_context(|| {
                    format!("cannot hand {} to the postgres user", path.display())
                })?;
            }
        }
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, owner);
        let out = initdb.output().context("cannot run initdb")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&top);
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let port = free_port()?;
        let mut server = Command::new("sh");
        server
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pglocal")
            .env("POSTGRES", bindir.join("postgres"))
            .env("PGDATA", &dir)
            .env("PGTOP", &top)
            .env("PGPORT", port.to_string())
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if durability == Durability::Throwaway {
            server.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        as_user(&mut server, owner);
        let mut watchdog = server.spawn().context("cannot start postgres")?;
        let lifeline = watchdog.stdin.take();
        let mut pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bindir: bindir.clone(),
            watchdog,
            lifeline,
        };
        pg.wait_ready()?;
        tracing::info!(port, dir = %pg.dir.display(), "private PostgreSQL started");
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Crashes the server as `pg_ctl restart -m immediate` would (no
    /// checkpoint, every connection cut; recovery replays the WAL at start)
    /// and waits until the restarted server accepts connections.
    pub fn restart_immediate(&mut self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .context("cannot read postmaster.pid")?;
        let pid: i32 = pid_file
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("postmaster.pid names no process")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGQUIT,
        )
        .context("cannot signal postgres")?;
        // Wait for the old server to be gone before waiting for the new one.
        let deadline = Instant::now() + Duration::from_secs(30);
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            if Instant::now() > deadline {
                bail!("postgres did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let bindir = self.bindir.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.watchdog.try_wait()? {
                bail!("postgres exited at start-up ({status})");
            }
            let ready = Command::new(bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown) and deletes its data, waiting for both.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            let _ = lifeline.flush();
            drop(lifeline);
            let _ = self.watchdog.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The folder holding `initdb`, `postgres` and `pg_isready`.
pub fn find_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pg_isready"]
            .iter()
            .all(|bin| dir.join(bin).is_file())
    };
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| complete(dir))
    {
        return Some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && complete(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// As root, the `postgres` user's ids; otherwise `None` (run as ourselves).
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?.context(
        "running as root, and PostgreSQL refuses to run as root: create a `postgres` \
         system user (the PostgreSQL packages do) or set DATABASE_URL",
    )?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_user(command: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).current_dir("/");
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}
