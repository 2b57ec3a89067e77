//! With `--webhooks`: a webhook receiver in this process, subscribed to
//! every orchestrator through `WEBHOOK_URL`, and the wait that makes a
//! phase end only when its deliveries have been received, so that their
//! cost falls in the phase that caused it, not in the next one. With
//! `--otlp`: the same kind of receiver as the orchestrator's OTLP/HTTP
//! trace endpoint.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::time::Instant;

/// The receiver: answers every delivery 204 and counts them.
pub struct Receiver {
    url: String,
    secret_file: String,
    received: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free port; the secret is written into `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let secret_file = dir.join("webhook-secret");
        // Any whsec_ key: the receiver does not verify, as a receiver's
        // library would cost the same in both builds.
        std::fs::write(&secret_file, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        Self::listen(secret_file.display().to_string(), || StatusCode::NO_CONTENT).await
    }

    /// An OTLP/HTTP trace receiver: an empty body is an empty
    /// `ExportTraceServiceResponse`, which is full success.
    pub async fn start_otlp() -> anyhow::Result<Self> {
        Self::listen(String::new(), || {
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
            )
        })
        .await
    }

    /// Answers every request with `answer()`, counting them.
    async fn listen<R>(secret_file: String, answer: fn() -> R) -> anyhow::Result<Self>
    where
        R: axum::response::IntoResponse + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        let app = axum::Router::new().fallback(move || {
            count.fetch_add(1, Ordering::Relaxed);
            async move { answer() }
        });
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("bench: a receiver stopped: {err}");
            }
        });
        Ok(Self {
            url,
            secret_file,
            received,
            server,
        })
    }

    /// The orchestrator setting that exports its spans here.
    pub fn otlp_env(&self) -> String {
        format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", self.url)
    }

    /// The orchestrator settings that subscribe it.
    pub fn env(&self) -> [String; 2] {
        [
            format!("WEBHOOK_URL={}/", self.url),
            format!("WEBHOOK_SECRET_FILE={}", self.secret_file),
        ]
    }

    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Waits until the orchestrator whose database `pool` reaches has no
/// delivery pending; at once for a build without an outbox.
pub async fn drained(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orchestrator.webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(pool)
        .await;
        let pending = match pending {
            Ok(n) => n,
            // undefined_table: a build before webhooks.
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("42P01") => 0,
            Err(err) => return Err(err).context("cannot count pending webhook deliveries"),
        };
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} webhook deliveries still pending after 120 s: see the orchestrator's log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
