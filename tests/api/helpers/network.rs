//! The network misbehaving on purpose: a proxy that black-holes the connections it has.

use super::*;

/// A TCP proxy on loopback to a cluster's unix socket that can stop forwarding on the
/// connections it has (a black hole: the peer still acknowledges, nothing comes back) while
/// new connections still work.
pub struct BlackHoleProxy {
    pub url: String,
    /// Connections numbered below this forward nothing any more.
    cutoff: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Forwards `from` to `to` until the connection `number` falls below `cutoff`; then holds both
/// open and silent.
async fn pump(
    number: u64,
    cutoff: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if number < cutoff.load(std::sync::atomic::Ordering::SeqCst) {
            return std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl BlackHoleProxy {
    pub async fn start(db: &TestDb) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let field = |key: &str| {
            db.url
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap()
        };
        let socket = format!("{}/.s.PGSQL.{}", field("host"), field("port"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!(
            "host=127.0.0.1 port={port} user={} dbname={} sslmode=disable",
            field("user"),
            field("dbname")
        );
        let cutoff = std::sync::Arc::new(AtomicU64::new(0));
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let task = {
            let (cutoff, accepted) = (cutoff.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(number, cutoff.clone(), client_read, server_write));
                    tokio::spawn(pump(number, cutoff.clone(), server_read, client_write));
                }
            })
        };
        Self {
            url,
            cutoff,
            accepted,
            task,
        }
    }

    /// From now on, every connection, opened so far or later, forwards nothing.
    pub fn black_hole_all(&self) {
        self.cutoff
            .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, every connection opened so far forwards nothing.
    pub fn black_hole_existing(&self) {
        use std::sync::atomic::Ordering;
        self.cutoff
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
