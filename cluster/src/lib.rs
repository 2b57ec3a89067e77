//! The whole travel saga cluster in one process: flights-svc, cars-svc,
//! payments-svc and the orchestrator, each served from its library crate on
//! a listener of its own, exactly as their binaries serve them.
//!
//! The native runner (`cargo run --release -p cluster`) and the end-to-end
//! tests both start the cluster through [`Cluster::start`].

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One of the three participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Participant {
    Flights,
    Cars,
    Payments,
}

impl Participant {
    pub fn name(self) -> &'static str {
        match self {
            Participant::Flights => "flights-svc",
            Participant::Cars => "cars-svc",
            Participant::Payments => "payments-svc",
        }
    }
}

/// The four listeners, bound before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub orchestrator: TcpListener,
    pub flights: TcpListener,
    pub cars: TcpListener,
    pub payments: TcpListener,
}

impl Listeners {
    /// Binds `first_port` to `first_port + 3` on `host` (orchestrator,
    /// flights, cars, payments), or four free ports when `first_port` is 0.
    pub async fn bind(host: &str, first_port: u16) -> anyhow::Result<Self> {
        let bind = |offset: u16| async move {
            let port = if first_port == 0 {
                0
            } else {
                first_port + offset
            };
            TcpListener::bind((host, port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))
        };
        Ok(Self {
            orchestrator: bind(0).await?,
            flights: bind(1).await?,
            cars: bind(2).await?,
            payments: bind(3).await?,
        })
    }
}

/// A running cluster. [`Cluster::stop`] stops it cleanly.
#[derive(Debug)]
pub struct Cluster {
    pub orchestrator_url: String,
    pub flights_url: String,
    pub cars_url: String,
    pub payments_url: String,
    /// Each service's database URL (in the order of [`Participant`], then
    /// the orchestrator's): a role of its own.
    database_urls: [String; 4],
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    held: Vec<(Participant, TcpListener)>,
    /// Per orchestrator started: its URL and the token that crashes it.
    orchestrators: Vec<(String, CancellationToken)>,
    /// Each participant's key (`id:secret`, in the order of
    /// [`Participant`]), made at start: the
    /// participants check every call's signature, and each orchestrator
    /// signs with them.
    keys: [String; 3],
}

/// The schemas (and roles) of the services, in the order of
/// [`Cluster::database_urls`].
const SCHEMAS: [&str; 4] = ["flights", "cars", "payments", "orchestrator"];

/// Makes each service's role on `admin_url`'s database, and answers each
/// one's URL. A role belongs to the whole server, so every cluster of one
/// process (the tests') shares one password per role.
async fn provision(admin_url: &str) -> anyhow::Result<[String; 4]> {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let password = PASSWORD.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    let mut urls: [String; 4] = Default::default();
    for (url, schema) in urls.iter_mut().zip(SCHEMAS) {
        let mut own = url::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
        own.set_username(schema)
            .and_then(|()| own.set_password(Some(password)))
            .map_err(|()| anyhow::anyhow!("DATABASE_URL cannot take a user name"))?;
        common::roles::provision(admin_url, own.as_str(), schema)
            .await
            .with_context(|| format!("cannot make the database role {schema}"))?;
        *url = own.into();
    }
    Ok(urls)
}

fn url_of(listener: &TcpListener) -> anyhow::Result<String> {
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    Ok(format!("http://{host}:{}", addr.port()))
}

impl Cluster {
    /// Makes each service's database role as the administrator
    /// `database_url` names ([`common::roles::provision`]), starts the
    /// participants, each connected as its role, waits until they are ready
    /// (migrated), then starts the orchestrator and waits for it too. `configure` adjusts the
    /// orchestrator's settings. A participant named in `hold` is not served
    /// yet: its listener accepts no requests until [`Cluster::serve_held`],
    /// as if the service were down.
    pub async fn start(
        database_url: &str,
        listeners: Listeners,
        hold: &[Participant],
        configure: impl FnOnce(&mut orchestrator::Config),
    ) -> anyhow::Result<Self> {
        let mut cluster = Self {
            orchestrator_url: url_of(&listeners.orchestrator)?,
            flights_url: url_of(&listeners.flights)?,
            cars_url: url_of(&listeners.cars)?,
            payments_url: url_of(&listeners.payments)?,
            database_urls: provision(database_url).await?,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            held: Vec::new(),
            orchestrators: Vec::new(),
            keys: [
                common::auth::Key::generate("flights-1"),
                common::auth::Key::generate("cars-1"),
                common::auth::Key::generate("payments-1"),
            ],
        };
        let mut started = Vec::new();
        for (participant, listener) in [
            (Participant::Flights, listeners.flights),
            (Participant::Cars, listeners.cars),
            (Participant::Payments, listeners.payments),
        ] {
            if hold.contains(&participant) {
                cluster.held.push((participant, listener));
            } else {
                started.push((
                    cluster.spawn_participant(participant, listener),
                    participant,
                ));
            }
        }
        for (task, participant) in started {
            cluster.wait_ready(task, participant.name()).await?;
        }
        cluster
            .spawn_orchestrator(listeners.orchestrator, configure)
            .await?;
        Ok(cluster)
    }

    /// Starts one more orchestrator on `listener`, on the same database and
    /// participants, and waits until it is ready; returns its URL.
    pub async fn spawn_orchestrator(
        &mut self,
        listener: TcpListener,
        configure: impl FnOnce(&mut orchestrator::Config),
    ) -> anyhow::Result<String> {
        let url = url_of(&listener)?;
        let mut config = orchestrator::Config::new(
            &self.database_urls[3],
            &self.flights_url,
            &self.cars_url,
            &self.payments_url,
        );
        for (participant, key) in ["flights", "cars", "payments"].iter().zip(&self.keys) {
            config.participant_keys.push(format!("{participant}={key}"));
        }
        configure(&mut config);
        let stop = self.stop.clone();
        let crash = CancellationToken::new();
        let crashed = crash.clone();
        let stopped = async move {
            tokio::select! {
                () = stop.cancelled() => orchestrator::StopMode::Graceful,
                () = crashed.cancelled() => orchestrator::StopMode::Crash,
            }
        };
        self.tasks.push((
            "orchestrator",
            tokio::spawn(orchestrator::run(config, listener, stopped)),
        ));
        self.orchestrators.push((url.clone(), crash));
        self.wait_ready_at(self.tasks.len() - 1, "orchestrator", &url)
            .await?;
        Ok(url)
    }

    /// Stops the orchestrator at `url` as `kill -9` would: its sagas stay
    /// leased to it, in whatever state they were.
    pub fn crash_orchestrator(&self, url: &str) {
        for (at, crash) in &self.orchestrators {
            if at == url {
                crash.cancel();
            }
        }
    }

    /// The database URL the service of `schema` (`flights`, ...,
    /// `orchestrator`) connects with: its own role.
    pub fn database_url_of(&self, schema: &str) -> Option<&str> {
        let i = SCHEMAS.iter().position(|s| *s == schema)?;
        Some(&self.database_urls[i])
    }

    /// The key `participant` checks its calls with, to sign a call made
    /// to it directly.
    pub fn key(&self, participant: Participant) -> common::auth::Key {
        common::auth::Key::parse(&self.keys[participant as usize]).expect("a key made at start")
    }

    /// Spawns `participant`; returns the index of its task.
    fn spawn_participant(&mut self, participant: Participant, listener: TcpListener) -> usize {
        let common = common::config::CommonConfig::new(&self.database_urls[participant as usize]);
        let auth = common::auth::ParticipantAuth {
            auth_keys: Some(self.keys[participant as usize].clone()),
        };
        let stop = self.stop.clone();
        let stopped = async move { stop.cancelled().await };
        let task = match participant {
            Participant::Flights => tokio::spawn(flights_svc::run(
                flights_svc::Config {
                    listen_addr: String::new(),
                    common,
                    // The runner runs the sample: its run types fail on purpose.
                    failure_injection: Default::default(),
                    auth,
                },
                listener,
                stopped,
            )),
            Participant::Cars => tokio::spawn(cars_svc::run(
                cars_svc::Config {
                    listen_addr: String::new(),
                    common,
                    // The runner runs the sample: its run types fail on purpose.
                    failure_injection: Default::default(),
                    auth,
                },
                listener,
                stopped,
            )),
            Participant::Payments => tokio::spawn(payments_svc::run(
                payments_svc::Config {
                    listen_addr: String::new(),
                    common,
                    // The runner runs the sample: its run types fail on purpose.
                    failure_injection: Default::default(),
                    auth,
                },
                listener,
                stopped,
            )),
        };
        self.tasks.push((participant.name(), task));
        self.tasks.len() - 1
    }

    /// Starts serving a participant held back at start, and waits until it
    /// is ready.
    pub async fn serve_held(&mut self, participant: Participant) -> anyhow::Result<()> {
        let index = self
            .held
            .iter()
            .position(|(p, _)| *p == participant)
            .with_context(|| format!("{} is not held", participant.name()))?;
        let (_, listener) = self.held.remove(index);
        let task = self.spawn_participant(participant, listener);
        self.wait_ready(task, participant.name()).await
    }

    fn url(&self, service: &str) -> &str {
        match service {
            "flights-svc" => &self.flights_url,
            "cars-svc" => &self.cars_url,
            "payments-svc" => &self.payments_url,
            _ => &self.orchestrator_url,
        }
    }

    async fn wait_ready(&mut self, task: usize, service: &'static str) -> anyhow::Result<()> {
        let url = self.url(service).to_owned();
        self.wait_ready_at(task, service, &url).await
    }

    /// Waits until `service` (the task at index `task`) at `base` answers
    /// `/readyz`, failing fast if that task exited.
    async fn wait_ready_at(
        &mut self,
        task: usize,
        service: &'static str,
        base: &str,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()?;
        let url = format!("{base}/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.tasks[task].1.is_finished() {
                let (_, task) = self.tasks.remove(task);
                let result = task.await.context("service task panicked")?;
                result.with_context(|| format!("{service} stopped at start-up"))?;
                bail!("{service} stopped at start-up");
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{service} was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every service (the orchestrator hands its leases back) and
    /// waits for them, reporting the first failure.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut first_error = None;
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(result) => result.with_context(|| format!("{name} failed")),
                Err(err) => Err(anyhow::Error::from(err).context(format!("{name} panicked"))),
            };
            if let Err(err) = result {
                tracing::error!(error = format!("{err:#}"), "service failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
