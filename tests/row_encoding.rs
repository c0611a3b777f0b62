//! The row cache stores rows by their columns, not by the model's `serde` impls: a
//! cache hit returns exactly the row PostgreSQL holds, whatever `#[serde(...)]`
//! attributes the model carries, and a model needs no serde derives to be cached.
//! On real PostgreSQL and Redis; the decoder's robustness also without servers.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize, Serializer};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Table};
use uuid::Uuid;

/// The seed's profile, cached, with serde attributes that make its JSON form differ
/// from its columns: a skipped field, a renamed one, and one with its own serializer.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 60))]
struct SerdeQuirks {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    #[serde(rename = "login")]
    username: String,
    #[serde(skip)]
    avatar_url: Option<String>,
    #[table(generated)]
    #[serde(serialize_with = "shout")]
    status: String,
    #[table(generated)]
    created_at: DateTime<Utc>,
    #[table(generated)]
    updated_at: DateTime<Utc>,
}

/// A serializer that does not round-trip (as for a public API that formats a field).
fn shout<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value.to_uppercase())
}

/// The same table with a renamed unique column: the `unique` lookup compares the
/// column's value, not a JSON field of the same name.
#[derive(Table, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[table(name = "profiles", cache(ttl = 60))]
struct RenamedUnique {
    #[table(primary_key, generated)]
    id: Uuid,
    user_id: Uuid,
    #[table(unique)]
    #[serde(rename = "login")]
    username: String,
    avatar_url: Option<String>,
}

/// A JSON column's own type: its serde impls are the column's representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    note: String,
    n: Option<i32>,
}

/// Every column type, cached, and no serde derives on the model at all.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "cached types", cache(ttl = 60))]
struct Bare {
    #[table(primary_key, generated)]
    id: i64,
    flag: bool,
    small: i16,
    int: i32,
    big: i64,
    real: f32,
    double: f64,
    text: String,
    uuid: Uuid,
    at: DateTime<Utc>,
    day: NaiveDate,
    bytes: Vec<u8>,
    value: serde_json::Value,
    #[table(json)]
    extra: Extra,
    #[table(json)]
    maybe_extra: Option<Extra>,
    #[table(rename = "Odd \"Name\"")]
    odd: Option<String>,
    o_flag: Option<bool>,
    o_small: Option<i16>,
    o_int: Option<i32>,
    o_big: Option<i64>,
    o_real: Option<f32>,
    o_double: Option<f64>,
    o_uuid: Option<Uuid>,
    o_at: Option<DateTime<Utc>>,
    o_day: Option<NaiveDate>,
    o_bytes: Option<Vec<u8>>,
    o_value: Option<serde_json::Value>,
    #[table(skip)]
    computed: u64,
}

const CREATE_BARE: &str = r#"CREATE TABLE "cached types" (
    id bigserial PRIMARY KEY, flag bool NOT NULL, small int2 NOT NULL, int int4 NOT NULL,
    big int8 NOT NULL, real float4 NOT NULL, double float8 NOT NULL, text text NOT NULL,
    uuid uuid NOT NULL, at timestamptz NOT NULL, day date NOT NULL, bytes bytea NOT NULL,
    value jsonb NOT NULL, extra jsonb NOT NULL, maybe_extra jsonb, "Odd ""Name""" text,
    o_flag bool, o_small int2, o_int int4, o_big int8, o_real float4, o_double float8,
    o_uuid uuid, o_at timestamptz, o_day date, o_bytes bytea, o_value jsonb
)"#;

fn full() -> NewBare {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 25, 1, 2, 3)
        .single()
        .expect("valid time")
        + chrono::Duration::microseconds(123_456);
    let day = NaiveDate::from_ymd_opt(1999, 12, 31).expect("valid date");
    NewBare {
        flag: true,
        small: -7,
        int: i32::MIN,
        big: i64::MAX,
        real: 1.5,
        double: -2.25e100,
        text: "héllo \"quoted\" 'single' ".repeat(1_000),
        uuid: Uuid::new_v4(),
        at,
        day,
        bytes: vec![0, 1, 2, 255],
        value: serde_json::json!({"a": [1, 2.5, {"b": null}], "c": "ü"}),
        extra: Extra {
            note: "n".into(),
            n: Some(4),
        },
        maybe_extra: Some(Extra {
            note: "m".into(),
            n: None,
        }),
        odd: Some("odd".into()),
        o_flag: Some(false),
        o_small: Some(i16::MAX),
        o_int: Some(0),
        o_big: Some(i64::MIN),
        o_real: Some(f32::MAX),
        o_double: Some(f64::MIN_POSITIVE),
        o_uuid: Some(Uuid::nil()),
        o_at: Some(at),
        o_day: Some(day),
        o_bytes: Some(Vec::new()),
        o_value: Some(serde_json::json!("string")),
    }
}

fn nulls() -> NewBare {
    NewBare {
        maybe_extra: None,
        odd: None,
        o_flag: None,
        o_small: None,
        o_int: None,
        o_big: None,
        o_real: None,
        o_double: None,
        o_uuid: None,
        o_at: None,
        o_day: None,
        o_bytes: None,
        o_value: Some(serde_json::Value::Null),
        ..full()
    }
}

/// A row of `Bare` built in memory (no database), for the decoder tests.
fn bare_row(id: i64, new: NewBare) -> Bare {
    Bare {
        id,
        flag: new.flag,
        small: new.small,
        int: new.int,
        big: new.big,
        real: new.real,
        double: new.double,
        text: new.text,
        uuid: new.uuid,
        at: new.at,
        day: new.day,
        bytes: new.bytes,
        value: new.value,
        extra: new.extra,
        maybe_extra: new.maybe_extra,
        odd: new.odd,
        o_flag: new.o_flag,
        o_small: new.o_small,
        o_int: new.o_int,
        o_big: new.o_big,
        o_real: new.o_real,
        o_double: new.o_double,
        o_uuid: new.o_uuid,
        o_at: new.o_at,
        o_day: new.o_day,
        o_bytes: new.o_bytes,
        o_value: new.o_value,
        computed: 0,
    }
}

fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "enc{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of this test's own, with a row cache on the test kit's Redis under a
/// prefix of its own (returned, to address entries directly).
async fn cached_db() -> (Db, String) {
    let prefix = unique_prefix();
    let config = CacheConfig::default()
        .prefix(prefix.clone())
        .deadline(Duration::from_secs(2));
    let cache =
        CacheService::redis(&tabula::testkit::redis_url().expect("redis"), config).expect("cache");
    let (_, url) = common::db_and_url().await;
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    (db, prefix)
}

async fn execute(db: &Db, sql: &str) {
    let sql = sql.to_owned();
    db.with_client(async |c| {
        c.batch_execute(&sql).await?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads `key` through the cache (fill, then hit) and checks the hit against what
/// PostgreSQL holds. Then changes the row behind the cache's back with `poke` and
/// reads again: the answer must still be the cached row, which proves the reads
/// compared above were cache hits (a check that could not fail would prove nothing).
async fn assert_hit_matches_database<M>(db: &Db, key: M::Key, poke: &str)
where
    M: Table + PartialEq + std::fmt::Debug,
{
    let filled = db.read::<M>(key.clone()).await.expect("read (fill)");
    let hit = db.read::<M>(key.clone()).await.expect("read (hit)");
    let stored = db
        .read_uncached::<M>(key.clone())
        .await
        .expect("read_uncached");
    assert!(stored.is_some(), "the row exists in PostgreSQL");
    assert_eq!(
        filled, stored,
        "the read that filled the cache returns the stored row"
    );
    assert_eq!(
        hit, stored,
        "a cache hit returns exactly the row PostgreSQL holds"
    );

    execute(db, poke).await;
    let poked = db
        .read_uncached::<M>(key.clone())
        .await
        .expect("read_uncached");
    assert_ne!(poked, stored, "the poke changed the row in PostgreSQL");
    let cached = db.read::<M>(key).await.expect("read (cached)");
    assert_eq!(
        cached, stored,
        "the read after the poke is still the cached row, so the reads above were hits"
    );
}

#[tokio::test]
async fn a_cache_hit_ignores_serde_skip_rename_and_serialize_with() {
    let (db, _) = cached_db().await;
    let row = db
        .create(NewSerdeQuirks {
            user_id: Uuid::new_v4(),
            username: "quirky".into(),
            avatar_url: Some("https://example.invalid/a.png".into()),
        })
        .await
        .expect("create");
    assert_hit_matches_database::<SerdeQuirks>(
        &db,
        row.id,
        "UPDATE profiles SET username = 'poked'",
    )
    .await;
}

#[tokio::test]
async fn a_cached_query_hit_ignores_serde_attributes_and_needs_no_serde() {
    let (db, _) = cached_db().await;
    execute(&db, CREATE_BARE).await;
    let quirky = db
        .create(NewSerdeQuirks {
            user_id: Uuid::new_v4(),
            username: "quirky".into(),
            avatar_url: Some("https://example.invalid/a.png".into()),
        })
        .await
        .expect("create");
    let bare = db.create(full()).await.expect("create");
    let fresh = db
        .query::<SerdeQuirks>()
        .cached(60)
        .all()
        .await
        .expect("fill");
    let hit = db
        .query::<SerdeQuirks>()
        .cached(60)
        .all()
        .await
        .expect("hit");
    assert_eq!(
        hit, fresh,
        "a cached query hit differs from the rows it cached"
    );
    assert_eq!(hit[0].avatar_url, quirky.avatar_url);
    let bare_rows = db
        .query::<Bare>()
        .cached(60)
        .all()
        .await
        .expect("fill bare");
    assert_eq!(
        db.query::<Bare>().cached(60).all().await.expect("hit bare"),
        bare_rows
    );
    assert_eq!(bare_rows[0].id, bare.id);
    let pairs = db
        .query::<Bare>()
        .select((Bare::ID, Bare::O_AT))
        .cached(60)
        .all()
        .await
        .expect("selection");
    assert_eq!(
        db.query::<Bare>()
            .select((Bare::ID, Bare::O_AT))
            .cached(60)
            .all()
            .await
            .expect("hit"),
        pairs
    );
    // The hits really were hits: a change behind the cache's back is not seen.
    execute(&db, "UPDATE profiles SET avatar_url = 'poked'").await;
    let again = db
        .query::<SerdeQuirks>()
        .cached(60)
        .all()
        .await
        .expect("hit");
    assert_eq!(again[0].avatar_url, quirky.avatar_url);
}

#[tokio::test]
async fn a_model_without_serde_derives_is_cached_with_every_column_type_intact() {
    let (db, _) = cached_db().await;
    execute(&db, CREATE_BARE).await;
    for new in [full(), nulls()] {
        let row = db.create(new).await.expect("create");
        assert_hit_matches_database::<Bare>(
            &db,
            row.id,
            &format!(
                r#"UPDATE "cached types" SET text = 'poked', o_int = 1 WHERE id = {}"#,
                row.id
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn a_unique_lookup_compares_the_column_not_a_serde_field() {
    let (db, _) = cached_db().await;
    let row = db
        .create(NewRenamedUnique {
            user_id: Uuid::new_v4(),
            username: "renamed".into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    // The first lookup fills the value → key mapping, the second the row entry.
    for _ in 0..2 {
        let first = RenamedUnique::by_username(&db, "renamed")
            .await
            .expect("lookup (fill)");
        assert_eq!(first.as_ref(), Some(&row), "the lookup finds the row");
    }
    execute(
        &db,
        "UPDATE profiles SET avatar_url = 'behind-the-back' WHERE username = 'renamed'",
    )
    .await;
    let second = RenamedUnique::by_username(&db, "renamed")
        .await
        .expect("lookup (hit)");
    assert_eq!(
        second.as_ref(),
        Some(&row),
        "the second lookup is answered by the cache: the mapping and the row were trusted"
    );
    assert_eq!(
        RenamedUnique::by_username(&db, "nobody")
            .await
            .expect("lookup"),
        None,
        "another value finds nothing"
    );
}

/// Cached entries are `<16 hex digits of shape><encoded row>`, under
/// `<prefix>:__tabula:<epoch>:r:<table>:<key as JSON>`; the epoch of a fresh prefix is 0.
/// The row entry of `key` in `table`, found in Redis by its documented shape
/// (`{prefix}:t:{namespace}:{epoch}:r:{table}:{generation}:{key}`, see `tabula::cache`).
async fn entry_key(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    table: &str,
    key: &str,
) -> String {
    let pattern = format!("{prefix}:t:*:r:{table}:*:{key}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(con)
        .await
        .expect("KEYS");
    keys.into_iter().next().unwrap_or(pattern)
}

/// A small deterministic generator, so the garbage is the same on every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn a_truncated_or_corrupt_entry_is_a_miss_that_reads_postgresql() {
    let (db, prefix) = cached_db().await;
    execute(&db, CREATE_BARE).await;
    let row = db.create(full()).await.expect("create");
    let stored = db.read::<Bare>(row.id).await.expect("read (fill)");
    assert!(stored.is_some());

    let client = redis::Client::open(tabula::testkit::redis_url().expect("redis")).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let key = entry_key(&mut con, &prefix, "cached types", &row.id.to_string()).await;
    let entry: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("GET");
    let entry = entry.expect("the read filled the entry under the documented key");
    let shape = Bare::META.shape_hex();
    assert!(
        entry.starts_with(shape.as_bytes()),
        "entries start with the shape"
    );

    let mut corrupt: Vec<(String, Vec<u8>)> = Vec::new();
    // Every truncation of the body (the whole body is the valid entry, left out).
    let body_len = entry.len() - shape.len();
    for cut in (0..body_len).step_by(37).chain([body_len - 1]) {
        corrupt.push((format!("cut at {cut}"), entry[..shape.len() + cut].to_vec()));
    }
    // The valid entry with bytes appended.
    let mut longer = entry.clone();
    longer.extend_from_slice(b"\x00trailing");
    corrupt.push(("trailing bytes".into(), longer));
    // Random bodies behind the right shape.
    for seed in 0..40u64 {
        let mut value = shape.clone().into_bytes();
        value.extend(garbage(seed, (seed as usize * 13) % 200));
        corrupt.push((format!("garbage {seed}"), value));
    }
    for (what, value) in corrupt {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async(&mut con)
            .await
            .expect("SET");
        let read = db.read::<Bare>(row.id).await.expect("read");
        assert_eq!(read, stored, "an entry with {what} reads as a miss");
    }
}

mod decoder {
    //! The generated decoder on its own: arbitrary bytes never panic, and no strict
    //! prefix of a valid entry decodes.
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    use super::*;

    fn runner(cases: u32) -> TestRunner {
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        // A fixed seed: the same inputs on every run, so CI cannot flake.
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    }

    #[test]
    fn arbitrary_bytes_decode_to_none_or_a_row_that_round_trips() {
        let bytes = prop::collection::vec(any::<u8>(), 0..600);
        let result = runner(5_000).run(&bytes, |bytes| {
            if let Some(row) = Bare::cache_decode(&bytes) {
                let again = row.cache_encode().expect("a decoded row encodes");
                let back = Bare::cache_decode(&again);
                prop_assert!(back.is_some(), "a re-encoded row decodes");
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[test]
    fn every_strict_prefix_of_an_entry_is_a_miss() {
        let text = "[a-zé\\u{0}\"]{0,40}";
        let rows = (any::<i64>(), text, any::<Option<i16>>(), any::<bool>()).prop_map(
            |(id, text, o_small, flag)| {
                let mut new = if flag { full() } else { nulls() };
                new.text = text;
                new.o_small = o_small;
                bare_row(id, new)
            },
        );
        let result = runner(64).run(&rows, |row| {
            let bytes = row.cache_encode().expect("encodes");
            let decoded = Bare::cache_decode(&bytes);
            prop_assert_eq!(decoded.as_ref(), Some(&row));
            for cut in 0..bytes.len() {
                prop_assert!(
                    Bare::cache_decode(&bytes[..cut]).is_none(),
                    "a prefix of {} bytes decoded",
                    cut
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[test]
    fn every_single_byte_flip_decodes_to_none_or_a_well_formed_row() {
        let row = bare_row(7, full());
        let bytes = row.cache_encode().expect("encodes");
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[i] ^= flip;
                if let Some(decoded) = Bare::cache_decode(&corrupt) {
                    assert!(
                        decoded.cache_encode().is_some(),
                        "byte {i} ^ {flip:#x}: a decoded row encodes"
                    );
                }
            }
        }
    }
}
