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

use authproxy_core::Scopes;
use authproxy_core::keys::SigningKey;
use authproxy_core::pat::PatName;
use authproxy_core::{Environment, ScopeSet, WorkloadId};
use authproxy_issuer::secret::{ADMIN_TOKEN_PREFIX, Secret, WORKLOAD_CREDENTIAL_PREFIX};
use authproxy_issuer::store::{
    BootstrapKind, CredentialRecord, CredentialRegistration, GrantRecord, PatCreated, PatRecord,
    PatUpdate, PatUpdated, PostgresStore, PostgresUrl, RevocationsAfter, RootKeyRecord,
    RootKeyState, SqliteStore, Store, SyncApplied, SyncChanges, TaskChanges, TaskRecord,
};
use authproxy_issuer::tasks::model::{CredentialKind, TaskError, TaskStatus, TaskType, Trigger};
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
    a_pat_name_is_taken_once_and_a_pat_is_found_by_name_and_current_id,
    a_pat_update_replaces_the_version_it_read_and_feeds_that_one,
    a_pat_delete_removes_it_and_feeds_its_version,
    last_used_is_written_at_most_once_a_minute_and_only_for_current_versions,
    the_feed_reads_after_a_cursor_without_expired_entries_and_pruning_keeps_the_newest,
    a_workloads_live_grants_are_revoked_once,
    a_credential_registers_once_with_its_versions_and_tasks,
    racing_claims_from_two_nodes_claim_each_task_once,
    one_task_at_a_time_per_credential_and_a_stale_claim_writes_nothing,
    racing_pat_updates_from_two_nodes_apply_once,
);

/// Two nodes updating one PAT from the version they both read: one
/// update applies, the version it replaced is fed once. (On SQLite every
/// transaction begins IMMEDIATE: the losers wait for the lock, then see
/// the version changed, instead of failing with "database is locked".)
async fn racing_pat_updates_from_two_nodes_apply_once(b: Backend) {
    const RACERS: usize = 8;
    let nodes = [b.node().await, b.node().await];
    create_pat(nodes[0].as_ref(), &pat("ci", "v0", T0 + 600)).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let node = Arc::clone(&nodes[i % 2]);
        let barrier = Arc::clone(&barrier);
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            node.update_pat(&pat_update("ci", "v0", &format!("r{i}")), T0 + 1)
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for r in racers {
        if r.await.unwrap() == PatUpdated::Updated {
            won += 1;
        }
    }
    assert_eq!(won, 1, "every update read v0: one applies");
    let feed = nodes[1].revocations_after(0, T0 + 2).await.unwrap();
    assert_eq!(ids(&feed), [(1, "pat", "v0")], "v0 fed once");
}

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
        subject: "app/web".parse().unwrap(),
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

// --- Personal access tokens and the revocation feed (DESIGN §9) ---

const T0: u64 = 1_700_000_000;

fn pat(name: &str, jti: &str, expires_at: u64) -> PatRecord {
    PatRecord {
        name: PatName::parse(name).unwrap(),
        environment: env("main"),
        scopes: Scopes::parse("task:operate:* env:view").unwrap(),
        jti: jti.into(),
        created_at: T0,
        updated_at: T0,
        expires_at,
        last_used_at: None,
    }
}

fn pat_name(name: &str) -> PatName {
    PatName::parse(name).unwrap()
}

async fn create_pat(store: &dyn Store, pat: &PatRecord) {
    assert_eq!(store.create_pat(pat).await.unwrap(), PatCreated::Created);
}

fn pat_update(name: &str, previous: &str, jti: &str) -> PatUpdate {
    PatUpdate {
        name: pat_name(name),
        previous_jti: previous.into(),
        jti: jti.into(),
        scopes: Scopes::parse("env:view").unwrap(),
        expires_at: T0 + 900,
    }
}

fn ids(feed: &RevocationsAfter) -> Vec<(u64, &str, &str)> {
    feed.entries
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.id.as_str()))
        .collect()
}

fn grant(jti: &str, environment: &str, subject: &str, expires_at: u64) -> GrantRecord {
    GrantRecord {
        jti: jti.into(),
        environment: env(environment),
        subject: subject.parse().unwrap(),
        identity: subject.into(),
        bootstrap: BootstrapKind::WorkloadCredential,
        root_kid: "kid".into(),
        issued_at: T0,
        expires_at,
    }
}

async fn a_pat_name_is_taken_once_and_a_pat_is_found_by_name_and_current_id(b: Backend) {
    let (a, other) = (b.node().await, b.node().await);
    let ci = pat("ci", "j1", T0 + 600);
    create_pat(a.as_ref(), &ci).await;
    // Through another node too: a name is unique within the issuer.
    assert_eq!(
        other.create_pat(&pat("ci", "j2", T0 + 600)).await.unwrap(),
        PatCreated::NameTaken
    );
    create_pat(other.as_ref(), &pat("a.b", "j3", T0 + 60)).await;
    create_pat(a.as_ref(), &pat("a-c", "j4", T0 + 60)).await;

    assert_eq!(other.pat(&ci.name).await.unwrap(), Some(ci.clone()));
    assert_eq!(other.pat_by_jti("j1").await.unwrap(), Some(ci.clone()));
    assert_eq!(other.pat_by_jti("j2").await.unwrap(), None);
    assert_eq!(other.pat(&pat_name("nope")).await.unwrap(), None);
    let names: Vec<String> = a
        .pats()
        .await
        .unwrap()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    // By name, in byte order whatever the database's collation (a
    // language's collation would ignore the punctuation: a.b, a-c).
    assert_eq!(names, ["a-c", "a.b", "ci"]);
}

async fn a_pat_update_replaces_the_version_it_read_and_feeds_that_one(b: Backend) {
    let store = b.node().await;
    let ci = pat("ci", "v1", T0 + 600);
    create_pat(store.as_ref(), &ci).await;
    assert_eq!(
        store
            .update_pat(&pat_update("ci", "v1", "v2"), T0 + 10)
            .await
            .unwrap(),
        PatUpdated::Updated
    );
    // A concurrent update that read v1 too writes nothing.
    assert_eq!(
        store
            .update_pat(&pat_update("ci", "v1", "v3"), T0 + 11)
            .await
            .unwrap(),
        PatUpdated::Changed
    );
    let now = store.pat(&ci.name).await.unwrap().unwrap();
    assert_eq!((now.jti.as_str(), now.expires_at), ("v2", T0 + 900));
    assert_eq!((now.created_at, now.updated_at), (T0, T0 + 10));
    assert_eq!(now.scopes.to_string(), "env:view");
    assert_eq!(store.pat_by_jti("v1").await.unwrap(), None);
    assert_eq!(store.pat_by_jti("v3").await.unwrap(), None);

    let feed = store.revocations_after(0, T0 + 20).await.unwrap();
    assert_eq!(ids(&feed), [(1, "pat", "v1")]);
    // It expires with the version it names.
    assert_eq!(feed.entries[0].expires_at, T0 + 600);
    assert_eq!(
        store
            .update_pat(&pat_update("nope", "v2", "v4"), T0)
            .await
            .unwrap(),
        PatUpdated::Changed
    );
}

async fn a_pat_delete_removes_it_and_feeds_its_version(b: Backend) {
    let (a, other) = (b.node().await, b.node().await);
    let ci = pat("ci", "v1", T0 + 600);
    create_pat(a.as_ref(), &ci).await;
    assert_eq!(
        a.delete_pat(&ci.name, T0 + 5).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(other.delete_pat(&ci.name, T0 + 6).await.unwrap(), None);
    assert_eq!(other.pat(&ci.name).await.unwrap(), None);
    // The feed is read through the other node: one feed for every node.
    let feed = other.revocations_after(0, T0 + 7).await.unwrap();
    assert_eq!(ids(&feed), [(1, "pat", "v1")]);
    // The name is free again.
    create_pat(other.as_ref(), &pat("ci", "v2", T0 + 600)).await;
}

async fn last_used_is_written_at_most_once_a_minute_and_only_for_current_versions(b: Backend) {
    let store = b.node().await;
    let ci = pat("ci", "v1", T0 + 6000);
    create_pat(store.as_ref(), &ci).await;
    let last_used = || async { store.pat(&ci.name).await.unwrap().unwrap().last_used_at };
    let reported = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    store
        .touch_pats(&reported(&["v1", "unknown"]), T0 + 100)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(T0 + 100));
    store
        .touch_pats(&reported(&["v1"]), T0 + 159)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(T0 + 100), "within the minute");
    store
        .touch_pats(&reported(&["v1"]), T0 + 160)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(T0 + 160));
    store.touch_pats(&[], T0 + 999).await.unwrap();
    assert_eq!(last_used().await, Some(T0 + 160));

    let update = PatUpdate {
        name: ci.name.clone(),
        previous_jti: "v1".into(),
        jti: "v2".into(),
        scopes: ci.scopes.clone(),
        expires_at: ci.expires_at,
    };
    assert_eq!(
        store.update_pat(&update, T0 + 200).await.unwrap(),
        PatUpdated::Updated
    );
    store
        .touch_pats(&reported(&["v1"]), T0 + 1000)
        .await
        .unwrap();
    assert_eq!(
        last_used().await,
        Some(T0 + 160),
        "a revoked version touches nothing"
    );
}

async fn the_feed_reads_after_a_cursor_without_expired_entries_and_pruning_keeps_the_newest(
    b: Backend,
) {
    let store = b.node().await;
    let empty = store.revocations_after(0, T0).await.unwrap();
    assert_eq!((empty.entries.len(), empty.newest), (0, 0));
    for (name, expires_at) in [("a", T0 + 100), ("b", T0 + 300), ("c", T0 + 200)] {
        create_pat(store.as_ref(), &pat(name, name, expires_at)).await;
        store.delete_pat(&pat_name(name), T0).await.unwrap();
    }
    let all = store.revocations_after(0, T0 + 1).await.unwrap();
    assert_eq!(
        ids(&all),
        [(1, "pat", "a"), (2, "pat", "b"), (3, "pat", "c")]
    );
    assert_eq!(all.newest, 3);
    let after_one = store.revocations_after(1, T0 + 1).await.unwrap();
    assert_eq!(ids(&after_one), [(2, "pat", "b"), (3, "pat", "c")]);
    // `a` expired at T0 + 100, `c` at T0 + 200: gone from the feed.
    let later = store.revocations_after(0, T0 + 200).await.unwrap();
    assert_eq!(ids(&later), [(2, "pat", "b")]);
    assert_eq!(later.newest, 3);

    // Pruning at T0 + 200 deletes `a` but keeps `c`, the newest, so the
    // newest seq never goes back.
    assert_eq!(store.prune_revocations(T0 + 200).await.unwrap(), 1);
    assert_eq!(store.revocations_after(0, T0 + 1).await.unwrap().newest, 3);
    assert_eq!(store.prune_revocations(T0 + 10_000).await.unwrap(), 1);
    let pruned = store.revocations_after(0, T0).await.unwrap();
    assert_eq!((ids(&pruned), pruned.newest), (vec![(3, "pat", "c")], 3));
    // A later entry still gets a higher seq.
    create_pat(store.as_ref(), &pat("d", "d", T0 + 500)).await;
    store.delete_pat(&pat_name("d"), T0).await.unwrap();
    assert_eq!(
        ids(&store.revocations_after(3, T0).await.unwrap()),
        [(4, "pat", "d")]
    );
}

async fn a_workloads_live_grants_are_revoked_once(b: Backend) {
    let (store, other) = (b.node().await, b.node().await);
    for g in [
        grant("live1", "main", "app/web", T0 + 100),
        grant("live2", "main", "app/web", T0 + 200),
        grant("expired", "main", "app/web", T0 + 10),
        grant("other-env", "staging", "app/web", T0 + 100),
        grant("other-workload", "main", "task/x", T0 + 100),
        grant("a-pat", "main", "pat:web", T0 + 100),
    ] {
        store.record_grant(&g).await.unwrap();
    }
    // Two nodes revoking at once append each grant once.
    let (main, web) = (env("main"), wl("app/web"));
    let (x, y) = tokio::join!(
        store.revoke_workload_grants(&main, &web, T0 + 50),
        other.revoke_workload_grants(&main, &web, T0 + 50),
    );
    assert_eq!(x.unwrap() + y.unwrap(), 2);
    assert_eq!(
        store
            .revoke_workload_grants(&env("main"), &wl("app/web"), T0 + 51)
            .await
            .unwrap(),
        0,
        "already revoked"
    );
    let feed = store.revocations_after(0, T0 + 50).await.unwrap();
    assert_eq!(ids(&feed), [(1, "grant", "live1"), (2, "grant", "live2")]);
    assert_eq!(feed.entries[1].expires_at, T0 + 200);
}

// --- Credential lifecycle (DESIGN §10) ---

fn credential_record(id: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        kind: CredentialKind::Pat,
        name: id.into(),
        node: None,
        environment: Some(env("main")),
        created_at: T0,
        versions: Vec::new(),
    }
}

fn queued(credential_id: &str, run_at: u64) -> TaskRecord {
    TaskRecord::queued(
        credential_id,
        TaskType::CreateCredentials,
        Trigger::ManualRotation,
        None,
        run_at,
        T0,
    )
}

async fn register(store: &dyn Store, id: &str, tasks: Vec<TaskRecord>) -> bool {
    store
        .register_credential(&CredentialRegistration {
            credential: credential_record(id),
            tasks,
        })
        .await
        .unwrap()
}

async fn a_credential_registers_once_with_its_versions_and_tasks(b: Backend) {
    let (a, other) = (b.node().await, b.node().await);
    let task = queued("pat.ci", T0);
    assert!(register(a.as_ref(), "pat.ci", vec![task.clone()]).await);
    assert!(!register(other.as_ref(), "pat.ci", vec![queued("pat.ci", T0)]).await);
    assert_eq!(
        other.credential("pat.ci").await.unwrap(),
        Some(credential_record("pat.ci"))
    );
    assert_eq!(other.credentials().await.unwrap().len(), 1);
    assert_eq!(
        other.tasks("pat.ci").await.unwrap(),
        std::slice::from_ref(&task)
    );
    assert_eq!(other.task(&task.id).await.unwrap(), Some(task));
}

/// SKIP LOCKED (PostgreSQL) and the one writer (SQLite): many workers on
/// two nodes claiming at once claim each task once.
async fn racing_claims_from_two_nodes_claim_each_task_once(b: Backend) {
    const CREDENTIALS: usize = 12;
    const WORKERS: usize = 16;
    let nodes = [b.node().await, b.node().await];
    let mut expected = Vec::new();
    for c in 0..CREDENTIALS {
        let id = format!("pat.c{c}");
        let task = queued(&id, T0);
        expected.push(task.id.clone());
        assert!(register(nodes[c % 2].as_ref(), &id, vec![task]).await);
    }
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let node = Arc::clone(&nodes[w % 2]);
        let barrier = Arc::clone(&barrier);
        workers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut claimed = Vec::new();
            let me = format!("node{}/{w}", w % 2);
            while let Some(task) = node.claim_task("n", &me, T0 + 1, T0 + 301).await.unwrap() {
                assert_eq!(task.status, TaskStatus::Processing);
                assert_eq!(task.claimed_by.as_deref(), Some(me.as_str()));
                assert_eq!(task.attempts, 1);
                claimed.push(task.id);
            }
            claimed
        }));
    }
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    claimed.sort();
    expected.sort();
    assert_eq!(claimed, expected, "each task claimed once");
}

async fn one_task_at_a_time_per_credential_and_a_stale_claim_writes_nothing(b: Backend) {
    let (a, other) = (b.node().await, b.node().await);
    let first = queued("pat.ci", T0);
    let second = queued("pat.ci", T0 + 1);
    let later = queued("pat.ci", T0 + 1000);
    assert!(
        register(
            a.as_ref(),
            "pat.ci",
            vec![first.clone(), second.clone(), later]
        )
        .await
    );
    let claimed = a
        .claim_task("n", "a/1", T0 + 10, T0 + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, first.id, "the first due");
    // The second is due, but its credential has a task under a live lease.
    assert_eq!(
        other
            .claim_task("n", "b/1", T0 + 20, T0 + 110)
            .await
            .unwrap(),
        None
    );
    // The lease runs out: another worker takes the task over (attempt 2)…
    let taken = other
        .claim_task("n", "b/1", T0 + 100, T0 + 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.id.as_str(), taken.attempts), (first.id.as_str(), 2));
    // …and the first worker's claim is stale: it writes nothing.
    let done = TaskChanges::status(TaskStatus::CredentialsCreated, T0 + 100, Vec::new());
    assert!(
        !a.apply_task(&claimed.claim(), &done, T0 + 101)
            .await
            .unwrap()
    );
    assert!(
        other
            .apply_task(&taken.claim(), &done, T0 + 102)
            .await
            .unwrap()
    );
    let stored = a.task(&first.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::CredentialsCreated);
    assert_eq!(stored.claimed_by.as_deref(), Some("b/1"));
    // Final: it is claimed no more; the second task is next, then nothing
    // until `later` is due.
    let next = a
        .claim_task("n", "a/2", T0 + 103, T0 + 400)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, second.id);
    let cancelled = a
        .cancel_task(
            &next.id,
            TaskStatus::Processing,
            next.attempts,
            &[TaskError {
                code: "cancelled".into(),
                description: "by the test".into(),
            }],
            T0 + 104,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.status, TaskStatus::Failed);
    assert!(!a.apply_task(&next.claim(), &done, T0 + 105).await.unwrap());
    assert_eq!(
        a.claim_task("n", "a/3", T0 + 106, T0 + 500).await.unwrap(),
        None
    );
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
        assert_eq!(applied.trim(), "3", "0001_initial, 0002_pats, 0003_tasks");
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

    /// The cursor is global and safe: while several nodes revoke at once, a
    /// poller reading one node and moving its cursor to `newest` each time
    /// receives every entry, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_cursor_polling_one_node_while_others_revoke_misses_nothing() {
        const WRITERS: usize = 4;
        const EACH: usize = 15;
        let b = Backend::postgres();
        let nodes = [b.node().await, b.node().await, b.node().await];
        for w in 0..WRITERS {
            for i in 0..EACH {
                let name = format!("w{w}-{i}");
                create_pat(nodes[w % 2].as_ref(), &pat(&name, &name, T0 + 600)).await;
            }
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let node = Arc::clone(&nodes[2]);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let (mut cursor, mut seen) = (0, Vec::new());
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let feed = node.revocations_after(cursor, T0 + 1).await.unwrap();
                    seen.extend(feed.entries.iter().map(|e| e.id.clone()));
                    cursor = feed.newest;
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            })
        };
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let node = Arc::clone(&nodes[w % 2]);
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let name = pat_name(&format!("w{w}-{i}"));
                    assert!(node.delete_pat(&name, T0).await.unwrap().is_some());
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut seen = poller.await.unwrap();
        assert_eq!(seen.len(), WRITERS * EACH, "each entry delivered once");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), WRITERS * EACH, "every entry delivered");
    }

    /// The feed's advisory lock: while another node's transaction has drawn
    /// a `seq` and not committed, an append through this node waits, so its
    /// larger `seq` cannot become visible first and carry a cursor past the
    /// smaller one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_append_waits_for_a_smaller_seq_to_commit() {
        use sqlx::Connection as _;

        /// REVOCATION_FEED_LOCK in src/store/postgres.rs.
        const FEED_LOCK: i64 = 0x6175_7468_7265_766F;
        let url = fresh_database();
        let store = Arc::new(
            PostgresStore::open(&PostgresUrl::parse(&url).unwrap())
                .await
                .unwrap(),
        );
        create_pat(store.as_ref(), &pat("ci", "v1", T0 + 600)).await;

        // "Another node", mid-append: lock taken, seq 1 drawn, not committed.
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FEED_LOCK)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO revocations (kind, id, expires_at, revoked_at) \
             VALUES ('grant', 'g-other', $1, $2)",
        )
        .bind(i64::try_from(T0 + 600).unwrap())
        .bind(i64::try_from(T0).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();

        let deleting = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.delete_pat(&pat_name("ci"), T0).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!deleting.is_finished(), "it waits for the feed's lock");
        let feed = store.revocations_after(0, T0 + 1).await.unwrap();
        assert_eq!(
            (feed.entries.len(), feed.newest),
            (0, 0),
            "nothing visible yet"
        );
        tx.commit().await.unwrap();
        assert!(deleting.await.unwrap().unwrap().is_some());
        let feed = store.revocations_after(0, T0 + 1).await.unwrap();
        assert_eq!(ids(&feed), [(1, "grant", "g-other"), (2, "pat", "v1")]);
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
