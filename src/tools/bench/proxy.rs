//! A loopback TCP proxy in front of PostgreSQL that delays every byte by half a round trip in
//! each direction: the network between a service and a remote database, for `--db-rtt`.
//! (`tc netem` would do the same in a network namespace, but the kernel here has no netem
//! qdisc.) Order is kept: each direction is one queue, released at arrival + delay.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where the database listens.
#[derive(Debug, Clone)]
enum Upstream {
    Tcp(String),
    Unix(PathBuf),
}

/// A running proxy; dropping it stops accepting (open connections end with their peers).
///
/// Plain threads and blocking sockets, not tokio: tokio's timer has a 1 ms granularity, which
/// turned a 1 ms round trip into 3.5 ms; `thread::sleep` is precise to tens of microseconds.
/// Four threads per proxied connection, for the few dozen pooled connections of a run.
pub struct LatencyProxy {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    /// The connection string to use instead of the original.
    pub url: String,
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

impl LatencyProxy {
    /// Starts a proxy for the database `url` adding `rtt` to every round trip.
    pub async fn start(url: &str, rtt: Duration) -> Result<Self, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                Upstream::Unix(dir.join(format!(".s.PGSQL.{port}")))
            }
            Some(tokio_postgres::config::Host::Tcp(host)) => {
                Upstream::Tcp(format!("{host}:{port}"))
            }
            None => Upstream::Tcp(format!("localhost:{port}")),
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("bench-proxy".into())
            .spawn(move || accept(listener, upstream, rtt / 2, flag))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            stop,
            addr,
            url: rewrite(&config, addr),
        })
    }
}

/// The same user, password and database, reached through `addr`.
fn rewrite(config: &tokio_postgres::Config, addr: SocketAddr) -> String {
    let quote = crate::embedded::conninfo_quote;
    let mut url = format!("host={} port={}", addr.ip(), addr.port());
    if let Some(user) = config.get_user() {
        url.push_str(&format!(" user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        url.push_str(&format!(
            " password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(dbname) = config.get_dbname() {
        url.push_str(&format!(" dbname={}", quote(dbname)));
    }
    url
}

/// Both directions of one connection, as cloned blocking handles.
trait Duplex: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn close(&self);
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Duplex for UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

fn accept(listener: TcpListener, upstream: Upstream, delay: Duration, stop: Arc<AtomicBool>) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let _ = client.set_nodelay(true);
        let _ = match &upstream {
            Upstream::Tcp(addr) => TcpStream::connect(addr).and_then(|server| {
                server.set_nodelay(true)?;
                join(client, server, delay)
            }),
            Upstream::Unix(path) => UnixStream::connect(path).and_then(|s| join(client, s, delay)),
        };
    }
}

fn join(client: TcpStream, server: impl Duplex, delay: Duration) -> std::io::Result<()> {
    let (client_write, server_write) = (client.duplicate()?, server.duplicate()?);
    delayed(client, server_write, delay)?;
    delayed(server, client_write, delay)
}

/// Copies `from` to `to` on two threads, each chunk released `delay` after it was read (chunks
/// due together are written together).
fn delayed(mut from: impl Duplex, mut to: impl Duplex, delay: Duration) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::Builder::new()
        .name("bench-proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0
                    || tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                {
                    break;
                }
            }
        })?;
    std::thread::Builder::new()
        .name("bench-proxy-write".into())
        .spawn(move || {
            let mut pending: Option<(Instant, Vec<u8>)> = None;
            while let Some((at, mut chunk)) = pending.take().or_else(|| rx.recv().ok()) {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                // Everything else already due goes out in the same write, as a network would
                // put it in the same segments: one wake-up of the peer instead of one per chunk.
                while let Ok((next_at, next)) = rx.try_recv() {
                    if next_at > Instant::now() {
                        pending = Some((next_at, next));
                        break;
                    }
                    chunk.extend_from_slice(&next);
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            to.close();
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn echoes_through_the_proxy_after_the_round_trip() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let url = format!("host=127.0.0.1 port={port} user=u dbname=d");
        let proxy = LatencyProxy::start(&url, Duration::from_millis(40))
            .await
            .unwrap();
        let config: tokio_postgres::Config = proxy.url.parse().unwrap();
        assert_eq!(config.get_user(), Some("u"));
        let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
            panic!("tcp")
        };
        let mut s = tokio::net::TcpStream::connect((host.as_str(), config.get_ports()[0]))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(40));
    }
}
