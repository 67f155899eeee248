//! Slow, idle, half-open and oversized connections on every listener, with real sockets: each
//! is cut off by its timeout or limit, and logins keep working.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Short timeouts so the tests take seconds.
fn short(c: &mut agent_auth::config::Settings) {
    c.listeners.http_listen = Some(value("127.0.0.1:0"));
    c.limits.conn_handshake_timeout = value("1s");
    c.limits.conn_idle_timeout = value("2s");
    c.limits.http_header_read_timeout = value("1s");
    c.limits.http_body_read_timeout = value("1s");
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (EOF or reset), or `limit` passes; returns what was read and
/// whether the connection closed in time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_trickling_header_bytes_are_cut_off_and_logins_go_on() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, short).await;
    let http = addr(app.http_url.as_deref().unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&http).await.unwrap();
            stream
                .write_all(b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\n")
                .await
                .unwrap();
            // One header byte every 100 ms, for up to 10 s.
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b"x").await.is_err() {
                    return true;
                }
                let mut probe = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => {
                        // hyper answers 408 before closing; the connection closes next.
                        return read_until_closed(&mut stream, Duration::from_secs(2))
                            .await
                            .1;
                    }
                    Err(_) => {}
                }
            }
            false
        }));
    }
    // Logins go on meanwhile, over gRPC and HTTP.
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let body = serde_json::json!({"document": RECORDED_DOCUMENT, "signature": RECORDED_SIGNATURE});
    let (status, _, _) = http_post(
        &format!(
            "{}/api/v2/workspaceagents/aws-instance-identity",
            app.http_url.as_deref().unwrap()
        ),
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    for task in tasks {
        assert!(task.await.unwrap(), "a trickling connection stayed open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, short).await;
    let mut stream = TcpStream::connect(addr(app.http_url.as_deref().unwrap()))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"document\":",
        )
        .await
        .unwrap();
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(closed, "the connection stayed open");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("Request body was not received in time."),
        "{response}"
    );
}

#[tokio::test]
async fn a_content_length_over_64_kib_gets_413_at_once_without_100_continue() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, short).await;
    let mut stream = TcpStream::connect(addr(app.http_url.as_deref().unwrap()))
        .await
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 65537\r\n\r\n",
        )
        .await
        .unwrap();
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(
        response.contains("Request body must be at most 65536 bytes."),
        "{response}"
    );
    assert!(closed);
    // "At once": well before the 1 s body timeout could have been involved.
    assert!(started.elapsed() < Duration::from_millis(900));
    // 65,536 bytes exactly is within the limit (a JSON error, not 413).
    let mut stream = TcpStream::connect(addr(app.http_url.as_deref().unwrap()))
        .await
        .unwrap();
    let mut request = b"POST /api/v2/workspaceagents/aws-instance-identity HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 65536\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b' ', 65536));
    stream.write_all(&request).await.unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400"));
}

#[tokio::test]
async fn a_partial_http2_preface_and_a_silent_connection_are_closed_at_the_handshake_timeout() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, short).await;
    let grpc = addr(&app.grpc_url);
    let http = addr(app.http_url.as_deref().unwrap());
    let admin = addr(&app.admin_url);
    let started = Instant::now();
    let mut partial = TcpStream::connect(&grpc).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut silent: Vec<TcpStream> = Vec::new();
    for target in [&grpc, &http, &admin] {
        silent.push(TcpStream::connect(target).await.unwrap());
    }
    assert!(
        read_until_closed(&mut partial, Duration::from_secs(5))
            .await
            .1
    );
    for stream in &mut silent {
        assert!(read_until_closed(stream, Duration::from_secs(5)).await.1);
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    let (_, metrics) = app.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "agent_auth_connection_timeouts_total",
            &[("listener", "grpc"), ("timeout", "handshake")]
        ),
        Some(2.0)
    );
}

/// After a complete request, a keep-alive HTTP connection that sends nothing more is closed at
/// the idle timeout; an HTTP/2 peer that stops answering pings is closed by keepalive, long
/// before its idle timeout.
#[tokio::test]
async fn idle_keep_alive_and_unresponsive_http2_connections_are_closed() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |c| {
        short(c);
        c.limits.conn_idle_timeout = value("1s");
    })
    .await;
    let started = Instant::now();
    // HTTP/1.1 keep-alive: one request answered, then silence.
    let mut admin = TcpStream::connect(addr(&app.admin_url)).await.unwrap();
    admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (response, closed) = read_until_closed(&mut admin, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(4));
    let pinging = TestServer::in_process(&db, |c| {
        short(c);
        c.limits.conn_idle_timeout = value("60s");
        c.limits.grpc_keepalive_interval = value("300ms");
        c.limits.grpc_keepalive_timeout = value("300ms");
    })
    .await;
    let started = Instant::now();
    // HTTP/2: the preface and an empty SETTINGS frame, then never a byte (no PING ACK).
    let mut h2 = TcpStream::connect(addr(&pinging.grpc_url)).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(read_until_closed(&mut h2, Duration::from_secs(5)).await.1);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_connection_with_no_traffic_at_all_is_closed_at_the_idle_timeout() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |c| {
        short(c);
        // The handshake is long; only the idle timeout can close it.
        c.limits.conn_handshake_timeout = value("60s");
        c.limits.conn_idle_timeout = value("1s");
    })
    .await;
    let mut stream = TcpStream::connect(addr(&app.grpc_url)).await.unwrap();
    // 10 of the 24 preface bytes: the handshake deadline still stands, the idle one fires.
    stream.write_all(b"PRI * HTTP").await.unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .1
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, metrics) = app.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "agent_auth_connection_timeouts_total",
            &[("listener", "grpc"), ("timeout", "idle")]
        ),
        Some(1.0)
    );
}

/// The exhaustion: connections beyond the cap never take a caller's place. The idlest
/// connections are closed first to make room, so of 300 that never send a byte, 250 are closed
/// at once (descriptors stay available), an established channel (told goodbye, it reconnects) and the
/// admin listener keep working, and a new connection logs in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_the_service_recovers() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| {
        short(c);
        // Far past the reads below, so only evictions and refusals close a connection there
        // (a loaded machine may take a while to open the 300).
        c.limits.conn_handshake_timeout = value("10s");
        c.limits.conn_idle_timeout = value("10s");
        c.limits.max_connections = Some(50);
        // One test address: the per-source share has its own test.
        c.limits.max_connections_per_source = Some(50);
    })
    .await;
    let established = app.channel().await;
    let login = || {
        agent_auth::client::authenticate(
            established.clone(),
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
    };
    success(login().await);
    let grpc = addr(&app.grpc_url);
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(&grpc).await.unwrap());
    }
    // The established channel, idle since before the flood, is the idlest (the oldest sign of
    // life) and makes room first: told goodbye (GOAWAY), it reconnects for its next call. So 50
    // bare connections fit; the other 250 (the oldest bare ones, evicted, or newcomers with no
    // place) are closed at once.
    let mut reads = tokio::task::JoinSet::new();
    for mut stream in flood {
        reads.spawn(async move {
            let closed = read_until_closed(&mut stream, Duration::from_millis(3000))
                .await
                .1;
            (closed, stream)
        });
    }
    let mut closed_at_once = 0;
    let mut held = Vec::new();
    while let Some(outcome) = reads.join_next().await {
        let (closed, stream) = outcome.unwrap();
        if closed {
            closed_at_once += 1;
        }
        held.push(stream);
    }
    assert_eq!(closed_at_once, 250);
    success(login().await);
    assert_eq!(app.admin_get("/readyz").await.0, 200);
    let (_, metrics) = app.admin_get("/metrics").await;
    let made_room = metric_sum(
        &metrics,
        "agent_auth_connections_refused_total",
        &[("listener", "grpc")],
    )
    .unwrap_or(0.0)
        + metric_sum(
            &metrics,
            "agent_auth_connections_evicted_total",
            &[("listener", "grpc")],
        )
        .unwrap_or(0.0);
    // The 250, the established channel, and the bare one its reconnection made room by.
    assert_eq!(made_room, 252.0);
    // A new caller gets in at once: a bare connection makes room for it.
    assert!(logs_in_over_a_new_connection(&app.grpc_url, Duration::from_secs(1)).await);
    drop(held);
}

/// gRPC: a request message over 256 KiB is refused by the transport (never INTERNAL) before it
/// is buffered; one under it is decoded (and then judged by the field limit).
#[tokio::test]
async fn grpc_messages_over_the_limit_are_refused_and_streams_per_connection_are_capped() {
    let db = TestDb::migrated().await;
    let app =
        TestServer::in_process(&db, |c| c.limits.grpc_max_concurrent_streams = value(7)).await;
    let document = "x".repeat(300 * 1024);
    let (code, _, _) = failure(app.authenticate(aws_request(&document, "c2ln", "")).await);
    assert!(
        matches!(
            code,
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{code:?}"
    );
    let document = "x".repeat(200 * 1024);
    let (code, reason, _) = failure(app.authenticate(aws_request(&document, "c2ln", "")).await);
    assert_eq!(
        (code, reason.as_str()),
        (tonic::Code::InvalidArgument, "MALFORMED_REQUEST")
    );
    // The server advertises its stream cap in its SETTINGS.
    let tcp = TcpStream::connect(addr(&app.grpc_url)).await.unwrap();
    let (_client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connection.max_concurrent_send_streams() != 7 {
        tokio::select! {
            _ = &mut connection => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    assert_eq!(connection.max_concurrent_send_streams(), 7);
}

/// With the descriptors exhausted (a low hard limit and a cap set above it), accept errors back
/// off instead of spinning: one warning per run of errors, and service resumes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_and_the_server_recovers() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let (grpc, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(env!("CARGO_BIN_EXE_agent-auth"))
        .args(["serve", "--postgres-url", &db.url, "--log-format", "text"])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args([
            "--max-connections",
            "1000",
            "--conn-handshake-timeout",
            "2s",
        ])
        .args([
            "--gcp-jwks",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gcp/empty-jwks.json"
            ),
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(30), async || {
        http_get(&format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .0
            == 200
    })
    .await;
    assert!(ready);
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(stream) = TcpStream::connect(format!("127.0.0.1:{grpc}")).await {
            flood.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(flood);
    let url = format!("http://127.0.0.1:{grpc}");
    let recovered = eventually(Duration::from_secs(10), async || {
        logs_in_over_a_new_connection(&url, Duration::from_secs(1)).await
    })
    .await;
    assert!(recovered, "logins did not resume after the flood");
    let pid = child.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    let _ = child.wait().await;
    let warnings = log.matches("accept failed; backing off").count();
    assert!(warnings >= 1, "descriptors were never exhausted:\n{log}");
    assert!(warnings <= 2, "accept errors were not backed off:\n{log}");
}

/// The third review's finding 1: with the cap full of connections that had sent their preface
/// (or made a request on the admin listener), a newcomer, which has sent nothing yet, was the
/// idlest and evicted itself: nobody new got in. 4 addresses × 16 ping-answering connections
/// fill a cap of 64; callers from a fifth address log in, and fresh probes answer while two
/// addresses hold every admin connection after a request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cap_full_of_greeted_connections_a_newcomer_still_gets_in() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let server = TestServer::binary(
        &db,
        &[
            "--max-connections",
            "64",
            "--admin-max-connections",
            "16",
            "--log-level",
            "warn",
        ],
    )
    .await;
    let grpc: u16 = server.grpc_url.rsplit(':').next().unwrap().parse().unwrap();
    let mut held = tokio::task::JoinSet::new();
    for index in 0..64u8 {
        let stream = connect_from(2 + index % 4, grpc).await.unwrap();
        let answerer = PingAnswerer::greet(stream).await.unwrap();
        held.spawn(answerer.run());
    }
    let full = eventually(Duration::from_secs(5), async || {
        metric(
            &server,
            "agent_auth_connections_open",
            &[("listener", "grpc")],
        )
        .await
            >= 64.0
    });
    assert!(full.await, "the cap never filled");
    for caller in 0..5 {
        assert!(
            logs_in_over_a_new_connection(&server.grpc_url, Duration::from_secs(3)).await,
            "caller {caller} with the cap full of greeted connections"
        );
    }

    // The admin listener: two addresses hold its whole cap with one request made on each.
    let admin: u16 = server
        .admin_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut probes_held = Vec::new();
    for index in 0..16u8 {
        let mut stream = connect_from(2 + index % 2, admin).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 64];
        let _ = stream.read(&mut answer).await;
        probes_held.push(stream);
    }
    for probe in 0..3 {
        let (status, _) = http_get(&format!("{}/healthz", server.admin_url)).await;
        assert_eq!(status, 200, "fresh probe {probe} with the admin cap held");
    }
    held.abort_all();
    server.terminate().await;
}
