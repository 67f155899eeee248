//! Unauthenticated peers that try to make the server hold memory: the shapes the third review
//! found, each from one or several loopback source addresses (127.0.0.2 and up; the legitimate
//! callers of a test come from 127.0.0.1). Every attacker is bounded in count and is dropped
//! with what it holds.

use super::*;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Raises this process's open-file limit (a test holding thousands of connections).
pub fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < 65536
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
    }
}

/// A TCP connection to `port` on 127.0.0.1 from `source` (127.0.0.`source`); `None` when the
/// server refused or closed it at once.
pub async fn connect_from(source: u8, port: u16) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(([127, 0, 0, source], 0).into()).ok()?;
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        socket.connect(([127, 0, 0, 1], port).into()),
    )
    .await
    .ok()?
    .ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub const HTTP2_GREETING: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// An HTTP/2 client that only does what a held connection needs: the preface, an empty
/// SETTINGS, and an answer to every PING. It never opens a stream. `run` reads frames until
/// the server closes the connection and tells whether a GOAWAY came first.
pub struct PingAnswerer {
    stream: TcpStream,
}

impl PingAnswerer {
    pub async fn connect(address: &str) -> Self {
        let stream = TcpStream::connect(address).await.unwrap();
        Self::greet(stream).await.unwrap()
    }

    /// Greets the server on `stream`; `None` if it closed it already.
    pub async fn greet(mut stream: TcpStream) -> Option<Self> {
        stream.write_all(HTTP2_GREETING).await.ok()?;
        Some(Self { stream })
    }

    /// (pings answered, a GOAWAY received) once the server closed the connection.
    pub async fn run(mut self) -> (usize, bool) {
        use tokio::io::AsyncReadExt;
        let (mut pings, mut goaway) = (0, false);
        loop {
            let mut header = [0u8; 9];
            if self.stream.read_exact(&mut header).await.is_err() {
                return (pings, goaway);
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            if self.stream.read_exact(&mut payload).await.is_err() {
                return (pings, goaway);
            }
            match (header[3], header[4]) {
                // SETTINGS (not an ACK): acknowledge.
                (4, 0) => {
                    let _ = self.stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                }
                // PING (not an ACK): answer with the same payload.
                (6, 0) => {
                    pings += 1;
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    let _ = self.stream.write_all(&ack).await;
                }
                (7, _) => goaway = true,
                _ => {}
            }
        }
    }
}

/// The shapes of the third review's memory attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// TCP connections that send nothing.
    Bare,
    /// HTTP/2 connections that greet, answer pings and send a health check now and then.
    RareRequests,
    /// HTTP/2 connections that answer pings and never open a stream.
    PingAnswering,
    /// 100 streams per connection, each a 256 KiB login message sent but for its last bytes.
    UnfinishedMessages,
    /// Health and reflection messages announcing 4 MB, sent as far as the server lets them.
    OversizedHealth,
    /// Agent HTTP requests announcing a 64 KiB body and sending all but its last bytes.
    UnfinishedBodies,
}

/// A gRPC message prefix announcing `length` bytes.
fn grpc_prefix(length: u32) -> [u8; 5] {
    let [a, b, c, d] = length.to_be_bytes();
    [0, a, b, c, d]
}

/// An HTTP/2 client from `source` to `port` (the h2 crate: it answers pings and SETTINGS
/// itself); `None` when the server refused or closed the connection.
async fn h2_from(source: u8, port: u16) -> Option<h2::client::SendRequest<Bytes>> {
    let stream = connect_from(source, port).await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(stream)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// A gRPC POST to `path` whose body the caller sends.
fn grpc_post(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://attack{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Opens `streams` streams on `client`, each sending `prefix` then `sent` bytes of its message,
/// and holds them open; returns what must stay alive.
async fn unfinished_streams(
    client: h2::client::SendRequest<Bytes>,
    paths: &[&str],
    streams: usize,
    announced: u32,
    sent: usize,
) -> Vec<(h2::SendStream<Bytes>, h2::client::ResponseFuture)> {
    let mut held = Vec::new();
    let mut client = client;
    // One buffer shared by every stream (the attacker's memory is not what is measured).
    let mut data = grpc_prefix(announced).to_vec();
    data.resize(5 + sent, 0x41);
    let data = Bytes::from(data);
    for index in 0..streams {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let Ok((response, mut body)) =
            client.send_request(grpc_post(paths[index % paths.len()]), false)
        else {
            break;
        };
        if body.send_data(data.clone(), false).is_err() {
            break;
        }
        held.push((body, response));
    }
    held
}

/// One attacker connection of `shape` from `source` to the server's ports; it holds what it
/// opened until dropped (the task is aborted).
async fn attacker(shape: Shape, source: u8, grpc: u16, http: Option<u16>) {
    match shape {
        Shape::Bare => {
            let _held = connect_from(source, grpc).await;
            std::future::pending::<()>().await
        }
        Shape::PingAnswering => {
            if let Some(stream) = connect_from(source, grpc).await
                && let Some(answerer) = PingAnswerer::greet(stream).await
            {
                answerer.run().await;
            }
        }
        Shape::RareRequests => {
            let Some(mut client) = h2_from(source, grpc).await else {
                return;
            };
            loop {
                let Ok(ready) = client.ready().await else {
                    return;
                };
                client = ready;
                let Ok((response, mut body)) =
                    client.send_request(grpc_post("/grpc.health.v1.Health/Check"), false)
                else {
                    return;
                };
                let _ = body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true);
                let _ = response.await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Shape::UnfinishedMessages => {
            let Some(client) = h2_from(source, grpc).await else {
                return;
            };
            let _held = unfinished_streams(
                client,
                &["/agentauth.v1.AgentAuth/Authenticate"],
                100,
                256 * 1024 - 5,
                250 * 1024,
            )
            .await;
            std::future::pending::<()>().await
        }
        Shape::OversizedHealth => {
            let Some(client) = h2_from(source, grpc).await else {
                return;
            };
            let _held = unfinished_streams(
                client,
                &[
                    "/grpc.health.v1.Health/Check",
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                ],
                100,
                4_000_000,
                64 * 1024,
            )
            .await;
            std::future::pending::<()>().await
        }
        Shape::UnfinishedBodies => {
            let Some(port) = http else {
                panic!("unfinished bodies need the agent HTTP listener");
            };
            let Some(mut stream) = connect_from(source, port).await else {
                return;
            };
            let mut request = b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\n\
                host: attack\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n"
                .to_vec();
            request.resize(request.len() + 60 * 1024, b' ');
            let _ = stream.write_all(&request).await;
            std::future::pending::<()>().await
        }
    }
}

/// `count` attackers of `shape`, spread over the `sources`, opened in turn; dropped (aborted)
/// together.
pub async fn launch(
    shape: Shape,
    sources: &[u8],
    count: usize,
    grpc: u16,
    http: Option<u16>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for index in 0..count {
        let source = sources[index % sources.len()];
        set.spawn(attacker(shape, source, grpc, http));
        // Opened in waves, so that the accept queue is not the one refusing them.
        if index % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    set
}
