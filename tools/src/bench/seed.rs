//! The benchmark's data, generated inside PostgreSQL with `generate_series` (a million agents in
//! about a minute) on the owned schema.
//!
//! Three groups of instances:
//! - **history** (`--agents` N): N workspaces, each with `--builds` builds whose agents share
//!   the instance id and the name `main` (so N × builds agent rows; all but the latest are
//!   stale), plus 10 % template-import agents with the same instance ids, 5 % sub-agents and
//!   5 % deleted workspaces. The service, the raw statement and v2.32 log in with these.
//! - **single** (N/10, at least 100): one build, one agent: one candidate, for v2.33.1.
//! - **pair** (N/10, at least 100): one build, agents `main` and `dev` on the same instance:
//!   two candidates, selected by the name `dev`, for v2.33.1.

/// How many instances the single and pair groups hold.
pub fn side_group_size(agents: u64) -> u64 {
    (agents / 10).max(100)
}

/// Seeds all three groups and runs ANALYZE.
///
/// With `soft_delete_stale`, agents of older builds carry `deleted = true`, the invariant
/// Coder keeps since v2.33.4 (#25207); without it they stay live, as in older deployments.
pub async fn seed(
    client: &tokio_postgres::Client,
    agents: u64,
    builds: u32,
    soft_delete_stale: bool,
) -> Result<(), tokio_postgres::Error> {
    let builds = i64::from(builds.max(1));
    let agents = i64::try_from(agents).unwrap_or(i64::MAX);
    let side = i64::try_from(side_group_size(agents as u64)).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO workspaces (id, deleted) SELECT md5('w' || g)::uuid, g % 20 = 0 FROM generate_series(1, $1::bigint) g",
            &[&agents],
        )
        .await?;
    for build in 1..=builds {
        client
            .execute(
                "INSERT INTO provisioner_jobs (id, type) SELECT md5('j' || $2::bigint || '-' || g)::uuid, 'workspace_build' FROM generate_series(1, $1::bigint) g",
                &[&agents, &build],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_builds (workspace_id, build_number, job_id) \
                 SELECT md5('w' || g)::uuid, $2::int, md5('j' || $2::bigint || '-' || g)::uuid FROM generate_series(1, $1::bigint) g",
                &[&agents, &(build as i32)],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_resources (id, job_id) SELECT md5('r' || $2::bigint || '-' || g)::uuid, md5('j' || $2::bigint || '-' || g)::uuid FROM generate_series(1, $1::bigint) g",
                &[&agents, &build],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_agents (id, name, resource_id, auth_instance_id, deleted) \
                 SELECT md5('a' || $2::bigint || '-' || g)::uuid, 'main', md5('r' || $2::bigint || '-' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0'), $3::bool \
                 FROM generate_series(1, $1::bigint) g",
                &[&agents, &build, &(soft_delete_stale && build < builds)],
            )
            .await?;
    }
    // Sub-agents on the latest build (5 %), template-import agents with the same ids (10 %).
    client
        .execute(
            "INSERT INTO workspace_agents (name, resource_id, auth_instance_id, parent_id) \
             SELECT 'devcontainer', md5('r' || $2::bigint || '-' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0'), md5('a' || $2::bigint || '-' || g)::uuid \
             FROM generate_series(1, $1::bigint) g WHERE g % 20 = 1",
            &[&agents, &builds],
        )
        .await?;
    client
        .batch_execute(&format!(
            "INSERT INTO provisioner_jobs (id, type) SELECT md5('t' || g)::uuid, 'template_version_import' FROM generate_series(1, {agents}) g WHERE g % 10 = 2;
             INSERT INTO workspace_resources (id, job_id) SELECT md5('tr' || g)::uuid, md5('t' || g)::uuid FROM generate_series(1, {agents}) g WHERE g % 10 = 2;
             INSERT INTO workspace_agents (name, resource_id, auth_instance_id) SELECT 'main', md5('tr' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0') FROM generate_series(1, {agents}) g WHERE g % 10 = 2;"
        ))
        .await?;
    // The single and pair groups: one build each, fresh instances.
    for (group, names) in [("s", &["main"][..]), ("p", &["main", "dev"][..])] {
        client
            .batch_execute(&format!(
                "INSERT INTO workspaces (id) SELECT md5('{group}w' || g)::uuid FROM generate_series(1, {side}) g;
                 INSERT INTO provisioner_jobs (id, type) SELECT md5('{group}j' || g)::uuid, 'workspace_build' FROM generate_series(1, {side}) g;
                 INSERT INTO workspace_builds (workspace_id, build_number, job_id) SELECT md5('{group}w' || g)::uuid, 1, md5('{group}j' || g)::uuid FROM generate_series(1, {side}) g;
                 INSERT INTO workspace_resources (id, job_id) SELECT md5('{group}r' || g)::uuid, md5('{group}j' || g)::uuid FROM generate_series(1, {side}) g;"
            ))
            .await?;
        for name in names {
            client
                .batch_execute(&format!(
                    "INSERT INTO workspace_agents (name, resource_id, auth_instance_id) \
                     SELECT '{name}', md5('{group}r' || g)::uuid, '{}' || lpad(to_hex(g), 16, '0') FROM generate_series(1, {side}) g",
                    group_prefix(group)
                ))
                .await?;
        }
    }
    client.batch_execute("ANALYZE").await
}

fn group_prefix(group: &str) -> &'static str {
    if group == "s" { "i-s" } else { "i-p" }
}

/// Up to `sample` instance ids of live history agents (workspace not deleted), spread over the
/// whole range with a prime stride, so that every kind of history (template-import twins every
/// 10th, sub-agents every 20th) shows up in its share rather than by the sample's alignment.
pub fn history_instances(agents: u64, sample: usize) -> Vec<String> {
    const STRIDE: u64 = 7919;
    let agents = agents.max(1);
    let mut seen = std::collections::BTreeSet::new();
    (0..agents)
        .map(|i| 1 + (i * STRIDE) % agents)
        .filter(|g| g % 20 != 0)
        .filter(|g| seen.insert(*g))
        .take(sample)
        .map(|g| format!("i-{g:017x}"))
        .collect()
}

/// Up to `sample` instance ids of the single (one candidate) group.
pub fn single_instances(agents: u64, sample: usize) -> Vec<String> {
    side_instances("i-s", agents, sample)
}

/// Up to `sample` instance ids of the pair (two candidates, log in as `dev`) group.
pub fn pair_instances(agents: u64, sample: usize) -> Vec<String> {
    side_instances("i-p", agents, sample)
}

fn side_instances(prefix: &str, agents: u64, sample: usize) -> Vec<String> {
    let side = side_group_size(agents);
    let step = (side / sample.max(1) as u64).max(1);
    (1..=side)
        .step_by(step as usize)
        .take(sample)
        .map(|g| format!("{prefix}{g:016x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_skip_deleted_workspaces_and_match_the_generated_ids() {
        let ids = history_instances(10_000, 1000);
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 19 && id.starts_with("i-")));
        let index = |id: &String| u64::from_str_radix(&id[2..], 16).unwrap();
        assert!(
            ids.iter().all(|id| index(id) % 20 != 0),
            "no deleted workspace"
        );
        // Every residue of 10 (template-import twins at 2) is represented.
        let residues: std::collections::BTreeSet<u64> =
            ids.iter().map(|id| index(id) % 10).collect();
        assert_eq!(residues.len(), 10);
        assert_eq!(
            history_instances(300, 1000).len(),
            285,
            "all live ones of a small set"
        );
        assert_eq!(single_instances(50, 1000).len(), 100, "at least 100");
        assert_eq!(pair_instances(50_000, 3)[0], "i-p0000000000000001");
    }
}
