//! The one writer of saga state: every request that starts a saga and every
//! driver that moves one hands its write to this task, which drains whatever
//! is queued, from all sagas, into one transaction, so one commit carries
//! the steps of many sagas. It does not wait for a batch to fill: while one
//! batch commits, the next gathers.

use crate::metrics::WriterMetrics;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::webhooks::Due;
use crate::store::{self, NewSaga, Transition, Wrote};

/// The most writes in one transaction.
const MAX_BATCH: usize = 512;

/// With this many writes queued, the writer sends them at once instead of
/// waiting a scheduler round for more. The writer is the one serial stage of
/// every saga, and under load that round cost it 1.9 ms a batch, a third of
/// its cycle (c=64, 27 writes a batch); a batch of 16 already shares its
/// statement and commit widely. Measured side by side (`bench
/// --candidate-*`): 7% more sagas/s at c=64, and at c=32 no worse.
const GATHER_BELOW: usize = 16;

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// The database was unreachable or overloaded: the write may be retried.
    pub outage: bool,
    pub message: String,
}

/// A write that was made.
#[derive(Debug, Clone)]
pub struct Made {
    /// The transaction's time, as written in the rows.
    pub at: DateTime<Utc>,
    /// The webhook deliveries of the saga's end, claimed for this process
    /// (none for any other write).
    pub deliveries: Vec<Due>,
}

/// The write made, or `None` when it was not (the saga exists, or the saga
/// was fenced).
pub type Written = Option<Made>;

type Reply = oneshot::Sender<Result<Written, WriteError>>;

enum Job {
    Create(Box<NewSaga>),
    Move(Arc<Transition>),
}

/// The handle requests and drivers write through.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<(Job, Reply)>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer task for sagas owned by `owner`, whose leases last
    /// `lease_secs` from each write. A batch the database has not answered
    /// within `timeout` fails as an outage, and its connection is closed.
    /// Each batch's size and time go to `metrics`.
    /// The webhook deliveries a saga's end enqueues are claimed for
    /// `hand_off_secs`, for this process's worker to send.
    pub fn start(
        pool: PgPool,
        owner: String,
        lease_secs: f64,
        hand_off_secs: f64,
        timeout: Duration,
        metrics: WriterMetrics,
    ) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let db = Connection {
            pool,
            held: None,
            timeout,
            owner,
            lease_secs,
            hand_off_secs,
        };
        let task = tokio::spawn(drain(db, queue, metrics));
        Self {
            jobs,
            task: Mutex::new(Some(task)),
        }
    }

    async fn submit(&self, job: Job) -> Result<Written, WriteError> {
        let (reply, answer) = oneshot::channel();
        let closed = || WriteError {
            outage: false,
            message: "the writer has stopped".into(),
        };
        self.jobs.send((job, reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Creates a saga; `Ok(None)` when one of that id exists already.
    pub async fn create(&self, new: NewSaga) -> Result<Written, WriteError> {
        self.submit(Job::Create(Box::new(new))).await
    }

    /// Writes `transition`; `Ok(None)` when it was fenced (another process
    /// owns the saga now).
    pub async fn write(&self, transition: Arc<Transition>) -> Result<Written, WriteError> {
        self.submit(Job::Move(transition)).await
    }

    /// The writer's task, to join once every driver has stopped.
    pub fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

async fn drain(
    mut db: Connection,
    mut queue: mpsc::UnboundedReceiver<(Job, Reply)>,
    metrics: WriterMetrics,
) {
    while let Some(first) = queue.recv().await {
        // With few writes queued, let the drivers that are ready to run
        // (their answers are in) run first, so that their writes join this
        // batch: no timer, only this scheduler round. Woken by the first
        // write, the writer would run next (tokio runs a task woken by the
        // running one first) and send a batch of one or two. This cut the
        // batches of a c=32 run by a third.
        if queue.len() + 1 < GATHER_BELOW {
            tokio::task::yield_now().await;
        }
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Requests for the same new saga may meet in one batch: the first
        // creates it, the others find it exists.
        let mut seen = HashSet::new();
        let (mut creates, mut moves, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        for (job, reply) in jobs {
            match job {
                Job::Create(new) => {
                    let saga_id = new.saga_id.clone();
                    let index = seen.insert(saga_id.clone()).then_some(creates.len());
                    if index.is_some() {
                        creates.push(*new);
                    }
                    replies.push((Entry::Create { saga_id, index }, reply));
                }
                Job::Move(transition) => {
                    replies.push((Entry::Move(moves.len()), reply));
                    moves.push(transition);
                }
            }
        }
        let began = std::time::Instant::now();
        let mut written = db.write(&creates, &moves).await;
        metrics.commit.observe(began.elapsed().as_secs_f64());
        metrics
            .batch_size
            .observe((creates.len() + moves.len()) as f64);
        match written {
            // A write the database refuses (not an outage) fails alone: the
            // batch is written again one saga at a time.
            Err(err) if !err.outage && creates.len() + moves.len() > 1 => {
                tracing::warn!(%err, batch = replies.len(), "a batch failed; writing it one saga at a time");
                // A second request for a saga created in this batch shares
                // the fate of the first.
                let mut first_creates: HashMap<String, Result<Written, WriteError>> =
                    HashMap::new();
                // Once the database is out, the rest fail as that outage,
                // unwritten: each would wait out the timeout.
                let mut outage: Option<WriteError> = None;
                for (entry, reply) in replies {
                    let result = match &entry {
                        Entry::Create {
                            saga_id,
                            index: Some(i),
                        } => {
                            let mut alone = match &outage {
                                Some(err) => Err(err.clone()),
                                None => db.write(&creates[*i..=*i], &[]).await,
                            };
                            let result = answer(&mut alone, &entry, &moves);
                            first_creates.insert(saga_id.clone(), result.clone());
                            result
                        }
                        Entry::Create {
                            saga_id,
                            index: None,
                        } => match first_creates.get(saga_id) {
                            Some(Err(err)) => Err(err.clone()),
                            _ => Ok(None),
                        },
                        Entry::Move(i) => {
                            let mut alone = match &outage {
                                Some(err) => Err(err.clone()),
                                None => db.write(&[], &moves[*i..=*i]).await,
                            };
                            answer(&mut alone, &entry, &moves)
                        }
                    };
                    if let Err(err) = &result
                        && err.outage
                    {
                        outage.get_or_insert_with(|| err.clone());
                    }
                    let _ = reply.send(result);
                }
            }
            _ => {
                for (entry, reply) in replies {
                    let _ = reply.send(answer(&mut written, &entry, &moves));
                }
            }
        }
    }
}

/// A job of a batch: a create (`index` into the batch's creates, or none
/// when an earlier job of the batch creates the same saga), or a move.
enum Entry {
    Create {
        saga_id: String,
        index: Option<usize>,
    },
    Move(usize),
}

/// What one job of a written batch answers. A move that applied takes its
/// saga's deliveries out of the batch's.
fn answer(
    written: &mut Result<Wrote, WriteError>,
    entry: &Entry,
    moves: &[Arc<Transition>],
) -> Result<Written, WriteError> {
    let wrote = written.as_mut().map_err(|err| err.clone())?;
    let made =
        |at: Option<&DateTime<Utc>>, deliveries: Vec<Due>| at.map(|&at| Made { at, deliveries });
    Ok(match entry {
        Entry::Create { saga_id, index } => made(
            wrote.created.get(saga_id).filter(|_| index.is_some()),
            Vec::new(),
        ),
        Entry::Move(i) => {
            let t = &moves[*i];
            let at = wrote.applied.get(&(t.saga_id.clone(), t.version));
            let deliveries = match at {
                Some(_) => wrote.deliveries.remove(&t.saga_id).unwrap_or_default(),
                None => Vec::new(),
            };
            made(at, deliveries)
        }
    })
}

/// The writer's connection, held from one batch to the next: a connection
/// given back to the pool costs a round trip (sqlx pings it), which would be
/// one more for every batch.
struct Connection {
    pool: PgPool,
    held: Option<PoolConnection<Postgres>>,
    /// How long a batch may go unanswered. sqlx has no timeout of its own for
    /// a query: a connection whose server stopped answering, with nothing
    /// to tell TCP so, would hold every saga's write for ever.
    timeout: Duration,
    /// The owner of the sagas created, and how long their leases last.
    owner: String,
    lease_secs: f64,
    /// How long the deliveries a saga's end enqueues are claimed for.
    hand_off_secs: f64,
}

impl Connection {
    /// Writes the batch in one statement. After an outage the connection is
    /// let go, and the next batch takes another one from the pool.
    ///
    /// A batch that times out may still commit: each saga's driver then finds
    /// its retry fenced and checks the log (`store::was_written`), as after
    /// any lost answer.
    async fn write(
        &mut self,
        creates: &[NewSaga],
        moves: &[Arc<Transition>],
    ) -> Result<Wrote, WriteError> {
        if creates.is_empty() && moves.is_empty() {
            return Ok(Wrote::default());
        }
        let (owner, lease_secs, hand_off) = (&self.owner, self.lease_secs, self.hand_off_secs);
        let result =
            common::db::bounded_on(&self.pool, &mut self.held, self.timeout, async |conn| {
                store::write(conn, creates, moves, owner, lease_secs, Some(hand_off)).await
            })
            .await;
        result.map_err(|err| {
            let outage = common::db::is_outage(&err);
            if outage {
                self.held = None;
            }
            WriteError {
                outage,
                message: err.to_string(),
            }
        })
    }
}
