//! A TCP proxy that can fall silent: [`SilentProxy::silence`] stops every
//! connection open at that moment from passing bytes either way, while
//! keeping it open, as a hung server or a dropped NAT entry would. The
//! client's writes are still accepted (and dropped), so it sees no error,
//! only no answer. Connections opened later pass as before.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped.
#[derive(Debug)]
pub struct SilentProxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<watch::Sender<bool>>>>,
    closed: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl SilentProxy {
    /// Listens on 127.0.0.1, port 0, and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open: Arc<Mutex<Vec<watch::Sender<bool>>>> = Arc::default();
        let closed = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (open, closed) = (Arc::clone(&open), Arc::clone(&closed));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (silence, silenced) = watch::channel(false);
                    open.lock().unwrap().push(silence);
                    let closed = Arc::clone(&closed);
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            pipe(client, server, silenced).await;
                        }
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Ok(Self {
            addr,
            open,
            closed,
            accept,
        })
    }

    /// A proxy in front of the PostgreSQL server of `url`, and the same URL
    /// through it.
    pub async fn before(url: &str) -> anyhow::Result<(Self, String)> {
        let mut through = url::Url::parse(url)?;
        let host = through.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = through.port().unwrap_or(5432);
        let server = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{url} names no address"))?;
        let proxy = Self::start(server).await?;
        through
            .set_host(Some("127.0.0.1"))
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        through
            .set_port(Some(proxy.addr().port()))
            .map_err(|()| anyhow::anyhow!("{url} takes no port"))?;
        Ok((proxy, through.into()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences every connection open now; returns how many there were.
    pub fn silence(&self) -> usize {
        let mut silenced = 0;
        for conn in self.open.lock().unwrap().drain(..) {
            silenced += usize::from(conn.send(true).is_ok());
        }
        silenced
    }

    /// Connections whose client has closed them (or whose upstream failed).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes; once silenced, drops what the
/// client sends and reads nothing from the server.
async fn pipe(mut client: TcpStream, mut server: TcpStream, mut silenced: watch::Receiver<bool>) {
    let (mut from_client, mut from_server) = ([0u8; 8192], [0u8; 8192]);
    let mut watching = true;
    loop {
        let silent = *silenced.borrow_and_update();
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) if !silent => {
                    if server.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            },
            read = server.read(&mut from_server), if !silent => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client.write_all(&from_server[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Once the proxy is gone, the connection stays as it is.
            changed = silenced.changed(), if !silent && watching => watching = changed.is_ok(),
        }
    }
}
