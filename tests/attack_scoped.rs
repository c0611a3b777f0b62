//! An outside attack on per-user caching under Row Level Security (round 12: scoped
//! copies of rows and of cached queries). Every check compares the cached handle's
//! answer with the same read on a handle without a cache ("cache on == cache off").
//!
//! Tests named `defect_*` each showed a defect when written — a leak or a stale row —
//! and pass since its fix; the others held from the start.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

// ------------------------------------------------------------------ models

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "notes", cache(ttl = 300))]
struct Note {
    #[table(primary_key)]
    id: i64,
    owner: Uuid,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "members", cache(ttl = 300))]
struct Member {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

/// The same table as `Member`, its schema spelled out.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "members", schema = "public", cache(ttl = 300))]
struct PubMember {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "team_notes", cache(ttl = 300))]
struct TeamNote {
    #[table(primary_key)]
    id: i64,
    team: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "offers", cache(ttl = 300))]
struct Offer {
    #[table(primary_key)]
    id: i64,
    owner: Uuid,
    expires_at: chrono::DateTime<chrono::Utc>,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "teams", cache(ttl = 300))]
struct Team {
    #[table(primary_key)]
    id: i64,
    name: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "short_notes", cache(ttl = 1))]
struct ShortNote {
    #[table(primary_key)]
    id: i64,
    owner: Uuid,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "tenant_notes", cache(ttl = 300))]
struct TenantNote {
    #[table(primary_key)]
    id: i64,
    tenant: i64,
    owner: Uuid,
    body: String,
}

/// A partition of a partitioned membership table.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "pmembers_10", cache(ttl = 300))]
struct PMember10 {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "pteam_notes", cache(ttl = 300))]
struct PTeamNote {
    #[table(primary_key)]
    id: i64,
    team: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "soft_members", cache(ttl = 300))]
struct SoftMember {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
    #[table(soft_delete)]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "soft_team_notes", cache(ttl = 300))]
struct SoftTeamNote {
    #[table(primary_key)]
    id: i64,
    team: i64,
    body: String,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "org_admins", cache(ttl = 300))]
struct OrgAdmin {
    #[table(primary_key)]
    id: i64,
    user_id: Uuid,
}

// ------------------------------------------------------------------ set-up

const SCHEMA: &str = "
    CREATE TABLE notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
    CREATE TABLE teams (id int8 PRIMARY KEY, name text NOT NULL);
    CREATE TABLE members (id int8 PRIMARY KEY,
                          team int8 NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
                          user_id uuid NOT NULL);
    CREATE TABLE team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
    CREATE TABLE offers (id int8 PRIMARY KEY, owner uuid NOT NULL,
                         expires_at timestamptz NOT NULL, body text NOT NULL);
    CREATE TABLE short_notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
    GRANT SELECT, INSERT, UPDATE, DELETE ON notes, members, team_notes, offers, teams,
        short_notes TO authenticated, anon;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE members ENABLE ROW LEVEL SECURITY;
    ALTER TABLE team_notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE offers ENABLE ROW LEVEL SECURITY;
    ALTER TABLE short_notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes USING (owner = auth.uid());
    CREATE POLICY own ON short_notes USING (owner = auth.uid());
    CREATE POLICY own ON members USING (user_id = auth.uid());
    CREATE POLICY team ON team_notes FOR SELECT
        USING (team IN (SELECT team FROM members WHERE user_id = auth.uid()));
    INSERT INTO teams VALUES (10, 'ten'), (20, 'twenty');
";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Redis,
    Memory,
    Near,
}

fn prefix() -> String {
    format!("r12x{}x{}", std::process::id(), Uuid::new_v4().simple())
}

fn make_cache(kind: Kind, prefix: &str) -> CacheService {
    let config = CacheConfig::default()
        .prefix(prefix.to_owned())
        .deadline(Duration::from_secs(2));
    match kind {
        Kind::Redis => CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config),
        Kind::Memory => CacheService::in_memory(config),
        Kind::Near => CacheService::redis(
            &tabula::testkit::redis_url().expect("redis"),
            config.near(8 << 20),
        ),
    }
    .expect("cache")
}

struct Env {
    db: Db,
    plain: Db,
    cache: CacheService,
    url: String,
}

/// A cached handle, an uncached one (the oracle, and writes behind the cache's back),
/// both on a fresh migrated database with `schema` applied.
async fn setup(kind: Kind, schema: &str) -> Env {
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(3))
        .await
        .expect("plain db");
    plain.execute_batch(schema).await.expect("schema");
    let cache = make_cache(kind, &prefix());
    let db = Db::connect_with(DbConfig::new(url.clone()).cache(cache.clone()).pool_size(4))
        .await
        .expect("cached db");
    Env {
        db,
        plain,
        cache,
        url,
    }
}

fn member(id: i64, team: i64, user_id: Uuid) -> NewMember {
    NewMember { id, team, user_id }
}

fn team_note(id: i64, team: i64) -> NewTeamNote {
    NewTeamNote {
        id,
        team,
        body: format!("team note {id}"),
    }
}

/// Every scoped read of `TeamNote` the feature caches, for each user, twice (the
/// second from the scope's copies), against the uncached handle.
async fn team_notes_agree(db: &Db, plain: &Db, users: &[Uuid], label: &str) {
    let ids = [1_i64, 2, 3, 4];
    for user in users {
        let (c, p) = (db.as_user(*user), plain.as_user(*user));
        for round in 0..2 {
            let here = format!("{label} (user {user}, round {round})");
            for id in ids {
                let got = c.read::<TeamNote>(id).await.expect("cached read");
                let want = p.read::<TeamNote>(id).await.expect("plain read");
                assert_eq!(got, want, "{here}: read team note {id}");
            }
            let got = c.read_many::<TeamNote>(&ids).await.expect("read_many");
            let mut want = Vec::new();
            for id in ids {
                want.push(p.read::<TeamNote>(id).await.expect("plain read"));
            }
            assert_eq!(got, want, "{here}: read_many");
            let got = c
                .query::<TeamNote>()
                .order_by(TeamNote::ID.asc())
                .cached(60)
                .all()
                .await
                .expect("cached all");
            let want = p
                .query::<TeamNote>()
                .order_by(TeamNote::ID.asc())
                .all()
                .await
                .expect("plain all");
            assert_eq!(got, want, "{here}: cached all");
            let got = c
                .query::<TeamNote>()
                .cached(60)
                .count()
                .await
                .expect("count");
            let want = p.query::<TeamNote>().count().await.expect("count");
            assert_eq!(got, want, "{here}: cached count");
            let got = c
                .query::<TeamNote>()
                .filter(TeamNote::TEAM.eq(10))
                .cached(60)
                .exists()
                .await
                .expect("exists");
            let want = p
                .query::<TeamNote>()
                .filter(TeamNote::TEAM.eq(10))
                .exists()
                .await
                .expect("exists");
            assert_eq!(got, want, "{here}: cached exists");
            let got = c
                .query::<TeamNote>()
                .order_by(TeamNote::ID.desc())
                .cached(60)
                .first()
                .await
                .expect("first");
            let want = p
                .query::<TeamNote>()
                .order_by(TeamNote::ID.desc())
                .first()
                .await
                .expect("first");
            assert_eq!(got, want, "{here}: cached first");
            let got = c
                .query::<TeamNote>()
                .order_by(TeamNote::ID.asc())
                .cached(60)
                .page(2, None)
                .await
                .expect("page");
            let want = p
                .query::<TeamNote>()
                .order_by(TeamNote::ID.asc())
                .page(2, None)
                .await
                .expect("page");
            assert_eq!(got.items, want.items, "{here}: cached page");
        }
    }
}

/// Proves the scope's reads of team notes are cached (not bypassed): a change behind
/// the cache's back is not seen until `invalidate`.
async fn assert_team_notes_cached(db: &Db, plain: &Db, user: Uuid) {
    let c = db.as_user(user);
    let visible = c
        .read_many::<TeamNote>(&[1, 2, 3, 4])
        .await
        .expect("read_many");
    let Some(note) = visible.into_iter().flatten().next() else {
        panic!("no visible team note to prove caching with");
    };
    plain
        .execute_batch(&format!(
            "UPDATE team_notes SET body = 'behind' WHERE id = {}",
            note.id
        ))
        .await
        .expect("behind");
    assert_eq!(
        c.read::<TeamNote>(note.id)
            .await
            .expect("read")
            .map(|n| n.body),
        Some(note.body.clone()),
        "the scope's reads are cached"
    );
    plain
        .execute_batch(&format!(
            "UPDATE team_notes SET body = '{}' WHERE id = {}",
            note.body, note.id
        ))
        .await
        .expect("back");
    db.invalidate::<TeamNote>(&[note.id]).await;
}

async fn seed_team_notes(db: &Db) {
    for (id, team) in [(1, 10), (2, 10), (3, 20), (4, 20)] {
        db.create(team_note(id, team)).await.expect("team note");
    }
}

// ====================================================================== findings

/// A model that spells its schema (`schema = "public"`) names its table
/// `public.members` in the cache, but the policy analysis names the tables a policy
/// reads `members` (public without its schema): writes through the model never bump
/// the counter the team notes' scoped copies are versioned by.
async fn schema_public_membership(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    seed_team_notes(db).await;
    db.create(NewPubMember {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("join");
    team_notes_agree(db, plain, &[alice], "alice joined team 10").await;
    // Alice leaves the team, through Tabula.
    db.delete::<PubMember>(1).await.expect("leave");
    team_notes_agree(db, plain, &[alice], "alice left team 10 (PubMember delete)").await;
}

#[tokio::test]
async fn defect_schema_public_model_of_policy_table_redis() {
    schema_public_membership(Kind::Redis).await;
}

#[tokio::test]
async fn defect_schema_public_model_of_policy_table_memory() {
    schema_public_membership(Kind::Memory).await;
}

/// Tables in a schema other than `public`, found through the database's
/// `search_path`; models without a schema (as for any table on the path). The policy
/// analysis names the membership table `app.members`, writes name it `members`.
async fn search_path_schema(kind: Kind) {
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("plain");
    let dbname: String = plain
        .with_client(async |c| {
            Ok(c.query_one("SELECT current_database()::text", &[])
                .await?
                .get(0))
        })
        .await
        .expect("dbname");
    plain
        .execute_batch(&format!(
            "CREATE SCHEMA app;
             GRANT USAGE ON SCHEMA app TO authenticated, anon;
             CREATE TABLE app.members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
             CREATE TABLE app.team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.members, app.team_notes TO authenticated, anon;
             ALTER TABLE app.members ENABLE ROW LEVEL SECURITY;
             ALTER TABLE app.team_notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own ON app.members USING (user_id = auth.uid());
             CREATE POLICY team ON app.team_notes FOR SELECT
                 USING (team IN (SELECT team FROM app.members WHERE user_id = auth.uid()));
             ALTER DATABASE \"{dbname}\" SET search_path = app, public;"
        ))
        .await
        .expect("schema");
    // New connections take the database's search_path.
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("plain again");
    let db = Db::connect_with(DbConfig::new(url).cache(make_cache(kind, &prefix())))
        .await
        .expect("cached");
    let alice = Uuid::new_v4();
    seed_team_notes(&db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    team_notes_agree(&db, &plain, &[alice], "alice joined (app schema)").await;
    db.delete::<Member>(1).await.expect("leave");
    team_notes_agree(&db, &plain, &[alice], "alice left (app schema)").await;
}

#[tokio::test]
async fn defect_policy_table_in_search_path_schema_redis() {
    search_path_schema(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_table_in_search_path_schema_memory() {
    search_path_schema(Kind::Memory).await;
}

/// The clock read through an I/O cast (`'now'::text::timestamptz`): no function id in
/// the stored expression (a `CoerceViaIO` node), yet `timestamptz_in('now')` is the
/// clock. The analysis sees no clock and caches the table for scopes.
async fn clock_through_io_cast(kind: Kind) {
    let env = setup(
        kind,
        &format!(
            "{SCHEMA}
             CREATE POLICY fresh ON offers FOR SELECT
                 USING (owner = auth.uid() AND expires_at > ('now'::text)::timestamptz);"
        ),
    )
    .await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    db.create(NewOffer {
        id: 1,
        owner: alice,
        expires_at: soon,
        body: "sale".into(),
    })
    .await
    .expect("offer");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    for _ in 0..2 {
        assert!(c.read::<Offer>(1).await.expect("read").is_some());
        assert_eq!(
            c.query::<Offer>().cached(60).count().await.expect("count"),
            1
        );
    }
    let left = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(300)).await;
    assert_eq!(
        p.read::<Offer>(1).await.expect("plain"),
        None,
        "oracle: expired"
    );
    assert_eq!(
        c.read::<Offer>(1).await.expect("read"),
        None,
        "cache on == cache off: the offer expired (policy reads the clock via an I/O cast)"
    );
    assert_eq!(
        c.query::<Offer>().cached(60).count().await.expect("count"),
        0,
        "cached count after expiry"
    );
}

#[tokio::test]
async fn defect_policy_reads_clock_through_io_cast_redis() {
    clock_through_io_cast(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_reads_clock_through_io_cast_memory() {
    clock_through_io_cast(Kind::Memory).await;
}

/// A policy tightened by DDL run through the cached handle itself: the analysis is
/// forgotten, but the scopes' copies made under the old policy stay (their names do
/// not change: the policy reads no table before or after). Alice keeps reading Bob's
/// note.
async fn policy_tightened_through_handle(kind: Kind) {
    let schema = "
        CREATE TABLE notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO authenticated, anon;
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY open ON notes FOR SELECT USING (true);
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewNote {
        id: 1,
        owner: bob,
        body: "bob's secret".into(),
    })
    .await
    .expect("note");
    let c = db.as_user(alice);
    for _ in 0..2 {
        assert!(c.read::<Note>(1).await.expect("read").is_some());
        assert_eq!(
            c.query::<Note>().cached(60).count().await.expect("count"),
            1
        );
    }
    db.execute_batch(
        "DROP POLICY open ON notes;
         CREATE POLICY own ON notes FOR SELECT USING (owner = auth.uid());",
    )
    .await
    .expect("tighten");
    let p = plain.as_user(alice);
    assert_eq!(p.read::<Note>(1).await.expect("plain"), None, "oracle");
    let by_key = c.read::<Note>(1).await.expect("read");
    let counted = c.query::<Note>().cached(60).count().await.expect("count");
    assert_eq!(
        (by_key.map(|n| n.body), counted),
        (None, 0),
        "after DROP/CREATE POLICY through this very handle, alice still reads bob's note"
    );
}

#[tokio::test]
async fn defect_policy_tightened_through_handle_redis() {
    policy_tightened_through_handle(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_tightened_through_handle_memory() {
    policy_tightened_through_handle(Kind::Memory).await;
}

/// The same with the other direction, and with RLS switched off: cached absences
/// survive a policy that now shows the row.
#[tokio::test]
async fn defect_policy_loosened_through_handle_memory() {
    let env = setup(Kind::Memory, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewNote {
        id: 1,
        owner: bob,
        body: "bob's".into(),
    })
    .await
    .expect("note");
    let c = db.as_user(alice);
    for _ in 0..2 {
        assert_eq!(c.read::<Note>(1).await.expect("read"), None);
    }
    db.execute_batch("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
        .await
        .expect("rls off");
    let want = plain.as_user(alice).read::<Note>(1).await.expect("plain");
    assert!(want.is_some(), "oracle: RLS is off, the row shows");
    assert_eq!(
        c.read::<Note>(1).await.expect("read"),
        want,
        "RLS disabled through this handle; the cached absence still answers"
    );
}

/// DDL inside a transaction forgets the policy analysis at once, before COMMIT: a
/// scoped read in between analyses the old policies (the catalog as committed) and
/// keeps that analysis after COMMIT. Its copies are then versioned by nothing, and a
/// membership change never reaches them.
async fn ddl_in_transaction(kind: Kind) {
    let schema = "
        CREATE TABLE members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
        CREATE TABLE team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON members, team_notes TO authenticated, anon;
        ALTER TABLE members ENABLE ROW LEVEL SECURITY;
        ALTER TABLE team_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON members USING (user_id = auth.uid());
        CREATE POLICY open ON team_notes FOR SELECT USING (team = 10);
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (env.db.clone(), env.plain.clone());
    let alice = Uuid::new_v4();
    seed_team_notes(&db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    // First use: the analysis of the `open` policy (no table read) is made and kept.
    assert!(
        db.as_user(alice)
            .read::<TeamNote>(2)
            .await
            .expect("read")
            .is_some()
    );
    let reader = db
        .transaction(|tx| {
            let db = db.clone();
            async move {
                tx.execute_batch(
                    "DROP POLICY open ON team_notes;
                     CREATE POLICY team ON team_notes FOR SELECT
                         USING (team IN (SELECT team FROM members WHERE user_id = auth.uid()));",
                )
                .await?;
                // Another request, meanwhile: it analyses the policies before COMMIT,
                // then waits for the table's lock.
                let reader =
                    tokio::spawn(async move { db.as_user(alice).read::<TeamNote>(1).await });
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok(reader)
            }
        })
        .await
        .expect("ddl transaction");
    let first = reader.await.expect("join").expect("read");
    assert!(first.is_some(), "alice is in team 10");
    team_notes_agree(&db, &plain, &[alice], "after the DDL transaction").await;
    db.delete::<Member>(1).await.expect("leave");
    team_notes_agree(
        &db,
        &plain,
        &[alice],
        "alice left, after the DDL transaction",
    )
    .await;
}

#[tokio::test]
async fn defect_policy_ddl_in_transaction_keeps_stale_analysis_redis() {
    ddl_in_transaction(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_ddl_in_transaction_keeps_stale_analysis_memory() {
    ddl_in_transaction(Kind::Memory).await;
}

/// A policy reading a setting the connection (not the scope) fixes:
/// `current_setting('app.tenant')` is trusted as "the role or the settings, fixed for a
/// scope", but two handles whose connections set it differently share one cache.
#[tokio::test]
async fn defect_connection_setting_in_policy_shared_between_handles_memory() {
    let schema = "
        CREATE TABLE tenant_notes (id int8 PRIMARY KEY, tenant int8 NOT NULL,
                                   owner uuid NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_notes TO authenticated, anon;
        ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY t ON tenant_notes FOR SELECT
            USING (owner = auth.uid() AND tenant = current_setting('app.tenant')::int8);
    ";
    let env = setup(Kind::Memory, schema).await;
    let alice = Uuid::new_v4();
    env.plain
        .create(NewTenantNote {
            id: 1,
            tenant: 1,
            owner: alice,
            body: "tenant 1 only".into(),
        })
        .await
        .expect("note");
    let with = |tenant: i64| {
        let sep = if env.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20app.tenant%3D{tenant}", env.url)
    };
    let t1 = Db::connect_with(DbConfig::new(with(1)).cache(env.cache.clone()))
        .await
        .expect("tenant 1");
    let t2 = Db::connect_with(DbConfig::new(with(2)).cache(env.cache.clone()))
        .await
        .expect("tenant 2");
    let t2_plain = Db::connect_with(DbConfig::new(with(2)))
        .await
        .expect("t2 plain");
    assert!(
        t1.as_user(alice)
            .read::<TenantNote>(1)
            .await
            .expect("t1")
            .is_some()
    );
    assert!(
        t1.as_user(alice)
            .read::<TenantNote>(1)
            .await
            .expect("t1")
            .is_some()
    );
    assert_eq!(
        t2_plain
            .as_user(alice)
            .read::<TenantNote>(1)
            .await
            .expect("oracle"),
        None,
        "oracle: tenant 2 does not see it"
    );
    assert_eq!(
        t2.as_user(alice)
            .read::<TenantNote>(1)
            .await
            .expect("t2")
            .map(|n| n.body),
        None,
        "tenant 2's handle is served tenant 1's copy"
    );
}

/// A policy reading a partitioned table; the application writes one of its
/// partitions through a model of its own: the partition's counter moves, the
/// partitioned table's (the one the analysis versions by) does not.
async fn partition_written_directly(kind: Kind) {
    let schema = "
        CREATE TABLE pmembers (id int8 NOT NULL, team int8 NOT NULL, user_id uuid NOT NULL,
                               PRIMARY KEY (id, team)) PARTITION BY LIST (team);
        CREATE TABLE pmembers_10 PARTITION OF pmembers FOR VALUES IN (10);
        CREATE TABLE pmembers_20 PARTITION OF pmembers FOR VALUES IN (20);
        CREATE UNIQUE INDEX ON pmembers_10 (id);
        CREATE TABLE pteam_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON pmembers, pmembers_10, pteam_notes
            TO authenticated, anon;
        ALTER TABLE pteam_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY team ON pteam_notes FOR SELECT
            USING (team IN (SELECT team FROM pmembers WHERE user_id = auth.uid()));
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewPTeamNote {
        id: 1,
        team: 10,
        body: "plans".into(),
    })
    .await
    .expect("note");
    db.create(NewPMember10 {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("join");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    for _ in 0..2 {
        assert!(c.read::<PTeamNote>(1).await.expect("read").is_some());
    }
    db.delete::<PMember10>(1).await.expect("leave");
    assert_eq!(p.read::<PTeamNote>(1).await.expect("plain"), None, "oracle");
    assert_eq!(
        c.read::<PTeamNote>(1).await.expect("read").map(|n| n.body),
        None,
        "alice left (a write to the partition the policy reads through its parent)"
    );
}

#[tokio::test]
async fn defect_policy_reads_partitioned_table_written_by_partition_redis() {
    partition_written_directly(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_reads_partitioned_table_written_by_partition_memory() {
    partition_written_directly(Kind::Memory).await;
}

// ====================================================================== held

/// Every way Tabula writes the membership table, and hand-written SQL followed by
/// `invalidate`/`invalidate_table`, and a cascade into it: the team notes the scopes
/// see follow each time.
async fn membership_writes(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let users = [alice, bob];
    seed_team_notes(db).await;
    team_notes_agree(db, plain, &users, "nobody is a member").await;
    db.create_many(vec![member(1, 10, alice), member(2, 20, bob)])
        .await
        .expect("create_many");
    team_notes_agree(db, plain, &users, "create_many").await;
    assert_team_notes_cached(db, plain, alice).await;
    db.insert_many(vec![member(3, 20, alice)])
        .await
        .expect("insert_many");
    team_notes_agree(db, plain, &users, "insert_many").await;
    db.upsert(member(3, 10, bob), Member::ID)
        .await
        .expect("upsert");
    team_notes_agree(db, plain, &users, "upsert moves row 3 to bob/10").await;
    db.update_where(
        Member::USER_ID.eq(alice),
        MemberPatch {
            team: Some(20),
            ..Default::default()
        },
    )
    .await
    .expect("update_where");
    team_notes_agree(db, plain, &users, "update_where").await;
    db.delete_where(Member::USER_ID.eq(bob))
        .await
        .expect("delete_where");
    team_notes_agree(db, plain, &users, "delete_where").await;
    db.transaction(|tx| async move {
        tx.create(member(5, 10, bob)).await?;
        tx.update::<Member>(
            1,
            MemberPatch {
                team: Some(10),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    })
    .await
    .expect("tx");
    team_notes_agree(db, plain, &users, "transaction committed").await;
    let rolled: tabula::Result<()> = db
        .transaction(|tx| async move {
            tx.delete::<Member>(5).await?;
            Err(tabula::Error::Validation("roll back".into()))
        })
        .await;
    assert!(rolled.is_err());
    team_notes_agree(db, plain, &users, "transaction rolled back").await;
    // A scoped write of the membership table by its member.
    db.as_user(bob)
        .delete::<Member>(5)
        .await
        .expect("scoped delete");
    team_notes_agree(db, plain, &users, "bob left through his own scope").await;
    // Hand-written SQL, then invalidate by key.
    plain
        .execute_batch(&format!("INSERT INTO members VALUES (6, 20, '{bob}')"))
        .await
        .expect("raw");
    db.invalidate::<Member>(&[6]).await;
    team_notes_agree(db, plain, &users, "raw insert + invalidate").await;
    plain
        .execute_batch("UPDATE members SET team = 10 WHERE id = 6")
        .await
        .expect("raw");
    db.invalidate_table::<Member>().await;
    team_notes_agree(db, plain, &users, "raw update + invalidate_table").await;
    // A cascade: team 10 goes, with its memberships.
    db.delete::<Team>(10).await.expect("delete team");
    team_notes_agree(db, plain, &users, "cascade from teams").await;
}

#[tokio::test]
async fn membership_writes_every_way_redis() {
    membership_writes(Kind::Redis).await;
}

#[tokio::test]
async fn membership_writes_every_way_memory() {
    membership_writes(Kind::Memory).await;
}

#[tokio::test]
async fn membership_writes_every_way_near() {
    membership_writes(Kind::Near).await;
}

/// Soft delete and restore of the membership (a policy that reads the marker).
async fn soft_membership(kind: Kind) {
    let schema = "
        CREATE TABLE soft_members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL,
                                   deleted_at timestamptz);
        CREATE TABLE soft_team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON soft_members, soft_team_notes TO authenticated;
        ALTER TABLE soft_team_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY team ON soft_team_notes FOR SELECT
            USING (team IN (SELECT team FROM soft_members
                            WHERE user_id = auth.uid() AND deleted_at IS NULL));
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewSoftTeamNote {
        id: 1,
        team: 10,
        body: "x".into(),
    })
    .await
    .expect("note");
    db.create(NewSoftMember {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("member");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    let check = |label: &'static str| {
        let (c, p) = (c.clone(), p.clone());
        async move {
            for _ in 0..2 {
                assert_eq!(
                    c.read::<SoftTeamNote>(1).await.expect("read"),
                    p.read::<SoftTeamNote>(1).await.expect("plain"),
                    "{label}"
                );
                assert_eq!(
                    c.query::<SoftTeamNote>()
                        .cached(60)
                        .count()
                        .await
                        .expect("c"),
                    p.query::<SoftTeamNote>().count().await.expect("c"),
                    "{label}: count"
                );
            }
        }
    };
    check("member").await;
    db.delete::<SoftMember>(1).await.expect("soft delete");
    check("soft deleted").await;
    db.restore::<SoftMember>(1).await.expect("restore");
    check("restored").await;
}

#[tokio::test]
async fn soft_delete_and_restore_of_membership_redis() {
    soft_membership(Kind::Redis).await;
}

#[tokio::test]
async fn soft_delete_and_restore_of_membership_memory() {
    soft_membership(Kind::Memory).await;
}

/// Transitivity: team notes' policy reads members, whose own policy reads org_admins
/// (admins see every membership). A write to org_admins changes what the team notes'
/// subquery sees.
async fn transitive(kind: Kind) {
    let schema = "
        CREATE TABLE members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
        CREATE TABLE team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        CREATE TABLE org_admins (id int8 PRIMARY KEY, user_id uuid NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON members, team_notes, org_admins TO authenticated;
        ALTER TABLE members ENABLE ROW LEVEL SECURITY;
        ALTER TABLE team_notes ENABLE ROW LEVEL SECURITY;
        ALTER TABLE org_admins ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own_or_admin ON members FOR SELECT USING (
            user_id = auth.uid()
            OR EXISTS (SELECT 1 FROM org_admins a WHERE a.user_id = auth.uid()));
        CREATE POLICY own ON org_admins FOR SELECT USING (user_id = auth.uid());
        CREATE POLICY team ON team_notes FOR SELECT
            USING (team IN (SELECT team FROM members));
        CREATE POLICY restrict_body ON team_notes AS RESTRICTIVE FOR SELECT
            USING (body <> 'hidden');
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    seed_team_notes(db).await;
    db.create(member(1, 10, bob)).await.expect("bob in 10");
    db.create(member(2, 20, alice)).await.expect("alice in 20");
    team_notes_agree(db, plain, &[alice, bob], "before alice is admin").await;
    db.create(NewOrgAdmin {
        id: 1,
        user_id: alice,
    })
    .await
    .expect("admin");
    team_notes_agree(db, plain, &[alice, bob], "alice is admin").await;
    assert_team_notes_cached(db, plain, alice).await;
    db.update::<TeamNote>(
        1,
        TeamNotePatch {
            body: Some("hidden".into()),
            ..Default::default()
        },
    )
    .await
    .expect("hide");
    team_notes_agree(db, plain, &[alice, bob], "restrictive policy hides note 1").await;
    db.delete::<OrgAdmin>(1).await.expect("not admin");
    team_notes_agree(db, plain, &[alice, bob], "alice no longer admin").await;
}

#[tokio::test]
async fn transitive_policies_and_restrictive_redis() {
    transitive(Kind::Redis).await;
}

#[tokio::test]
async fn transitive_policies_and_restrictive_memory() {
    transitive(Kind::Memory).await;
}

/// Scopes whose claims differ only a little never share copies, and each equals the
/// database's answer; `as_user` and the same claims through `as_claims` agree.
async fn claims_variants(kind: Kind) {
    let schema = format!(
        "{SCHEMA}
         CREATE TABLE org_notes (id int8 PRIMARY KEY, org text NOT NULL, body text NOT NULL);
         GRANT SELECT ON org_notes TO authenticated, anon, service_role;
         GRANT SELECT ON notes TO service_role;
         ALTER TABLE org_notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY org ON org_notes FOR SELECT
             USING (org = auth.jwt() ->> 'org'
                    OR org = current_setting('request.jwt.claims', true)::jsonb ->> 'org2');
         INSERT INTO org_notes VALUES (1, '1', 'int one'), (2, '1.0', 'float one'),
                                      (3, 'é', 'e acute'), (4, '\\u00e9', 'escaped');"
    );
    #[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[table(name = "org_notes", cache(ttl = 300))]
    struct OrgNote {
        #[table(primary_key)]
        id: i64,
        org: String,
        body: String,
    }
    let env = setup(kind, &schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewNote {
        id: 1,
        owner: alice,
        body: "alice's".into(),
    })
    .await
    .expect("note");
    let claims = vec![
        serde_json::json!({ "sub": alice, "role": "authenticated" }),
        serde_json::json!({ "role": "authenticated", "sub": alice }),
        serde_json::json!({ "sub": alice }),
        serde_json::json!({ "sub": alice.to_string().to_uppercase(), "role": "authenticated" }),
        serde_json::json!({ "sub": format!(" {alice}"), "role": "authenticated" }),
        serde_json::json!({ "sub": alice, "role": "anon" }),
        serde_json::json!({ "sub": alice, "role": "service_role" }),
        serde_json::json!({ "role": "service_role" }),
        serde_json::json!({ "role": "anon" }),
        serde_json::json!({ "org": 1 }),
        serde_json::json!({ "org": 1.0 }),
        serde_json::json!({ "org": "1" }),
        serde_json::json!({ "org": "1.0" }),
        serde_json::json!({ "org": "é" }),
        serde_json::json!({ "org": "\\u00e9" }),
        serde_json::json!({ "org2": "1" }),
        serde_json::json!({ "org": "1", "org2": "1.0" }),
        serde_json::json!({}),
    ];
    // Twice over, in both orders, so that each scope reads what the others filled.
    for round in 0..2 {
        let order: Vec<&serde_json::Value> = match round {
            0 => claims.iter().collect(),
            _ => claims.iter().rev().collect(),
        };
        for c in order {
            let (cached, oracle) = (
                db.as_claims(c.clone()).expect("claims"),
                plain.as_claims(c.clone()).expect("claims"),
            );
            for id in 1..=4 {
                assert_eq!(
                    cached.read::<OrgNote>(id).await.expect("read"),
                    oracle.read::<OrgNote>(id).await.expect("plain"),
                    "claims {c}: org note {id}"
                );
            }
            assert_eq!(
                cached.read::<Note>(1).await.expect("read"),
                oracle.read::<Note>(1).await.expect("plain"),
                "claims {c}: note 1"
            );
            assert_eq!(
                cached
                    .query::<OrgNote>()
                    .order_by(OrgNote::ID.asc())
                    .cached(60)
                    .all()
                    .await
                    .expect("q"),
                oracle
                    .query::<OrgNote>()
                    .order_by(OrgNote::ID.asc())
                    .all()
                    .await
                    .expect("q"),
                "claims {c}: cached all"
            );
        }
        for (cached, oracle) in [
            (db.as_user(alice), plain.as_user(alice)),
            (db.as_anon(), plain.as_anon()),
        ] {
            assert_eq!(
                cached.read::<Note>(1).await.expect("read"),
                oracle.read::<Note>(1).await.expect("plain")
            );
        }
    }
    // Not vacuous: the org notes are cached for a scope.
    let one = db
        .as_claims(serde_json::json!({ "org": "1" }))
        .expect("claims");
    plain
        .execute_batch("UPDATE org_notes SET body = 'behind' WHERE id = 1")
        .await
        .expect("b");
    assert_eq!(
        one.read::<OrgNote>(1).await.expect("read").map(|n| n.body),
        Some("int one".into()),
        "cached"
    );
}

#[tokio::test]
async fn claims_variants_never_cross_redis() {
    claims_variants(Kind::Redis).await;
}

#[tokio::test]
async fn claims_variants_never_cross_memory() {
    claims_variants(Kind::Memory).await;
}

/// A write lands between a scoped reader's database read and its fill — to the row
/// itself, or to the table the policy reads: the fill is refused.
async fn fill_race(kind: Kind, policy_table: bool, many: bool) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain, cache) = (env.db.clone(), env.plain.clone(), env.cache.clone());
    let alice = Uuid::new_v4();
    seed_team_notes(&db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    let (at_fill_tx, at_fill_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(std::sync::Mutex::new(Some((at_fill_tx, go_rx))));
    cache.set_fill_hook(Some(Arc::new(move || {
        let gates = gates.lock().ok().and_then(|mut g| g.take());
        Box::pin(async move {
            if let Some((at_fill, go)) = gates {
                let _ = at_fill.send(());
                let _ = go.await;
            }
        })
    })));
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            match many {
                true => db
                    .as_user(alice)
                    .read_many::<TeamNote>(&[1, 2])
                    .await
                    .map(|v| v[0].clone()),
                false => db.as_user(alice).read::<TeamNote>(1).await,
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), at_fill_rx)
        .await
        .expect("reader reached its fill")
        .expect("gate");
    if policy_table {
        db.delete::<Member>(1).await.expect("leave");
    } else {
        db.update::<TeamNote>(
            1,
            TeamNotePatch {
                body: Some("changed".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    }
    go_tx.send(()).expect("release");
    let old = reader.await.expect("join").expect("read");
    assert!(old.is_some(), "the reader read before the write");
    cache.set_fill_hook(None);
    team_notes_agree(&db, &plain, &[alice], "after the raced fill").await;
}

#[tokio::test]
async fn fill_race_row_write_redis() {
    fill_race(Kind::Redis, false, false).await;
}

#[tokio::test]
async fn fill_race_row_write_memory() {
    fill_race(Kind::Memory, false, false).await;
}

#[tokio::test]
async fn fill_race_policy_table_write_redis() {
    fill_race(Kind::Redis, true, false).await;
}

#[tokio::test]
async fn fill_race_policy_table_write_memory() {
    fill_race(Kind::Memory, true, false).await;
}

#[tokio::test]
async fn fill_race_policy_table_write_read_many_redis() {
    fill_race(Kind::Redis, true, true).await;
}

#[tokio::test]
async fn fill_race_policy_table_write_read_many_memory() {
    fill_race(Kind::Memory, true, true).await;
}

/// More scopes on one row than its hash holds (512): correct answers throughout, and
/// a write still reaches every scope.
async fn many_scopes(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let users: Vec<Uuid> = (0..600).map(|_| Uuid::new_v4()).collect();
    db.create(NewNote {
        id: 1,
        owner: users[0],
        body: "first".into(),
    })
    .await
    .expect("note");
    let check = |owner: Uuid, body: &'static str| {
        let users = users.clone();
        let db = db.clone();
        async move {
            for user in &users {
                let got = db.as_user(*user).read::<Note>(1).await.expect("read");
                let want = (*user == owner).then_some(body);
                assert_eq!(got.as_ref().map(|n| n.body.as_str()), want, "user {user}");
            }
        }
    };
    check(users[0], "first").await;
    check(users[0], "first").await;
    db.update::<Note>(
        1,
        NotePatch {
            owner: Some(users[599]),
            body: Some("moved".into()),
        },
    )
    .await
    .expect("move");
    check(users[599], "moved").await;
    // Reverse order: the most recent scopes first.
    for user in users.iter().rev().take(20) {
        assert_eq!(
            db.as_user(*user).read::<Note>(1).await.expect("read"),
            plain.as_user(*user).read::<Note>(1).await.expect("plain")
        );
    }
}

#[tokio::test]
async fn many_scopes_on_one_row_redis() {
    many_scopes(Kind::Redis).await;
}

#[tokio::test]
async fn many_scopes_on_one_row_memory() {
    many_scopes(Kind::Memory).await;
}

/// A scoped copy lives no longer than the model's TTL (1 s).
async fn ttl_expiry(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewShortNote {
        id: 1,
        owner: alice,
        body: "v1".into(),
    })
    .await
    .expect("note");
    let c = db.as_user(alice);
    for _ in 0..2 {
        assert_eq!(
            c.read::<ShortNote>(1).await.expect("r").map(|n| n.body),
            Some("v1".into())
        );
    }
    plain
        .execute_batch("UPDATE short_notes SET body = 'v2'")
        .await
        .expect("behind");
    assert_eq!(
        c.read::<ShortNote>(1).await.expect("r").map(|n| n.body),
        Some("v1".into()),
        "cached within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        c.read::<ShortNote>(1).await.expect("r").map(|n| n.body),
        Some("v2".into()),
        "expired after the TTL"
    );
    // A cached query with a 1 s TTL too.
    assert_eq!(
        c.query::<ShortNote>().cached(1).count().await.expect("c"),
        1
    );
    plain
        .execute_batch("DELETE FROM short_notes")
        .await
        .expect("behind");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        c.query::<ShortNote>().cached(1).count().await.expect("c"),
        0
    );
}

#[tokio::test]
async fn scoped_copies_expire_with_ttl_redis() {
    ttl_expiry(Kind::Redis).await;
}

#[tokio::test]
async fn scoped_copies_expire_with_ttl_memory() {
    ttl_expiry(Kind::Memory).await;
}

/// Two processes (two caches on one Redis prefix, each with a near tier): a
/// membership write in one reaches the other's scoped cached queries.
#[tokio::test]
async fn near_tier_other_process_membership_write() {
    let env = setup(Kind::Near, SCHEMA).await;
    let (_, plain) = (&env.db, &env.plain);
    // A second "process": the same prefix — so build both from one prefix.
    let p = prefix();
    let a = Db::connect_with(DbConfig::new(env.url.clone()).cache(make_cache(Kind::Near, &p)))
        .await
        .expect("a");
    let b = Db::connect_with(DbConfig::new(env.url.clone()).cache(make_cache(Kind::Near, &p)))
        .await
        .expect("b");
    let alice = Uuid::new_v4();
    seed_team_notes(&a).await;
    b.create(member(1, 10, alice)).await.expect("join");
    tokio::time::sleep(Duration::from_millis(200)).await;
    team_notes_agree(&a, plain, &[alice], "near: member").await;
    b.delete::<Member>(1).await.expect("leave");
    tokio::time::sleep(Duration::from_millis(300)).await;
    team_notes_agree(&a, plain, &[alice], "near: left in the other process").await;
    b.create(member(2, 20, alice)).await.expect("join 20");
    tokio::time::sleep(Duration::from_millis(300)).await;
    team_notes_agree(&a, plain, &[alice], "near: joined 20 in the other process").await;
}

/// Redis frozen while a write happens (its invalidation is lost), then thawed: no
/// scoped copy from before the write answers.
#[tokio::test]
async fn lost_invalidation_drops_scoped_copies() {
    let redis = tabula::testkit::PrivateRedis::start().expect("private redis");
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("plain");
    plain.execute_batch(SCHEMA).await.expect("schema");
    let cache = CacheService::redis(
        &redis.url(),
        CacheConfig::default()
            .prefix(prefix())
            .deadline(Duration::from_millis(200)),
    )
    .expect("cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    let alice = Uuid::new_v4();
    seed_team_notes(&db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    team_notes_agree(&db, &plain, &[alice], "before").await;
    redis.pause();
    db.delete::<Member>(1)
        .await
        .expect("leave while redis is frozen");
    redis.resume();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    team_notes_agree(&db, &plain, &[alice], "after the lost invalidation").await;
    // And after a restart (empty Redis) with a change behind the back + invalidate.
    redis.stop();
    redis.restart().expect("restart");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    team_notes_agree(&db, &plain, &[alice], "after restart").await;
}

/// Scoped cached reads' futures are `Send` (spawnable).
#[test]
fn scoped_cached_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    fn check(db: Db) {
        let scoped = db.as_user(Uuid::nil());
        assert_send(scoped.read::<TeamNote>(1));
        assert_send(scoped.read_many::<TeamNote>(&[1]));
        assert_send(scoped.warm::<TeamNote>(&[1]));
        assert_send(scoped.query::<TeamNote>().cached(5).all());
        assert_send(scoped.query::<TeamNote>().cached(5).count());
        assert_send(scoped.query::<TeamNote>().cached(5).first());
        assert_send(scoped.query::<TeamNote>().cached(5).exists());
        assert_send(scoped.query::<TeamNote>().cached(5).one());
        assert_send(
            scoped
                .query::<TeamNote>()
                .order_by(TeamNote::ID.asc())
                .cached(5)
                .page(2, None),
        );
        assert_send(scoped.invalidate::<TeamNote>(&[1]));
    }
    let _ = check;
}

/// Policies the analysis must keep uncached, spelled other ways: `now()` inside
/// `EXISTS`, a STABLE SQL function, a view, `statement_timestamp()`, `LOCALTIMESTAMP`,
/// `CURRENT_DATE`, `random()`. Each: a change behind the cache's back shows at once.
async fn uncacheable(kind: Kind) {
    let policies = [
        "owner = auth.uid() AND EXISTS (SELECT 1 WHERE now() > '2000-01-01')",
        "owner = auth.uid() AND public.stable_true()",
        "owner = auth.uid() AND EXISTS (SELECT 1 FROM public.a_view)",
        "owner = auth.uid() AND statement_timestamp() > '2000-01-01'",
        "owner = auth.uid() AND LOCALTIMESTAMP > '2000-01-01'",
        "owner = auth.uid() AND CURRENT_DATE > '2000-01-01'",
        "owner = auth.uid() AND random() < 2",
        "owner = auth.uid() AND EXISTS (SELECT 1 FROM public.a_matview)",
    ];
    for policy in policies {
        let env = setup(
            kind,
            &format!(
                "{SCHEMA}
                 CREATE FUNCTION public.stable_true() RETURNS bool LANGUAGE sql STABLE AS 'SELECT true';
                 CREATE VIEW public.a_view AS SELECT 1 AS one;
                 CREATE MATERIALIZED VIEW public.a_matview AS SELECT 1 AS one;
                 GRANT SELECT ON public.a_view, public.a_matview TO authenticated;
                 CREATE POLICY p ON offers FOR SELECT USING ({policy});"
            ),
        )
        .await;
        let (db, plain) = (&env.db, &env.plain);
        let alice = Uuid::new_v4();
        db.create(NewOffer {
            id: 1,
            owner: alice,
            expires_at: chrono::Utc::now(),
            body: "v1".into(),
        })
        .await
        .expect("offer");
        let c = db.as_user(alice);
        for _ in 0..2 {
            assert!(
                c.read::<Offer>(1).await.expect("read").is_some(),
                "{policy}"
            );
        }
        plain
            .execute_batch("UPDATE offers SET body = 'v2'")
            .await
            .expect("behind");
        assert_eq!(
            c.read::<Offer>(1).await.expect("read").map(|o| o.body),
            Some("v2".into()),
            "uncached under policy {policy}"
        );
    }
}

#[tokio::test]
async fn uncacheable_policies_stay_uncached_memory() {
    uncacheable(Kind::Memory).await;
}

// ====================================================================== more (round 12b)

/// Control for the DDL-in-transaction finding: the same transaction with no read in
/// between — the analysis made after COMMIT is right.
async fn ddl_in_transaction_control(kind: Kind) {
    let schema = "
        CREATE TABLE members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
        CREATE TABLE team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON members, team_notes TO authenticated, anon;
        ALTER TABLE members ENABLE ROW LEVEL SECURITY;
        ALTER TABLE team_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON members USING (user_id = auth.uid());
        CREATE POLICY open ON team_notes FOR SELECT USING (team = 10);
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (env.db.clone(), env.plain.clone());
    let alice = Uuid::new_v4();
    seed_team_notes(&db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    assert!(
        db.as_user(alice)
            .read::<TeamNote>(2)
            .await
            .expect("read")
            .is_some()
    );
    db.transaction(|tx| async move {
        tx.execute_batch(
            "DROP POLICY open ON team_notes;
             CREATE POLICY team ON team_notes FOR SELECT
                 USING (team IN (SELECT team FROM members WHERE user_id = auth.uid()));",
        )
        .await
    })
    .await
    .expect("ddl transaction");
    team_notes_agree(&db, &plain, &[alice], "control: after the DDL transaction").await;
    db.delete::<Member>(1).await.expect("leave");
    team_notes_agree(&db, &plain, &[alice], "control: alice left").await;
}

#[tokio::test]
async fn control_policy_ddl_in_transaction_without_concurrent_read_redis() {
    ddl_in_transaction_control(Kind::Redis).await;
}

#[tokio::test]
async fn control_policy_ddl_in_transaction_without_concurrent_read_memory() {
    ddl_in_transaction_control(Kind::Memory).await;
}

/// The documented remedy after a policy change made elsewhere (another process's
/// migration): `invalidate_table` on the policy's table drops the old copies.
async fn invalidate_table_after_outside_policy_change(kind: Kind) {
    let schema = "
        CREATE TABLE notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO authenticated, anon;
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY open ON notes FOR SELECT USING (true);
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewNote {
        id: 1,
        owner: bob,
        body: "bob's".into(),
    })
    .await
    .expect("note");
    let c = db.as_user(alice);
    for _ in 0..2 {
        assert!(c.read::<Note>(1).await.expect("read").is_some());
        assert_eq!(
            c.query::<Note>().cached(60).count().await.expect("count"),
            1
        );
    }
    plain
        .execute_batch(
            "DROP POLICY open ON notes;
             CREATE POLICY own ON notes FOR SELECT USING (owner = auth.uid());",
        )
        .await
        .expect("tighten elsewhere");
    db.invalidate_table::<Note>().await;
    assert_eq!(c.read::<Note>(1).await.expect("read"), None);
    assert_eq!(
        c.query::<Note>().cached(60).count().await.expect("count"),
        0
    );
}

#[tokio::test]
async fn invalidate_table_after_outside_policy_change_redis() {
    invalidate_table_after_outside_policy_change(Kind::Redis).await;
}

#[tokio::test]
async fn invalidate_table_after_outside_policy_change_memory() {
    invalidate_table_after_outside_policy_change(Kind::Memory).await;
}

/// Supabase's recommended spellings — `(SELECT auth.uid())` (an initplan), an
/// IMMUTABLE pass-through function, claims read through `auth.jwt()` — are cached and
/// stay right through owner changes; a custom operator over a STABLE clock function
/// keeps the table uncached.
async fn supabase_spellings(kind: Kind) {
    let schema = format!(
        "{SCHEMA}
         CREATE FUNCTION public.same(uuid) RETURNS uuid LANGUAGE sql IMMUTABLE AS 'SELECT $1';
         CREATE POLICY p ON offers FOR SELECT USING (
             owner = (SELECT auth.uid())
             OR owner = public.same(auth.uid())
             OR owner::text = (auth.jwt() -> 'app_metadata' ->> 'delegate'));"
    );
    let env = setup(kind, &schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewOffer {
        id: 1,
        owner: alice,
        expires_at: chrono::Utc::now(),
        body: "v1".into(),
    })
    .await
    .expect("offer");
    let delegate = serde_json::json!({ "sub": bob, "app_metadata": { "delegate": alice } });
    let scopes = [
        (db.as_user(alice), plain.as_user(alice)),
        (db.as_user(bob), plain.as_user(bob)),
        (
            db.as_claims(delegate.clone()).expect("c"),
            plain.as_claims(delegate).expect("c"),
        ),
    ];
    for (c, p) in &scopes {
        for _ in 0..2 {
            assert_eq!(
                c.read::<Offer>(1).await.expect("r"),
                p.read::<Offer>(1).await.expect("r")
            );
        }
    }
    // Cached indeed: a change behind the back is not seen by alice.
    plain
        .execute_batch("UPDATE offers SET body = 'behind'")
        .await
        .expect("behind");
    assert_eq!(
        scopes[0]
            .0
            .read::<Offer>(1)
            .await
            .expect("r")
            .map(|o| o.body),
        Some("v1".into()),
        "(SELECT auth.uid()) policies are cached"
    );
    db.update::<Offer>(
        1,
        OfferPatch {
            owner: Some(bob),
            ..Default::default()
        },
    )
    .await
    .expect("give to bob");
    for (c, p) in &scopes {
        for _ in 0..2 {
            assert_eq!(
                c.read::<Offer>(1).await.expect("r"),
                p.read::<Offer>(1).await.expect("r")
            );
        }
    }
}

#[tokio::test]
async fn supabase_policy_spellings_redis() {
    supabase_spellings(Kind::Redis).await;
}

#[tokio::test]
async fn supabase_policy_spellings_memory() {
    supabase_spellings(Kind::Memory).await;
}

#[tokio::test]
async fn custom_operator_over_stable_function_stays_uncached() {
    let schema = format!(
        "{SCHEMA}
         CREATE FUNCTION public.later_than_now(timestamptz, timestamptz) RETURNS bool
             LANGUAGE sql STABLE AS 'SELECT $1 > now()';
         CREATE OPERATOR >>> (LEFTARG = timestamptz, RIGHTARG = timestamptz,
                              FUNCTION = public.later_than_now);
         CREATE POLICY p ON offers FOR SELECT
             USING (owner = auth.uid() AND expires_at >>> expires_at);"
    );
    let env = setup(Kind::Memory, &schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewOffer {
        id: 1,
        owner: alice,
        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        body: "v1".into(),
    })
    .await
    .expect("offer");
    let c = db.as_user(alice);
    for _ in 0..2 {
        assert!(c.read::<Offer>(1).await.expect("r").is_some());
    }
    plain
        .execute_batch("UPDATE offers SET body = 'v2'")
        .await
        .expect("behind");
    assert_eq!(
        c.read::<Offer>(1).await.expect("r").map(|o| o.body),
        Some("v2".into()),
        "uncached"
    );
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "slug_notes", cache(ttl = 300))]
struct SlugNote {
    #[table(primary_key)]
    id: i64,
    #[table(unique)]
    slug: String,
    owner: Uuid,
}

/// The service role warms a unique value's mapping and the row; a scope's finder
/// never gets a row its policy hides, and follows an owner change.
async fn unique_finder(kind: Kind) {
    let schema = "
        CREATE TABLE slug_notes (id int8 PRIMARY KEY, slug text UNIQUE NOT NULL, owner uuid NOT NULL);
        GRANT SELECT ON slug_notes TO authenticated, anon;
        ALTER TABLE slug_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON slug_notes FOR SELECT USING (owner = auth.uid());
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewSlugNote {
        id: 1,
        slug: "a".into(),
        owner: bob,
    })
    .await
    .expect("note");
    for _ in 0..2 {
        assert!(SlugNote::by_slug(db, "a").await.expect("by").is_some());
        assert_eq!(
            SlugNote::by_slug(&db.as_user(alice), "a")
                .await
                .expect("by"),
            None
        );
        assert_eq!(
            db.as_user(alice).read::<SlugNote>(1).await.expect("r"),
            None
        );
        assert!(
            SlugNote::by_slug(&db.as_user(bob), "a")
                .await
                .expect("by")
                .is_some()
        );
    }
    db.update::<SlugNote>(
        1,
        SlugNotePatch {
            owner: Some(alice),
            ..Default::default()
        },
    )
    .await
    .expect("give");
    for u in [alice, bob] {
        assert_eq!(
            SlugNote::by_slug(&db.as_user(u), "a").await.expect("by"),
            SlugNote::by_slug(&plain.as_user(u), "a").await.expect("by")
        );
        assert_eq!(
            db.as_user(u).read::<SlugNote>(1).await.expect("r"),
            plain.as_user(u).read::<SlugNote>(1).await.expect("r")
        );
    }
}

#[tokio::test]
async fn scoped_unique_finder_never_leaks_redis() {
    unique_finder(Kind::Redis).await;
}

#[tokio::test]
async fn scoped_unique_finder_never_leaks_memory() {
    unique_finder(Kind::Memory).await;
}

/// A stale window and a tag on a scoped cached query: a membership write drops it at
/// once (not after TTL + stale); `invalidate_tag` too.
async fn stale_and_tag(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    seed_team_notes(db).await;
    db.create(member(1, 10, alice)).await.expect("join");
    let c = db.as_user(alice);
    let count = || {
        let c = c.clone();
        async move {
            c.query::<TeamNote>()
                .cached(1)
                .stale(60)
                .tag("t")
                .count()
                .await
                .expect("count")
        }
    };
    assert_eq!(count().await, 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(count().await, 2, "stale window");
    db.delete::<Member>(1).await.expect("leave");
    assert_eq!(
        count().await,
        0,
        "a membership write drops a stale-window entry at once"
    );
    db.create(member(2, 20, alice)).await.expect("join 20");
    assert_eq!(count().await, 2);
    plain
        .execute_batch("DELETE FROM team_notes WHERE id = 3")
        .await
        .expect("behind");
    assert_eq!(count().await, 2, "cached");
    db.invalidate_tag("t").await;
    assert_eq!(count().await, 1, "tag dropped it");
}

#[tokio::test]
async fn scoped_stale_window_and_tag_redis() {
    stale_and_tag(Kind::Redis).await;
}

#[tokio::test]
async fn scoped_stale_window_and_tag_memory() {
    stale_and_tag(Kind::Memory).await;
}

/// Memberships written inside the member's own scoped transaction: committed, they
/// show; rolled back or panicking, nothing changes.
async fn scoped_transactions(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    seed_team_notes(db).await;
    team_notes_agree(db, plain, &[alice], "none").await;
    let rolled: tabula::Result<()> = db
        .as_user(alice)
        .transaction(|tx| async move {
            tx.create(member(1, 10, alice)).await?;
            assert!(
                tx.read::<TeamNote>(1).await?.is_some(),
                "own write seen inside"
            );
            Err(tabula::Error::Validation("no".into()))
        })
        .await;
    assert!(rolled.is_err());
    team_notes_agree(db, plain, &[alice], "rolled back").await;
    let scoped = db.as_user(alice);
    let panicked = tokio::spawn(async move {
        let _: tabula::Result<()> = scoped
            .transaction(|tx| async move {
                tx.create(member(1, 10, alice)).await?;
                panic!("inside");
            })
            .await;
    })
    .await;
    assert!(panicked.is_err());
    team_notes_agree(db, plain, &[alice], "panicked").await;
    db.as_user(alice)
        .transaction(|tx| async move {
            tx.create(member(1, 10, alice)).await?;
            tx.create(member(2, 20, alice)).await?;
            Ok(())
        })
        .await
        .expect("commit");
    team_notes_agree(db, plain, &[alice], "committed").await;
}

#[tokio::test]
async fn scoped_transactions_on_policy_table_redis() {
    scoped_transactions(Kind::Redis).await;
}

#[tokio::test]
async fn scoped_transactions_on_policy_table_memory() {
    scoped_transactions(Kind::Memory).await;
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "Members", cache(ttl = 300))]
struct UpperMember {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "Team Notes", cache(ttl = 300))]
struct UpperTeamNote {
    #[table(primary_key)]
    id: i64,
    team: i64,
    body: String,
}

/// Quoted, mixed-case table names on both sides of the policy.
async fn quoted_names(kind: Kind) {
    let schema = "
        CREATE TABLE \"Members\" (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
        CREATE TABLE \"Team Notes\" (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON \"Members\", \"Team Notes\" TO authenticated;
        ALTER TABLE \"Team Notes\" ENABLE ROW LEVEL SECURITY;
        CREATE POLICY team ON \"Team Notes\" FOR SELECT
            USING (team IN (SELECT team FROM \"Members\" WHERE user_id = auth.uid()));
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewUpperTeamNote {
        id: 1,
        team: 10,
        body: "x".into(),
    })
    .await
    .expect("note");
    db.create(NewUpperMember {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("join");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    for _ in 0..2 {
        assert!(c.read::<UpperTeamNote>(1).await.expect("r").is_some());
    }
    db.delete::<UpperMember>(1).await.expect("leave");
    assert_eq!(
        c.read::<UpperTeamNote>(1).await.expect("r"),
        p.read::<UpperTeamNote>(1).await.expect("r")
    );
}

#[tokio::test]
async fn quoted_mixed_case_names_redis() {
    quoted_names(Kind::Redis).await;
}

#[tokio::test]
async fn quoted_mixed_case_names_memory() {
    quoted_names(Kind::Memory).await;
}

#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "pmembers", cache(ttl = 300))]
struct PMember {
    #[table(primary_key)]
    id: i64,
    team: i64,
    user_id: Uuid,
}

/// The other direction of the partition finding: the policy reads one partition, the
/// application writes the partitioned table through its model.
async fn partition_read_parent_written(kind: Kind) {
    let schema = "
        CREATE TABLE pmembers (id int8 NOT NULL, team int8 NOT NULL, user_id uuid NOT NULL,
                               PRIMARY KEY (id, team)) PARTITION BY LIST (team);
        CREATE TABLE pmembers_10 PARTITION OF pmembers FOR VALUES IN (10);
        CREATE TABLE pmembers_20 PARTITION OF pmembers FOR VALUES IN (20);
        CREATE TABLE pteam_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON pmembers, pmembers_10, pteam_notes
            TO authenticated, anon;
        ALTER TABLE pteam_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY team ON pteam_notes FOR SELECT
            USING (team = 10 AND EXISTS (SELECT 1 FROM pmembers_10 WHERE user_id = auth.uid()));
    ";
    let env = setup(kind, schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewPTeamNote {
        id: 1,
        team: 10,
        body: "plans".into(),
    })
    .await
    .expect("note");
    db.create(NewPMember {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("join");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    for _ in 0..2 {
        assert!(c.read::<PTeamNote>(1).await.expect("read").is_some());
    }
    db.delete::<PMember>(1).await.expect("leave");
    assert_eq!(p.read::<PTeamNote>(1).await.expect("plain"), None, "oracle");
    assert_eq!(
        c.read::<PTeamNote>(1).await.expect("read").map(|n| n.body),
        None,
        "alice left (a write to the partitioned table; the policy reads its partition)"
    );
}

#[tokio::test]
async fn defect_policy_reads_partition_written_through_parent_redis() {
    partition_read_parent_written(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_reads_partition_written_through_parent_memory() {
    partition_read_parent_written(Kind::Memory).await;
}

/// A user-defined aggregate is always `IMMUTABLE` in `pg_proc` (PostgreSQL stores
/// aggregates so, whatever their transition function does): a policy calling one
/// whose transition function reads the clock is taken for cacheable.
async fn aggregate_hides_clock(kind: Kind) {
    let schema = format!(
        "{SCHEMA}
         CREATE FUNCTION public.still_future(bool, timestamptz) RETURNS bool
             LANGUAGE sql STABLE AS 'SELECT coalesce($1, true) AND $2 > now()';
         CREATE AGGREGATE public.all_future(timestamptz) (sfunc = public.still_future, stype = bool);
         CREATE POLICY fresh ON offers FOR SELECT USING (
             owner = auth.uid()
             AND (SELECT public.all_future(t) FROM (VALUES (offers.expires_at)) v (t)));"
    );
    let env = setup(kind, &schema).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    db.create(NewOffer {
        id: 1,
        owner: alice,
        expires_at: soon,
        body: "sale".into(),
    })
    .await
    .expect("offer");
    let (c, p) = (db.as_user(alice), plain.as_user(alice));
    for _ in 0..2 {
        assert!(c.read::<Offer>(1).await.expect("read").is_some());
    }
    let left = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(300)).await;
    assert_eq!(
        p.read::<Offer>(1).await.expect("plain"),
        None,
        "oracle: expired"
    );
    assert_eq!(
        c.read::<Offer>(1).await.expect("read").map(|o| o.body),
        None,
        "the offer expired (policy reads the clock inside a user-defined aggregate)"
    );
}

#[tokio::test]
async fn defect_policy_reads_clock_through_aggregate_redis() {
    aggregate_hides_clock(Kind::Redis).await;
}

#[tokio::test]
async fn defect_policy_reads_clock_through_aggregate_memory() {
    aggregate_hides_clock(Kind::Memory).await;
}

/// Claims near the 64 KiB limit work on both backends (the scope id is a hash; the
/// claims travel as a bound parameter); past it, a validation error.
async fn large_claims(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (&env.db, &env.plain);
    let alice = Uuid::new_v4();
    db.create(NewNote {
        id: 1,
        owner: alice,
        body: "a".into(),
    })
    .await
    .expect("note");
    let pad = "x".repeat(60 * 1024);
    let big = serde_json::json!({ "sub": alice, "role": "authenticated", "pad": pad });
    let c = db.as_claims(big.clone()).expect("60 KiB claims");
    let p = plain.as_claims(big).expect("60 KiB claims");
    for _ in 0..2 {
        assert_eq!(
            c.read::<Note>(1).await.expect("r"),
            p.read::<Note>(1).await.expect("r")
        );
        assert_eq!(c.query::<Note>().cached(60).count().await.expect("c"), 1);
    }
    let other_pad = "y".repeat(60 * 1024);
    let other = db
        .as_claims(serde_json::json!({ "sub": Uuid::new_v4(), "pad": other_pad }))
        .expect("other");
    assert_eq!(other.read::<Note>(1).await.expect("r"), None);
    let too_big = serde_json::json!({ "sub": alice, "pad": "z".repeat(64 * 1024) });
    assert!(matches!(
        db.as_claims(too_big),
        Err(tabula::Error::Validation(_))
    ));
}

#[tokio::test]
async fn large_claims_redis() {
    large_claims(Kind::Redis).await;
}

#[tokio::test]
async fn large_claims_memory() {
    large_claims(Kind::Memory).await;
}

/// Stress: background scoped readers keep filling while memberships flip; after each
/// flip completes, a fresh read by key, by read_many and by cached count must show
/// the new state.
async fn stress(kind: Kind) {
    let env = setup(kind, SCHEMA).await;
    let (db, plain) = (env.db.clone(), env.plain.clone());
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    seed_team_notes(&db).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut noise = Vec::new();
    for i in 0..4 {
        let (db, stop) = (db.clone(), stop.clone());
        let user = if i % 2 == 0 { alice } else { bob };
        noise.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = db.as_user(user);
                let _ = c.read::<TeamNote>(1).await;
                let _ = c.read_many::<TeamNote>(&[1, 2, 3]).await;
                let _ = c.query::<TeamNote>().cached(60).count().await;
                // In-process cache hits never return Pending: without this the loop
                // would hold its worker thread (see the report).
                tokio::task::yield_now().await;
            }
        }));
    }
    for round in 0..40_i64 {
        let team = if round % 2 == 0 { 10 } else { 20 };
        match round % 4 {
            0 => {
                db.create(member(round + 100, team, alice))
                    .await
                    .expect("join");
            }
            1 => {
                db.delete_where(Member::USER_ID.eq(alice))
                    .await
                    .expect("leave");
            }
            2 => {
                db.upsert(member(7, team, bob), Member::ID)
                    .await
                    .expect("upsert");
            }
            _ => {
                db.update_where(
                    Member::USER_ID.eq(bob),
                    MemberPatch {
                        team: Some(30 - team),
                        ..Default::default()
                    },
                )
                .await
                .expect("move");
            }
        }
        for user in [alice, bob] {
            let (c, p) = (db.as_user(user), plain.as_user(user));
            assert_eq!(
                c.read::<TeamNote>(1).await.expect("r"),
                p.read::<TeamNote>(1).await.expect("r"),
                "round {round}: read 1 for {user}"
            );
            assert_eq!(
                c.read_many::<TeamNote>(&[1, 3]).await.expect("m"),
                vec![
                    p.read::<TeamNote>(1).await.expect("r"),
                    p.read::<TeamNote>(3).await.expect("r")
                ],
                "round {round}: read_many for {user}"
            );
            assert_eq!(
                c.query::<TeamNote>().cached(60).count().await.expect("c"),
                p.query::<TeamNote>().count().await.expect("c"),
                "round {round}: count for {user}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for n in noise {
        n.await.expect("noise");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_membership_flips_under_concurrent_scoped_readers_redis() {
    stress(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_membership_flips_under_concurrent_scoped_readers_memory() {
    stress(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_membership_flips_under_concurrent_scoped_readers_near() {
    stress(Kind::Near).await;
}

/// Side observation (not specific to scopes): a scoped read answered by the
/// in-process backend never returns `Pending` and takes no cooperative budget, so a
/// task looping over hits holds its worker thread: on a current-thread runtime a
/// ticker spawned before 20 000 hits never runs during them.
#[tokio::test]
async fn side_memory_backend_hits_never_yield() {
    let env = setup(Kind::Memory, SCHEMA).await;
    let alice = Uuid::new_v4();
    env.db
        .create(NewNote {
            id: 1,
            owner: alice,
            body: "a".into(),
        })
        .await
        .expect("note");
    let c = env.db.as_user(alice);
    assert!(c.read::<Note>(1).await.expect("fill").is_some());
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::task::yield_now().await;
    let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20_000 {
        assert!(c.read::<Note>(1).await.expect("hit").is_some());
    }
    let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
    ticker.abort();
    assert!(
        during > 0,
        "20 000 scoped cache hits never let another task run"
    );
}

/// The deploy scenario: process 1 caches under the old policy; process 2 (a fresh
/// handle on the same Redis prefix, i.e. after a restart) runs the migration that
/// tightens the policy and serves requests. The doc says a policy change is seen "when
/// the handle runs DDL or restarts" — the copies in Redis are still served.
#[tokio::test]
async fn defect_policy_tightened_by_migration_after_restart_redis() {
    let schema = "
        CREATE TABLE notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
        GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO authenticated, anon;
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY open ON notes FOR SELECT USING (true);
    ";
    let env = setup(Kind::Redis, schema).await;
    let p = prefix();
    let v1 = Db::connect_with(DbConfig::new(env.url.clone()).cache(make_cache(Kind::Redis, &p)))
        .await
        .expect("v1");
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    v1.create(NewNote {
        id: 1,
        owner: bob,
        body: "bob's secret".into(),
    })
    .await
    .expect("note");
    for _ in 0..2 {
        assert!(
            v1.as_user(alice)
                .read::<Note>(1)
                .await
                .expect("r")
                .is_some()
        );
    }
    drop(v1);
    let v2 = Db::connect_with(DbConfig::new(env.url.clone()).cache(make_cache(Kind::Redis, &p)))
        .await
        .expect("v2");
    v2.execute_batch(
        "DROP POLICY open ON notes;
         CREATE POLICY own ON notes FOR SELECT USING (owner = auth.uid());",
    )
    .await
    .expect("migration");
    assert_eq!(
        env.plain
            .as_user(alice)
            .read::<Note>(1)
            .await
            .expect("oracle"),
        None
    );
    assert_eq!(
        v2.as_user(alice)
            .read::<Note>(1)
            .await
            .expect("r")
            .map(|n| n.body),
        None,
        "after the migration and a restart, alice is served bob's note from Redis"
    );
}
