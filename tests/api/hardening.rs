//! Defects an adversarial review found, each kept closed by a test: the embedded cluster's
//! data dir and symlinks, outbound address classification.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};

fn options(dir: &std::path::Path) -> EmbeddedOptions {
    let mut options = EmbeddedOptions::new(dir);
    options.ephemeral = true;
    options
}

/// As root, `serve`'s embedded cluster hands its directories to the `postgres` account: a
/// planted symlink must never make it hand over (or chmod, or append to) anything else.
#[tokio::test]
async fn the_embedded_data_dir_never_follows_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(outside.path()).unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();

    for (name, target) in [
        ("run", outside.path().to_path_buf()),
        ("pgdata", outside.path().to_path_buf()),
        ("postgres.log", victim.clone()),
    ] {
        let data = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&target, data.path().join(name)).unwrap();
        let error = match EmbeddedPostgres::start(options(data.path())).await {
            Ok(cluster) => {
                let _ = cluster.stop().await;
                panic!("{name} as a symlink was followed");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("symbolic link") && error.contains(name),
            "{name}: {error}"
        );
    }
    let after = std::fs::metadata(outside.path()).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode() & 0o7777),
        (before.uid(), before.gid(), 0o755)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    // A clean start keeps the top level ours: only traversable by the cluster's account.
    let data = tempfile::tempdir().unwrap();
    let cluster = EmbeddedPostgres::start(options(data.path())).await.unwrap();
    let top = std::fs::metadata(data.path()).unwrap();
    let root = nix::unistd::geteuid().is_root();
    assert_eq!(top.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(top.mode() & 0o777, if root { 0o711 } else { 0o700 });
    let pgdata = std::fs::metadata(data.path().join("pgdata")).unwrap();
    assert_eq!(pgdata.mode() & 0o777, 0o700);
    if root {
        let postgres = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert_eq!(pgdata.uid(), postgres);
    }
    cluster.stop().await.unwrap();
}

/// A CA and a server certificate for `db.internal` only, written for PostgreSQL.
struct DbPki {
    dir: tempfile::TempDir,
}

impl DbPki {
    fn new() -> Self {
        let ca = crate::pki::Ca::new("Test DB CA");
        let (cert, key) = ca.issue(&crate::pki::Spec {
            dns: &["db.internal"],
            ..crate::pki::Spec::new("db.internal")
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.to_pem().unwrap()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        let key_path = dir.path().join("server.key");
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            for file in ["server.pem", "server.key"] {
                std::os::unix::fs::chown(
                    dir.path().join(file),
                    Some(postgres.uid.as_raw()),
                    Some(postgres.gid.as_raw()),
                )
                .unwrap();
            }
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// `sslmode` in the URL or key=value string means what it means to libpq, against a real
/// PostgreSQL with TLS on loopback: `verify-full` checks the chain and the name, `verify-ca`
/// the chain only, `require` encrypts, `disable` does not, and the verifying modes refuse to
/// run without a CA.
#[tokio::test]
async fn sslmode_and_sslrootcert_are_honoured_against_a_tls_postgres() {
    let pki = DbPki::new();
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = options(data.path());
    options.port = port;
    options.loopback_tcp = true;
    options.settings = vec![
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), pki.path("server.pem")),
        ("ssl_key_file".into(), pki.path("server.key")),
    ];
    let cluster = EmbeddedPostgres::start(options).await.unwrap();
    let other_ca = DbPki::new();
    // Connects as the pool would, and reports whether the session is encrypted.
    let connect = async |url: &str| -> Result<bool, String> {
        let url = agent_auth::store::PostgresUrl::parse(url)?;
        let target = agent_auth::store::tls::target(&url, None).map_err(|e| e.to_string())?;
        let (client, connection) = target
            .config
            .connect(target.tls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    };
    let ca = pki.path("ca.pem");
    let by_ip = format!("postgres://agent_auth@127.0.0.1:{port}/postgres");
    let by_name =
        format!("host=db.internal hostaddr=127.0.0.1 port={port} user=agent_auth dbname=postgres");
    // verify-full: right CA and name.
    assert_eq!(
        connect(&format!("{by_name} sslmode=verify-full sslrootcert={ca}")).await,
        Ok(true)
    );
    // verify-full: the name does not match 127.0.0.1.
    assert!(
        connect(&format!("{by_ip}?sslmode=verify-full&sslrootcert={ca}"))
            .await
            .is_err()
    );
    // verify-ca: the chain is enough.
    assert_eq!(
        connect(&format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca}")).await,
        Ok(true)
    );
    // Another CA fails both verifying modes.
    let wrong = other_ca.path("ca.pem");
    for mode in ["verify-ca", "verify-full"] {
        assert!(
            connect(&format!("{by_name} sslmode={mode} sslrootcert={wrong}"))
                .await
                .is_err(),
            "{mode}"
        );
    }
    // require encrypts without verifying; disable does not encrypt.
    assert_eq!(connect(&format!("{by_ip}?sslmode=require")).await, Ok(true));
    assert_eq!(
        connect(&format!("{by_ip}?sslmode=disable")).await,
        Ok(false)
    );
    // The verifying modes need a CA.
    let error = connect(&format!("{by_ip}?sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(error.contains("sslrootcert"), "{error}");
    cluster.stop().await.unwrap();
}

/// The embedded cluster listens on its unix socket only, whatever extra settings it is given.
#[tokio::test]
async fn the_embedded_cluster_never_listens_on_tcp() {
    let dir = crate::helpers::reachable_tempdir();
    let mut options = agent_auth::embedded::EmbeddedOptions::new(dir.path());
    options.ephemeral = true;
    options.settings = vec![("listen_addresses".into(), "127.0.0.1".into())];
    let cluster = agent_auth::embedded::EmbeddedPostgres::start(options)
        .await
        .unwrap_or_else(|e| panic!("private cluster: {e}"));
    let client = cluster.admin_client().await.unwrap();
    let listen: String = client
        .query_one("SHOW listen_addresses", &[])
        .await
        .unwrap()
        .get(0);
    cluster.stop().await.unwrap();
    assert_eq!(listen, "", "the embedded cluster listens on TCP");
}
