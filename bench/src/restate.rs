//! The Restate peer: the same saga as a Restate service (`peers/restate`,
//! installed by `peers/restate/install.sh`), run by a single-node Restate
//! server, calling the same participant services. Both processes are
//! started here, bound to 127.0.0.1 only, with their data under `logs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::procs::{Service, free_port};

/// A running Restate server with the `TripSaga` service registered.
pub struct Restate {
    /// The server, then the service.
    services: Vec<Service>,
    ingress: String,
    data_dir: PathBuf,
}

/// The npm package that holds the `restate-server` binary for this machine.
fn server_package() -> anyhow::Result<&'static str> {
    Ok(match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "restate-server-linux-x64",
        ("linux", "aarch64") => "restate-server-linux-arm64",
        ("macos", "x86_64") => "restate-server-darwin-x64",
        ("macos", "aarch64") => "restate-server-darwin-arm64",
        (os, arch) => bail!("restate-server is not packaged for {os}/{arch}"),
    })
}

impl Restate {
    /// Starts restate-server (ingress, admin and fabric ports on free ports
    /// of 127.0.0.1, a fresh data folder under `logs`), starts restate-trip
    /// with the participant URLs (flights, cars, payments), registers it
    /// through the admin API, and waits until the ingress knows the service.
    pub async fn start(
        peer_dir: &Path,
        participants: &[String],
        logs: &Path,
        client: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let [flights, cars, payments] = participants else {
            bail!("the Restate peer needs three participant URLs (flights, cars, payments)");
        };
        let server_dir = peer_dir
            .join("node_modules/@restatedev")
            .join(server_package()?)
            .join("bin");
        let trip_dir = peer_dir.join("target/release");
        for binary in [
            server_dir.join("restate-server"),
            trip_dir.join("restate-trip"),
        ] {
            if !binary.is_file() {
                bail!(
                    "{} is missing; install the Restate peer first: {}",
                    binary.display(),
                    peer_dir.join("install.sh").display()
                );
            }
        }

        let [ingress_port, admin_port, fabric_port, trip_port] =
            [free_port()?, free_port()?, free_port()?, free_port()?];
        let data_dir = logs.join("restate-data");
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("cannot empty {}", data_dir.display()))?;
        }
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let data = data_dir
            .to_str()
            .context("the logs folder's path is not UTF-8")?;
        // Single node (it provisions itself), TCP only (no Unix sockets), every
        // listener on 127.0.0.1, no telemetry, no web UI, warnings only
        // (RUST_LOG=warn, set by Service, overrides log-filter anyway).
        let config = format!(
            r#"cluster-name = "bench"
node-name = "bench"
base-dir = {data:?}
auto-provision = true
listen-mode = "tcp"
bind-ip = "127.0.0.1"
bind-port = {fabric_port}
advertised-host = "127.0.0.1"
log-filter = "warn"
log-disable-ansi-codes = true
disable-telemetry = true

[admin]
bind-port = {admin_port}
disable-web-ui = true

[ingress]
bind-port = {ingress_port}
"#
        );
        let config_path = logs.join("restate.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        let admin = format!("http://127.0.0.1:{admin_port}");
        let ingress = format!("http://127.0.0.1:{ingress_port}");
        let trip_url = format!("http://127.0.0.1:{trip_port}");
        let mut server = Service::new(
            &server_dir,
            "restate-server",
            "restate-server".into(),
            admin.clone(),
            vec![(
                "RESTATE_CONFIG".into(),
                config_path.to_string_lossy().into_owned(),
            )],
            logs,
        );
        let trip = Service::new(
            &trip_dir,
            "restate-trip",
            "restate-trip".into(),
            trip_url.clone(),
            vec![
                ("LISTEN_ADDR".into(), format!("127.0.0.1:{trip_port}")),
                ("FLIGHTS_URL".into(), flights.clone()),
                ("CARS_URL".into(), cars.clone()),
                ("PAYMENTS_URL".into(), payments.clone()),
            ],
            logs,
        );
        server.start()?;
        let mut this = Self {
            services: vec![server, trip],
            ingress,
            data_dir,
        };
        match this.boot(client, &admin, &trip_url).await {
            Ok(()) => Ok(this),
            Err(err) => {
                this.kill().await;
                Err(err)
            }
        }
    }

    /// Waits for the server, starts the service, registers it and waits for
    /// the ingress to know it.
    async fn boot(
        &mut self,
        client: &reqwest::Client,
        admin: &str,
        trip_url: &str,
    ) -> anyhow::Result<()> {
        let within = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + within;
        let logs_hint = |service: &Service| format!("see {}.log in the logs folder", service.name);
        // The admin API answers once the node has provisioned itself.
        loop {
            let healthy = client
                .get(format!("{admin}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                break;
            }
            if !self.services[0].is_running() {
                bail!("restate-server exited; {}", logs_hint(&self.services[0]));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "restate-server not healthy within {within:?}; {}",
                    logs_hint(&self.services[0])
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        self.services[1].start()?;
        // Registration fails until the service listens (and, on a fresh
        // node, until the partitions are up): retry it.
        loop {
            let answer = client
                .post(format!("{admin}/deployments"))
                .json(&json!({ "uri": trip_url }))
                .send()
                .await;
            let last = match answer {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(err) => err.to_string(),
            };
            for service in &mut self.services {
                if !service.is_running() {
                    bail!("{} exited; {}", service.name, logs_hint(service));
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "registering {trip_url} with restate-server failed within {within:?}: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The ingress learns of the new service asynchronously.
        loop {
            let known = match client
                .get(format!("{}/restate/health", self.ingress))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    r.text().await.unwrap_or_default().contains("TripSaga")
                }
                _ => false,
            };
            if known {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the Restate ingress {} does not list TripSaga within {within:?}",
                    self.ingress
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one saga through the ingress and waits for its result; true
    /// when it ended as expected: succeeded for `success`, failed (after its
    /// compensations succeeded) for the other run types. The trip id is the
    /// invocation's idempotency key, so a trip runs once, as with our
    /// orchestrator.
    pub async fn saga(&self, client: &reqwest::Client, trip_id: &str, run_type: &str) -> bool {
        let answer = client
            .post(format!("{}/TripSaga/run", self.ingress))
            .header("idempotency-key", trip_id)
            .json(&json!({ "trip_id": trip_id, "run_type": run_type }))
            .send()
            .await;
        let Ok(answer) = answer else {
            return false;
        };
        if !answer.status().is_success() {
            return false;
        }
        let Ok(outcome) = answer.json::<Value>().await else {
            return false;
        };
        let expected = if run_type == "success" {
            "succeeded"
        } else {
            "failed"
        };
        outcome["status"] == expected
    }

    /// The processes to measure: the server, then the service.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Kills the service, then the server, and deletes the server's data.
    pub async fn kill(&mut self) {
        for service in self.services.iter_mut().rev() {
            service.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
