//! The one writer of saga transitions: every driver hands its transition to
//! this task, which drains whatever is queued from all sagas into a single
//! statement, so one commit carries the steps of many sagas. It does not
//! wait for a batch to fill: while one batch commits, the next gathers.

use std::sync::Mutex;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{self, Transition};

/// The most transitions written in one statement.
const MAX_BATCH: usize = 512;

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// The database was unreachable or overloaded: the write may be retried.
    pub outage: bool,
    pub message: String,
}

type Reply = oneshot::Sender<Result<bool, WriteError>>;

/// The handle drivers write through.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<(Transition, Reply)>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer task; every lease it writes lasts `lease_secs`.
    pub fn start(pool: PgPool, lease_secs: f64) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(drain(pool, lease_secs, queue));
        Self {
            jobs,
            task: Mutex::new(Some(task)),
        }
    }

    /// Writes `transition`; `Ok(false)` when it was fenced (another process
    /// owns the saga now).
    pub async fn write(&self, transition: Transition) -> Result<bool, WriteError> {
        let (reply, answer) = oneshot::channel();
        let closed = || WriteError {
            outage: false,
            message: "the writer has stopped".into(),
        };
        self.jobs.send((transition, reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// The writer's task, to join once every driver has stopped.
    pub fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

async fn drain(
    pool: PgPool,
    lease_secs: f64,
    mut queue: mpsc::UnboundedReceiver<(Transition, Reply)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while let Some((transition, reply)) = queue.recv().await {
        batch.push(transition);
        replies.push(reply);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok((transition, reply)) => {
                    batch.push(transition);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        match store::transitions(&pool, &batch, lease_secs).await {
            Ok(applied) => {
                for (transition, reply) in batch.drain(..).zip(replies.drain(..)) {
                    let _ = reply.send(Ok(applied.contains(&transition.trip_id)));
                }
            }
            Err(err) => {
                let error = WriteError {
                    outage: crate::saga::executor::is_outage(&err),
                    message: err.to_string(),
                };
                batch.clear();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
