//! The store contract: what every [`Store`] does, one suite run against each
//! backend — `sqlite::…` on a temporary file, `postgres::…` on a real
//! PostgreSQL server these tests start themselves
//! ([`authproxy_test_support::TempPostgres`], one server for this binary, a
//! fresh database per test). No mock stands in for either database, and
//! nothing is skipped: without PostgreSQL the `postgres::` tests fail.
//!
//! Each contract is an async fn taking a [`Backend`], which opens stores on
//! one database: the first issuer node, and as many other nodes as the
//! contract needs (on SQLite, other pools on the same file). Checks that
//! only mean something on PostgreSQL (migrating nodes, row locks across
//! nodes, what an unreachable server's error shows) follow the suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;

use authproxy_core::keys::SigningKey;
use authproxy_core::{Environment, ScopeSet, WorkloadId};
use authproxy_issuer::secret::{ADMIN_TOKEN_PREFIX, Secret, WORKLOAD_CREDENTIAL_PREFIX};
use authproxy_issuer::store::{
    BootstrapKind, GrantRecord, PostgresStore, PostgresUrl, RootKeyRecord, RootKeyState,
    SqliteStore, Store, SyncApplied, SyncChanges,
};
use authproxy_test_support::fresh_database;
use tokio::sync::Barrier;

/// Where a contract's stores live.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Self {
        Self::Postgres(fresh_database())
    }

    /// A store on this backend's database: the first node, or one more.
    async fn node(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join("issuer.db"))
                    .await
                    .unwrap(),
            ),
            Self::Postgres(url) => Arc::new(
                PostgresStore::open(&PostgresUrl::parse(url).unwrap())
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Runs each contract once per backend, as `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::postgres()).await;
                }
            )*
        }
    };
}

contract!(
    root_keys_of_every_node_are_published_and_each_is_recorded_once,
    a_root_key_recorded_by_many_at_once_is_recorded_once,
    admin_tokens_are_added_once_and_valid_on_every_node,
    an_unknown_environment_is_empty_at_version_zero,
    a_sync_is_written_whole_and_moves_the_version_on,
    a_sync_planned_on_a_stale_version_writes_nothing,
    a_sync_that_fails_halfway_writes_nothing,
    removed_workloads_and_identities_are_kept_and_can_come_back,
    environments_are_separate,
    racing_syncs_planned_on_one_version_apply_once,
    at_most_one_sync_applies_per_version_across_nodes,
    a_grant_id_is_recorded_once,
);

fn env(name: &str) -> Environment {
    Environment::parse(name).unwrap()
}

fn wl(id: &str) -> WorkloadId {
    id.parse().unwrap()
}

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).unwrap()
}

fn credential() -> Secret {
    Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap()
}

/// A sync of `environment` at `version` writing nothing yet.
fn changes(environment: &str, version: i64) -> SyncChanges {
    SyncChanges {
        environment: env(environment),
        expected_version: version,
        create_identities: Vec::new(),
        update_identities: Vec::new(),
        remove_identities: Vec::new(),
        link_workloads: Vec::new(),
        remove_workloads: Vec::new(),
        new_credentials: Vec::new(),
    }
}

/// A first sync of `workload` (its own identity, named after it, and a
/// credential): the changes and the credential.
fn create(environment: &str, version: i64, workload: &str, ceiling: &str) -> (SyncChanges, Secret) {
    let secret = credential();
    let mut c = changes(environment, version);
    c.create_identities.push((workload.into(), scopes(ceiling)));
    c.link_workloads.push((wl(workload), workload.into()));
    c.new_credentials.push((workload.into(), secret.hash()));
    (c, secret)
}

fn root_key(node: &str, created_at: u64) -> (SigningKey, RootKeyRecord) {
    let key = SigningKey::generate().unwrap();
    let record = RootKeyRecord {
        node: node.into(),
        public_key: key.public().clone(),
        state: RootKeyState::Active,
        created_at,
    };
    (key, record)
}

async fn root_keys_of_every_node_are_published_and_each_is_recorded_once(b: Backend) {
    let (n1, n2) = (b.node().await, b.node().await);
    let (k1, first) = root_key("n1", 5);
    n1.record_root_key(&first).await.unwrap();
    // A restart records it again, later: nothing changes.
    let again = RootKeyRecord {
        created_at: 50,
        ..first.clone()
    };
    n1.record_root_key(&again).await.unwrap();
    let (k2, second) = root_key("n2", 6);
    n2.record_root_key(&second).await.unwrap();

    for node in [&n1, &n2] {
        let live = node.live_root_keys(7).await.unwrap();
        let seen: Vec<(&str, &str, u64)> = live
            .iter()
            .map(|k| (k.node.as_str(), k.public_key.thumbprint(), k.created_at))
            .collect();
        assert_eq!(
            seen,
            [
                ("n1", k1.public().thumbprint(), 5),
                ("n2", k2.public().thumbprint(), 6)
            ]
        );
        assert!(live.iter().all(|k| k.state == RootKeyState::Active));
    }
}

async fn a_root_key_recorded_by_many_at_once_is_recorded_once(b: Backend) {
    let nodes = [b.node().await, b.node().await];
    let (_, record) = root_key("n1", 5);
    let record = Arc::new(record);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let node = Arc::clone(&nodes[i % 2]);
        let record = Arc::clone(&record);
        tasks.push(tokio::spawn(
            async move { node.record_root_key(&record).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(nodes[0].live_root_keys(6).await.unwrap().len(), 1);
}

async fn admin_tokens_are_added_once_and_valid_on_every_node(b: Backend) {
    let (n1, n2) = (b.node().await, b.node().await);
    assert_eq!(n1.admin_token_hashes(1).await.unwrap(), []);
    let a = Secret::generate(ADMIN_TOKEN_PREFIX).unwrap();
    let c = Secret::generate(ADMIN_TOKEN_PREFIX).unwrap();
    n1.add_admin_token(&a.hash(), 7).await.unwrap();
    n1.add_admin_token(&a.hash(), 8).await.unwrap();
    n2.add_admin_token(&c.hash(), 9).await.unwrap();
    for node in [&n1, &n2] {
        let mut known = node.admin_token_hashes(10).await.unwrap();
        known.sort_by_key(|h| *h.as_bytes());
        let mut expected = vec![a.hash(), c.hash()];
        expected.sort_by_key(|h| *h.as_bytes());
        assert_eq!(known, expected);
    }
}

async fn an_unknown_environment_is_empty_at_version_zero(b: Backend) {
    let store = b.node().await;
    let state = store.sync_state(&env("main")).await.unwrap();
    assert_eq!(state.environment, env("main"));
    assert_eq!(state.version, 0);
    assert!(state.identities.is_empty() && state.workloads.is_empty());
    assert_eq!(
        store.workload(&env("main"), &wl("app/web")).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .credential_owner(&credential().hash(), 1)
            .await
            .unwrap(),
        None
    );
}

async fn a_sync_is_written_whole_and_moves_the_version_on(b: Backend) {
    let (n1, n2) = (b.node().await, b.node().await);
    let (mut sync, web) = create("main", 0, "app/web", "env:view task:operate:send-report");
    // The queue worker runs as web's identity (`identity: app/web`).
    sync.link_workloads
        .push((wl("worker/web/queue"), "app/web".into()));
    assert_eq!(
        n1.apply_sync(&sync, 100).await.unwrap(),
        SyncApplied::Applied
    );

    // Read through the other node: everything, at once.
    let state = n2.sync_state(&env("main")).await.unwrap();
    assert_eq!(state.version, 1);
    assert_eq!(state.identities.len(), 1);
    let identity = &state.identities["app/web"];
    assert_eq!(
        identity.ceiling,
        scopes("env:view task:operate:send-report")
    );
    assert!(!identity.removed);
    assert_eq!(state.workloads.len(), 2);
    for w in ["app/web", "worker/web/queue"] {
        let record = &state.workloads[&wl(w)];
        assert_eq!(record.identity, "app/web", "{w}");
        assert_eq!(record.ceiling, identity.ceiling, "{w}");
        assert!(!record.removed, "{w}");
        assert_eq!(
            n2.workload(&env("main"), &wl(w)).await.unwrap().as_ref(),
            Some(record)
        );
    }
    let owner = n2
        .credential_owner(&web.hash(), 101)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (owner.environment, owner.identity.as_str()),
        (env("main"), "app/web")
    );
}

async fn a_sync_planned_on_a_stale_version_writes_nothing(b: Backend) {
    let store = b.node().await;
    // Two syncs planned on the same (empty) state: the first wins.
    let (first, won) = create("main", 0, "app/web", "env:view");
    let (second, lost) = create("main", 0, "app/web", "env:view");
    assert_eq!(
        store.apply_sync(&first, 100).await.unwrap(),
        SyncApplied::Applied
    );
    assert_eq!(
        store.apply_sync(&second, 101).await.unwrap(),
        SyncApplied::Conflict
    );
    assert_eq!(store.sync_state(&env("main")).await.unwrap().version, 1);
    assert!(
        store
            .credential_owner(&won.hash(), 102)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .credential_owner(&lost.hash(), 102)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_sync_that_fails_halfway_writes_nothing(b: Backend) {
    let store = b.node().await;
    let (mut sync, secret) = create("main", 0, "app/web", "env:view");
    // Written after the identity: a link to an identity that does not exist.
    sync.link_workloads
        .push((wl("app/api"), "app/ghost".into()));
    assert!(store.apply_sync(&sync, 100).await.is_err());
    let state = store.sync_state(&env("main")).await.unwrap();
    assert_eq!(state.version, 0, "the version check was rolled back too");
    assert!(state.identities.is_empty() && state.workloads.is_empty());
    assert!(
        store
            .credential_owner(&secret.hash(), 101)
            .await
            .unwrap()
            .is_none()
    );
    // And the environment is not stuck: the next sync at version 0 applies.
    let (next, _) = create("main", 0, "app/web", "env:view");
    assert_eq!(
        store.apply_sync(&next, 102).await.unwrap(),
        SyncApplied::Applied
    );
}

async fn removed_workloads_and_identities_are_kept_and_can_come_back(b: Backend) {
    let store = b.node().await;
    let (mut first, mailer) = create("main", 0, "app/web", "env:view");
    let (more, mailer_secret) = create("main", 0, "worker/web/mailer", "task:operate:notify");
    first.create_identities.extend(more.create_identities);
    first.link_workloads.extend(more.link_workloads);
    first.new_credentials.extend(more.new_credentials);
    assert_eq!(
        store.apply_sync(&first, 100).await.unwrap(),
        SyncApplied::Applied
    );

    // web's ceiling changes; mailer is no longer declared.
    let mut second = changes("main", 1);
    second.update_identities.push((
        "app/web".into(),
        scopes("env:view task:operate:send-report"),
    ));
    second.remove_identities.push("worker/web/mailer".into());
    second.remove_workloads.push(wl("worker/web/mailer"));
    assert_eq!(
        store.apply_sync(&second, 200).await.unwrap(),
        SyncApplied::Applied
    );
    let web = store
        .workload(&env("main"), &wl("app/web"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(web.ceiling, scopes("env:view task:operate:send-report"));
    let gone = store
        .workload(&env("main"), &wl("worker/web/mailer"))
        .await
        .unwrap()
        .unwrap();
    assert!(gone.removed);
    let state = store.sync_state(&env("main")).await.unwrap();
    assert!(state.identities["worker/web/mailer"].removed);
    // Its credential is kept (the issuer refuses grants for a removed
    // workload; a later `identity:` may take the identity back).
    assert!(
        store
            .credential_owner(&mailer_secret.hash(), 201)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .credential_owner(&mailer.hash(), 201)
            .await
            .unwrap()
            .is_some()
    );

    // Declared again, under its old identity.
    let mut third = changes("main", 2);
    third
        .update_identities
        .push(("worker/web/mailer".into(), scopes("task:operate:notify")));
    third
        .link_workloads
        .push((wl("worker/web/mailer"), "worker/web/mailer".into()));
    assert_eq!(
        store.apply_sync(&third, 300).await.unwrap(),
        SyncApplied::Applied
    );
    let back = store
        .workload(&env("main"), &wl("worker/web/mailer"))
        .await
        .unwrap()
        .unwrap();
    assert!(!back.removed);
    assert!(!store.sync_state(&env("main")).await.unwrap().identities["worker/web/mailer"].removed);
}

async fn environments_are_separate(b: Backend) {
    let store = b.node().await;
    let (main, main_secret) = create("main", 0, "app/web", "env:view");
    let (staging, staging_secret) = create("staging", 0, "app/web", "task:operate:deploy");
    assert_eq!(
        store.apply_sync(&main, 1).await.unwrap(),
        SyncApplied::Applied
    );
    // Each environment has its own version: staging's first sync is at 0.
    assert_eq!(
        store.apply_sync(&staging, 2).await.unwrap(),
        SyncApplied::Applied
    );
    for (name, ceiling, secret) in [
        ("main", "env:view", &main_secret),
        ("staging", "task:operate:deploy", &staging_secret),
    ] {
        let state = store.sync_state(&env(name)).await.unwrap();
        assert_eq!(state.version, 1, "{name}");
        let web = store
            .workload(&env(name), &wl("app/web"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(web.ceiling, scopes(ceiling), "{name}");
        let owner = store
            .credential_owner(&secret.hash(), 3)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner.environment, env(name));
    }
}

async fn racing_syncs_planned_on_one_version_apply_once(b: Backend) {
    let nodes = [b.node().await, b.node().await];
    for round in 0..3_i64 {
        // Eight syncs through two nodes, all planned against `round`, each
        // setting its own ceiling and creating its own credential.
        let barrier = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let node = Arc::clone(&nodes[i % 2]);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let ceiling = format!("task:operate:t{i}");
                let (sync, secret) = if round == 0 {
                    create("main", 0, "app/web", &ceiling)
                } else {
                    let secret = credential();
                    let mut c = changes("main", round);
                    c.update_identities
                        .push(("app/web".into(), scopes(&ceiling)));
                    c.new_credentials.push(("app/web".into(), secret.hash()));
                    (c, secret)
                };
                barrier.wait().await;
                let applied = node.apply_sync(&sync, 100).await.unwrap();
                (applied, ceiling, secret)
            }));
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for t in tasks {
            let (applied, ceiling, secret) = t.await.unwrap();
            match applied {
                SyncApplied::Applied => winners.push((ceiling, secret)),
                SyncApplied::Conflict => losers.push(secret),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: one sync applies");
        let (ceiling, secret) = &winners[0];
        let state = nodes[0].sync_state(&env("main")).await.unwrap();
        assert_eq!(state.version, round + 1);
        assert_eq!(state.identities["app/web"].ceiling, scopes(ceiling));
        assert!(
            nodes[1]
                .credential_owner(&secret.hash(), 101)
                .await
                .unwrap()
                .is_some()
        );
        for lost in &losers {
            assert!(
                nodes[1]
                    .credential_owner(&lost.hash(), 101)
                    .await
                    .unwrap()
                    .is_none(),
                "round {round}: a conflicting sync wrote its credential"
            );
        }
    }
}

async fn at_most_one_sync_applies_per_version_across_nodes(b: Backend) {
    // Twelve writers on two nodes, each adding its own workload the way the
    // issuer does: read the state, plan on its version, apply, and plan
    // again on a conflict. No write may be lost, and each version is
    // applied by exactly one of them.
    const WRITERS: usize = 12;
    let nodes = [b.node().await, b.node().await];
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let node = Arc::clone(&nodes[i % 2]);
        tasks.push(tokio::spawn(async move {
            let workload = format!("task/t{i:02}");
            for _ in 0..200 {
                let state = node.sync_state(&env("main")).await.unwrap();
                let (sync, _) = create("main", state.version, &workload, "env:view");
                if node.apply_sync(&sync, 100).await.unwrap() == SyncApplied::Applied {
                    return state.version;
                }
            }
            panic!("{workload} never applied");
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<i64> = (0..WRITERS as i64).collect();
    assert_eq!(versions, expected, "each version applied once");
    let state = nodes[1].sync_state(&env("main")).await.unwrap();
    assert_eq!(state.version, WRITERS as i64);
    assert_eq!(state.workloads.len(), WRITERS, "no workload lost");
    assert_eq!(state.identities.len(), WRITERS);
}

async fn a_grant_id_is_recorded_once(b: Backend) {
    let store = b.node().await;
    let grant = GrantRecord {
        jti: "g-1".into(),
        environment: env("main"),
        workload: wl("app/web"),
        identity: "app/web".into(),
        bootstrap: BootstrapKind::WorkloadCredential,
        root_kid: "kid".into(),
        issued_at: 100,
        expires_at: 200,
    };
    store.record_grant(&grant).await.unwrap();
    let other = GrantRecord {
        jti: "g-2".into(),
        bootstrap: BootstrapKind::KubernetesServiceAccount,
        ..grant.clone()
    };
    store.record_grant(&other).await.unwrap();
    // A grant id names one grant: recording it twice is an error.
    assert!(store.record_grant(&grant).await.is_err());
}

/// PostgreSQL only: what several nodes on one server rely on.
mod postgres_only {
    use std::time::Duration;

    use authproxy_test_support::TempPostgres;

    use super::*;

    /// Nodes starting at once on an empty database: the migrations run
    /// once (PostgreSQL's advisory lock), and every node starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_starting_at_once_migrate_once() {
        let raw = fresh_database();
        let url = PostgresUrl::parse(&raw).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move { PostgresStore::open(&url).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let raw = url::Url::parse(&raw).unwrap();
        let database = raw.path().trim_start_matches('/');
        let applied = TempPostgres::shared()
            .psql(database, "SELECT count(*) FROM _sqlx_migrations")
            .unwrap();
        assert_eq!(applied.trim(), "1");
    }

    /// The row lock behind the optimistic check: a sync through one node
    /// waits for a transaction another node holds on its environment, then
    /// sees that transaction's committed version and writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_sync_waiting_for_another_nodes_transaction_sees_its_commit() {
        use sqlx::Connection as _;

        let url = fresh_database();
        let store = PostgresStore::open(&PostgresUrl::parse(&url).unwrap())
            .await
            .unwrap();
        let (first, _) = create("main", 0, "app/web", "env:view");
        assert_eq!(
            store.apply_sync(&first, 1).await.unwrap(),
            SyncApplied::Applied
        );

        // "Another node", mid-sync: it has moved main to version 2 and not
        // committed yet.
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        let bumped = sqlx::query("UPDATE environments SET version = 2 WHERE name = 'main'")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(bumped.rows_affected(), 1);

        let mut planned = changes("main", 1);
        planned
            .update_identities
            .push(("app/web".into(), scopes("task:operate:late")));
        let store = Arc::new(store);
        let waiting = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.apply_sync(&planned, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "it waits for the row lock");
        tx.commit().await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), SyncApplied::Conflict);
        let web = store
            .workload(&env("main"), &wl("app/web"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            web.ceiling,
            scopes("env:view"),
            "the late sync wrote nothing"
        );
    }

    /// A server that cannot be reached: the error names the store, with the
    /// password hidden.
    #[tokio::test]
    async fn an_unreachable_server_is_named_without_its_password() {
        let url =
            PostgresUrl::parse("postgres://issuer:hunter2@localhost/x?host=/nonexistent-authproxy")
                .unwrap();
        let e = PostgresStore::open(&url).await.unwrap_err().to_string();
        assert!(e.contains("postgres://issuer:***@localhost/x"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
