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
