//! Per-user caching under Row Level Security: a user-scoped handle reads its scope's
//! own copies of rows and query results — never another scope's, never the shared
//! ones — every write drops every scope's copy of a row, a write to a table a policy
//! reads drops what it decided, and a policy that reads the clock keeps its table out
//! of the cache. Every answer is compared with the same read on a handle without a
//! cache. Both backends.

mod common;

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

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

const SCHEMA: &str = "
    CREATE TABLE notes (id int8 PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
    CREATE TABLE members (id int8 PRIMARY KEY, team int8 NOT NULL, user_id uuid NOT NULL);
    CREATE TABLE team_notes (id int8 PRIMARY KEY, team int8 NOT NULL, body text NOT NULL);
    CREATE TABLE offers (id int8 PRIMARY KEY, owner uuid NOT NULL,
                         expires_at timestamptz NOT NULL, body text NOT NULL);
    GRANT SELECT, INSERT, UPDATE, DELETE ON notes, members, team_notes, offers
        TO authenticated, anon;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE members ENABLE ROW LEVEL SECURITY;
    ALTER TABLE team_notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE offers ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes USING (owner = auth.uid());
    CREATE POLICY own ON members FOR SELECT USING (user_id = auth.uid());
    CREATE POLICY team ON team_notes FOR SELECT
        USING (team IN (SELECT team FROM members WHERE user_id = auth.uid()));
    CREATE POLICY fresh ON offers FOR SELECT
        USING (owner = auth.uid() AND expires_at > CURRENT_TIMESTAMP);
";

/// A cached handle (Redis or in-process), an uncached one on the same database for
/// the expected answers and for writes behind the cache's back, both migrated.
async fn setup(redis: bool) -> (Db, Db) {
    let (_, url) = common::db_and_url().await;
    let config = CacheConfig::default()
        .prefix(format!(
            "sc{}x{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ))
        .deadline(std::time::Duration::from_secs(2));
    let cache = match redis {
        true => CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config),
        false => CacheService::in_memory(config),
    }
    .expect("cache");
    let cached = Db::connect_with(DbConfig::new(url.clone()).cache(cache).pool_size(4))
        .await
        .expect("cached db");
    let plain = Db::connect_with(DbConfig::new(url).pool_size(2))
        .await
        .expect("plain db");
    plain.execute_batch(SCHEMA).await.expect("schema");
    (cached, plain)
}

fn note(id: i64, owner: Uuid, body: &str) -> NewNote {
    NewNote {
        id,
        owner,
        body: body.into(),
    }
}

/// A patch giving a note to `owner` with `body`.
fn give(owner: Uuid, body: &str) -> NotePatch {
    NotePatch {
        owner: Some(owner),
        body: Some(body.into()),
    }
}

async fn two_users_a_warmer_and_foreign_ids(redis: bool) {
    let (db, plain) = setup(redis).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, owner) in [
        (1, alice),
        (2, alice),
        (3, alice),
        (4, bob),
        (5, bob),
        (6, bob),
    ] {
        db.create(note(id, owner, &format!("note {id}")))
            .await
            .expect("create");
    }
    // The service role warms the shared cache with every row, and an absence.
    let ids: Vec<i64> = (1..=7).collect();
    db.warm::<Note>(&ids).await.expect("warm");
    let mut cross = 0;
    for _round in 0..3 {
        for (user, other) in [(alice, bob), (bob, alice)] {
            let (cached, uncached) = (db.as_user(user), plain.as_user(user));
            for id in &ids {
                let got = cached.read::<Note>(*id).await.expect("cached read");
                let want = uncached.read::<Note>(*id).await.expect("plain read");
                assert_eq!(got, want, "user {user}, note {id}: cache on == cache off");
                cross += usize::from(got.is_some_and(|n| n.owner == other));
            }
            let many = cached.read_many::<Note>(&ids).await.expect("read_many");
            let want: Vec<Option<Note>> = {
                let mut all = Vec::new();
                for id in &ids {
                    all.push(uncached.read::<Note>(*id).await.expect("plain read"));
                }
                all
            };
            assert_eq!(many, want, "read_many for {user}");
            cross += many.iter().flatten().filter(|n| n.owner == other).count();
            let all = cached
                .query::<Note>()
                .order_by(Note::ID.asc())
                .cached(60)
                .all()
                .await
                .expect("cached query");
            let want = uncached
                .query::<Note>()
                .order_by(Note::ID.asc())
                .all()
                .await
                .expect("plain query");
            assert_eq!(all, want, "cached query for {user}");
            cross += all.iter().filter(|n| n.owner == other).count();
        }
        // An anonymous request sees nothing, from the cache or not.
        assert_eq!(db.as_anon().read::<Note>(1).await.expect("anon"), None);
        assert_eq!(
            db.as_anon()
                .query::<Note>()
                .cached(60)
                .count()
                .await
                .expect("anon count"),
            0
        );
    }
    assert_eq!(cross, 0, "no user ever got another user's row");

    // The scopes' copies are really cached: a change behind the cache's back is not
    // seen (by row, by query) until a write through Tabula drops them.
    plain
        .execute_batch("UPDATE notes SET body = 'behind' WHERE id IN (1, 4)")
        .await
        .expect("behind");
    let as_alice = db.as_user(alice);
    assert_eq!(
        as_alice
            .read::<Note>(1)
            .await
            .expect("read")
            .map(|n| n.body),
        Some("note 1".into()),
        "a scoped read is answered by the scope's copy"
    );
    let counted = as_alice
        .query::<Note>()
        .filter(Note::BODY.eq("behind".to_owned()))
        .cached(60)
        .count()
        .await
        .expect("count");
    assert_eq!(counted, 1, "first asked: from the database");
    db.update::<Note>(1, give(alice, "written"))
        .await
        .expect("update");
    assert_eq!(
        as_alice
            .read::<Note>(1)
            .await
            .expect("read")
            .map(|n| n.body),
        Some("written".into())
    );
    assert_eq!(
        db.as_user(bob)
            .read::<Note>(4)
            .await
            .expect("read")
            .map(|n| n.body),
        Some("note 4".into()),
        "bob's copy of his own row was not written: still cached"
    );
    // What the cache holds for row 4, as `tabula cache get` shows it: the warmed shared
    // entry (behind the update, so the old body) and alice's and bob's own copies; a
    // write drops them all.
    let peek = db.cache_entry::<Note>(&4).await.expect("peek");
    assert!(
        matches!(&peek.entry, tabula::cache::CachedEntry::Row(n) if n.body == "note 4"),
        "{peek:?}"
    );
    assert_eq!(peek.scoped_copies, 2, "{peek:?}");
    assert!(
        peek.ttl.is_some_and(|t| t.as_secs() > 0) && !peek.leased,
        "{peek:?}"
    );
    db.update::<Note>(4, give(bob, "note 4"))
        .await
        .expect("update");
    let peek = db.cache_entry::<Note>(&4).await.expect("peek");
    assert_eq!(peek.entry, tabula::cache::CachedEntry::Missing);
    assert_eq!(peek.scoped_copies, 0);
}

#[tokio::test]
async fn scoped_reads_are_cached_per_scope_and_never_cross_users_redis() {
    two_users_a_warmer_and_foreign_ids(true).await;
}

#[tokio::test]
async fn scoped_reads_are_cached_per_scope_and_never_cross_users_memory() {
    two_users_a_warmer_and_foreign_ids(false).await;
}

async fn a_write_drops_every_scopes_copy(redis: bool) {
    let (db, _plain) = setup(redis).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(note(1, alice, "first")).await.expect("create");
    let alice_too = db
        .as_claims(serde_json::json!({ "sub": alice, "role": "authenticated", "team": 7 }))
        .expect("claims");
    let scopes = [db.as_user(alice), alice_too, db.as_user(bob), db.as_anon()];
    let seen = |expected: [Option<&'static str>; 4]| {
        let scopes = scopes.clone();
        async move {
            for (scope, want) in scopes.iter().zip(expected) {
                // Twice: the second answer comes from the scope's copy.
                for _ in 0..2 {
                    let got = scope.read::<Note>(1).await.expect("read");
                    assert_eq!(got.as_ref().map(|n| n.body.as_str()), want);
                }
            }
        }
    };
    seen([Some("first"), Some("first"), None, None]).await;
    // The service role gives the row to bob: alice's two scopes lose it, bob's cached
    // absence goes.
    db.update::<Note>(1, give(bob, "moved"))
        .await
        .expect("update");
    seen([None, None, Some("moved"), None]).await;
    // A write through a scoped handle drops the other scopes' copies as well.
    db.as_user(bob)
        .update::<Note>(1, give(bob, "by bob"))
        .await
        .expect("scoped update");
    seen([None, None, Some("by bob"), None]).await;
    db.as_user(bob).delete::<Note>(1).await.expect("delete");
    seen([None, None, None, None]).await;
    // A create drops every scope's cached absence.
    db.create(note(1, alice, "again"))
        .await
        .expect("create again");
    seen([Some("again"), Some("again"), None, None]).await;
}

#[tokio::test]
async fn a_write_drops_every_scopes_copy_of_the_row_redis() {
    a_write_drops_every_scopes_copy(true).await;
}

#[tokio::test]
async fn a_write_drops_every_scopes_copy_of_the_row_memory() {
    a_write_drops_every_scopes_copy(false).await;
}

async fn a_write_to_a_table_a_policy_reads(redis: bool) {
    let (db, plain) = setup(redis).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    db.create(NewMember {
        id: 1,
        team: 10,
        user_id: alice,
    })
    .await
    .expect("member");
    db.create(NewTeamNote {
        id: 1,
        team: 10,
        body: "plans".into(),
    })
    .await
    .expect("team note");
    let (as_alice, as_bob) = (db.as_user(alice), db.as_user(bob));
    let team_count = |scope: Db| async move {
        scope
            .query::<TeamNote>()
            .cached(60)
            .count()
            .await
            .expect("count")
    };
    for _ in 0..2 {
        assert!(as_alice.read::<TeamNote>(1).await.expect("read").is_some());
        assert!(as_bob.read::<TeamNote>(1).await.expect("read").is_none());
        assert_eq!(team_count(as_alice.clone()).await, 1);
        assert_eq!(team_count(as_bob.clone()).await, 0);
    }
    // Membership changes through Tabula: the team note's visibility follows at once,
    // though no team note was written.
    db.delete::<Member>(1).await.expect("leave");
    db.create(NewMember {
        id: 2,
        team: 10,
        user_id: bob,
    })
    .await
    .expect("join");
    for _ in 0..2 {
        assert!(
            as_alice.read::<TeamNote>(1).await.expect("read").is_none(),
            "alice left the team"
        );
        assert!(
            as_bob.read::<TeamNote>(1).await.expect("read").is_some(),
            "bob joined the team"
        );
        assert_eq!(team_count(as_alice.clone()).await, 0);
        assert_eq!(team_count(as_bob.clone()).await, 1);
    }
    // And the answers are the database's.
    assert_eq!(
        as_bob.read::<TeamNote>(1).await.expect("cached"),
        plain.as_user(bob).read::<TeamNote>(1).await.expect("plain")
    );
}

#[tokio::test]
async fn a_write_to_a_table_a_policy_reads_changes_what_the_scope_sees_redis() {
    a_write_to_a_table_a_policy_reads(true).await;
}

#[tokio::test]
async fn a_write_to_a_table_a_policy_reads_changes_what_the_scope_sees_memory() {
    a_write_to_a_table_a_policy_reads(false).await;
}

#[tokio::test]
async fn a_policy_that_reads_the_clock_keeps_its_table_out_of_the_cache() {
    let (db, plain) = setup(true).await;
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
    let as_alice = db.as_user(alice);
    for _ in 0..2 {
        assert!(as_alice.read::<Offer>(1).await.expect("read").is_some());
        assert_eq!(
            as_alice
                .query::<Offer>()
                .cached(60)
                .count()
                .await
                .expect("count"),
            1
        );
    }
    // Not cached: a change behind the cache's back shows at once…
    plain
        .execute_batch("UPDATE offers SET body = 'behind'")
        .await
        .expect("behind");
    assert_eq!(
        as_alice
            .read::<Offer>(1)
            .await
            .expect("read")
            .map(|o| o.body),
        Some("behind".into())
    );
    // …and the offer disappears when it expires, with nothing written.
    let left = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(200)).await;
    assert_eq!(as_alice.read::<Offer>(1).await.expect("read"), None);
    assert_eq!(
        as_alice
            .query::<Offer>()
            .cached(60)
            .count()
            .await
            .expect("count"),
        0
    );
}

#[tokio::test]
async fn a_policy_calling_an_untrusted_function_keeps_its_table_out_of_the_cache() {
    let (_, url) = common::db_and_url().await;
    let plain = Db::connect_with(DbConfig::new(url.clone()).pool_size(2))
        .await
        .expect("plain");
    plain.execute_batch(SCHEMA).await.expect("schema");
    // The same policy as `notes`, but through a function the configuration does not
    // trust (it could read anything): with `auth.uid` left out of the list too.
    let cache = CacheService::in_memory(CacheConfig::default().policy_functions(["auth.jwt"]))
        .expect("cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    let alice = Uuid::new_v4();
    db.create(note(1, alice, "first")).await.expect("create");
    assert!(
        db.as_user(alice)
            .read::<Note>(1)
            .await
            .expect("read")
            .is_some()
    );
    plain
        .execute_batch("UPDATE notes SET body = 'behind'")
        .await
        .expect("behind");
    assert_eq!(
        db.as_user(alice)
            .read::<Note>(1)
            .await
            .expect("read")
            .map(|n| n.body),
        Some("behind".into()),
        "uncached: the change behind the cache's back is seen"
    );
}

/// A scoped read dropped while it holds its lease (the caller gave up between the
/// database read and the fill) leaves nothing behind that outlives a write: the next
/// reads of every scope see the database.
#[tokio::test]
async fn a_scoped_read_dropped_before_its_fill_leaves_nothing_stale() {
    let (db, _plain) = setup(true).await;
    let alice = Uuid::new_v4();
    db.create(note(1, alice, "first")).await.expect("create");
    let cache = db.cache().expect("cache").clone();
    cache.set_fill_hook(Some(std::sync::Arc::new(|| {
        Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600)))
    })));
    let as_alice = db.as_user(alice);
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        as_alice.read::<Note>(1),
    )
    .await;
    assert!(dropped.is_err(), "the read was waiting in its fill");
    cache.set_fill_hook(None);
    db.update::<Note>(1, give(alice, "second"))
        .await
        .expect("update");
    for _ in 0..2 {
        assert_eq!(
            as_alice
                .read::<Note>(1)
                .await
                .expect("read")
                .map(|n| n.body),
            Some("second".into())
        );
    }
}
