//! A proxy in front of PostgreSQL that delays every byte by half a round trip in each
//! direction: the network between a service and a remote database, for `--db-rtt`. (`tc netem`
//! would do the same in a network namespace, but the kernel here has no netem qdisc.) Order is
//! kept: each direction is one queue, released at arrival + delay.
//!
//! It listens on a Unix socket, as the private database does, so that against a run without it
//! the only differences are the delay and the proxy's own hop, not TCP in place of a Unix
//! socket.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;

/// Where the database listens.
#[derive(Debug, Clone)]
enum Upstream {
    Tcp(String),
    Unix(PathBuf),
}

/// A running proxy; dropping it stops it (and closes the connections it carries).
///
/// One plain thread with `ppoll`, not tokio: tokio's timer has a 1 ms granularity, which turned
/// a 1 ms round trip into 3.5 ms, while `ppoll` sleeps to tens of microseconds. One thread for
/// every connection and both directions, because the proxy competes for the same two cores as
/// what it measures: the first version (four threads per connection, a channel and a sleep per
/// chunk) woke three threads per chunk and cost 20-50 % of the logins/s with no delay at all.
pub struct LatencyProxy {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    /// Holds the socket's directory.
    _dir: tempfile::TempDir,
    /// The connection string to use instead of the original.
    pub url: String,
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
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
        // The libpq convention: a directory and a port name the socket `.s.PGSQL.<port>`.
        let dir = tempfile::Builder::new()
            .prefix("agent-auth-proxy-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let socket = dir.path().join(format!(".s.PGSQL.{PORT}"));
        let listener = UnixListener::bind(&socket).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let url = rewrite(&config, dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("bench-proxy".into())
            .spawn(move || {
                // The default slack (50 µs) would be added to every release.
                let _ = nix::sys::prctl::set_timerslack(1_000);
                run(listener, upstream, rtt / 2, flag)
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            stop,
            socket,
            _dir: dir,
            url,
        })
    }
}

/// The port number in the proxy's socket name.
const PORT: u16 = 5432;

/// The same user, password and database, reached through the socket in `dir`.
fn rewrite(config: &tokio_postgres::Config, dir: &Path) -> String {
    let quote = agent_auth::embedded::conninfo_quote;
    let mut url = format!("host={} port={PORT}", quote(&dir.display().to_string()));
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

/// One end of a proxied connection, non-blocking.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn connect(upstream: &Upstream) -> std::io::Result<Self> {
        let socket = match upstream {
            Upstream::Tcp(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                Socket::Tcp(stream)
            }
            Upstream::Unix(path) => Socket::Unix(UnixStream::connect(path)?),
        };
        match &socket {
            Socket::Tcp(s) => s.set_nonblocking(true)?,
            Socket::Unix(s) => s.set_nonblocking(true)?,
        }
        Ok(socket)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }

    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => Read::read(&mut &*s, buf),
            Socket::Unix(s) => Read::read(&mut &*s, buf),
        }
    }

    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => Write::write(&mut &*s, buf),
            Socket::Unix(s) => Write::write(&mut &*s, buf),
        }
    }

    fn close_write(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

/// One direction of a connection: what was read, each chunk with the moment it is due, and what
/// is due but not yet written.
#[derive(Default)]
struct Direction {
    queue: VecDeque<(Instant, Vec<u8>)>,
    out: Vec<u8>,
    /// The reading side ended; the writing side is closed once everything is out.
    ended: bool,
    closed: bool,
}

impl Direction {
    /// Moves what is due into `out` (chunks due together leave in one write, as a network puts
    /// them in the same segments: one wake-up of the peer, not one per chunk), writes what it
    /// can, and closes the far side once the near one ended and everything is out.
    fn flush(&mut self, to: &Socket, now: Instant) -> std::io::Result<()> {
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            if let Some((_, chunk)) = self.queue.pop_front() {
                self.out.extend_from_slice(&chunk);
            }
        }
        while !self.out.is_empty() {
            match to.write(&self.out) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.ended && !self.closed && self.queue.is_empty() && self.out.is_empty() {
            to.close_write();
            self.closed = true;
        }
        Ok(())
    }

    /// Reads what `from` has, due `delay` from `now`.
    fn fill(&mut self, from: &Socket, buf: &mut [u8], due: Instant) -> std::io::Result<()> {
        if self.ended {
            return Ok(());
        }
        match from.read(buf) {
            Ok(0) => self.ended = true,
            Ok(n) => self.queue.push_back((due, buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }
}

/// A proxied connection: `up` carries the client's bytes to the database, `down` the answers.
struct Link {
    client: Socket,
    server: Socket,
    up: Direction,
    down: Direction,
}

fn run(listener: UnixListener, upstream: Upstream, delay: Duration, stop: Arc<AtomicBool>) {
    let mut links: Vec<Link> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        links.retain_mut(|link| {
            let flushed = link
                .up
                .flush(&link.server, now)
                .and_then(|()| link.down.flush(&link.client, now));
            flushed.is_ok() && !(link.up.closed && link.down.closed)
        });
        let wait = links
            .iter()
            .flat_map(|link| [link.up.next_due(), link.down.next_due()])
            .flatten()
            .min()
            .map_or(Duration::from_millis(200), |at| {
                at.saturating_duration_since(now)
            });
        // The listener, then every socket with something to wait for (a socket with nothing
        // would report a hang-up at once, for ever), and which link and end each one is.
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let mut ends = Vec::new();
        for (index, link) in links.iter().enumerate() {
            for (client, socket, reading, writing) in [
                (true, &link.client, &link.up, &link.down),
                (false, &link.server, &link.down, &link.up),
            ] {
                let mut events = PollFlags::empty();
                if !reading.ended {
                    events |= PollFlags::POLLIN;
                }
                if !writing.out.is_empty() {
                    events |= PollFlags::POLLOUT;
                }
                if !events.is_empty() {
                    fds.push(PollFd::new(socket.fd(), events));
                    ends.push((index, client));
                }
            }
        }
        if ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None).is_err() {
            continue;
        }
        let readable = |fd: &PollFd| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let accepting = readable(&fds[0]);
        let ready: Vec<(usize, bool)> = fds[1..]
            .iter()
            .zip(ends)
            .filter(|(fd, _)| readable(fd))
            .map(|(_, end)| end)
            .collect();
        drop(fds);
        let due = Instant::now() + delay;
        let mut broken = vec![false; links.len()];
        for (index, client) in ready {
            let Some(link) = links.get_mut(index) else {
                continue;
            };
            let read = if client {
                link.up.fill(&link.client, &mut buf, due)
            } else {
                link.down.fill(&link.server, &mut buf, due)
            };
            broken[index] |= read.is_err();
        }
        let mut broken = broken.into_iter();
        links.retain(|_| broken.next() != Some(true));
        if accepting {
            while let Ok((client, _)) = listener.accept() {
                let opened = client
                    .set_nonblocking(true)
                    .and_then(|()| Socket::connect(&upstream));
                if let Ok(server) = opened {
                    links.push(Link {
                        client: Socket::Unix(client),
                        server,
                        up: Direction::default(),
                        down: Direction::default(),
                    });
                }
            }
        }
    }
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
        let mut s = tokio::net::UnixStream::connect(&proxy.socket)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    /// Several connections at once, a megabyte each way, in order, and the end of one side
    /// reaches the other once everything before it is through.
    #[tokio::test]
    async fn carries_many_connections_in_order_to_the_end() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let url = format!("host=127.0.0.1 port={port} user=u dbname=d");
        let proxy = LatencyProxy::start(&url, Duration::from_millis(2))
            .await
            .unwrap();
        let config: tokio_postgres::Config = proxy.url.parse().unwrap();
        let tokio_postgres::config::Host::Unix(dir) = &config.get_hosts()[0] else {
            panic!("the proxy listens on a unix socket")
        };
        let socket = dir.join(format!(".s.PGSQL.{}", config.get_ports()[0]));
        assert_eq!(socket, proxy.socket);
        let mut calls = Vec::new();
        for seed in 0..8u8 {
            let socket = socket.clone();
            calls.push(tokio::spawn(async move {
                let sent: Vec<u8> = (0..1_000_000u32)
                    .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
                    .collect();
                let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let expected = sent.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut received = Vec::new();
                r.read_to_end(&mut received).await.unwrap();
                writer.await.unwrap();
                assert!(received == expected, "connection {seed} came back altered");
            }));
        }
        for call in calls {
            tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
