//! The column types beyond the basics: timestamps without zone, times, `inet`,
//! `numeric`, arrays, PostgreSQL enums (`#[derive(PgEnum)]`) and a user's own type
//! (`CustomColumn`) — each through create, read, filters, batch inserts and the row
//! cache, and each refusing a value it cannot hold as a typed error.

mod common;

use std::net::IpAddr;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rust_decimal::Decimal;
use tabula::{CacheConfig, CacheService, CustomColumn, Db, DbConfig, Error, PgEnum, Table};
use uuid::Uuid;

#[derive(PgEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mood {
    Happy,
    #[pg_enum(rename = "meh")]
    SoSo,
    VerySad,
}

/// An e-mail address stored as text; anything without an `@` is no address.
#[derive(Debug, Clone, PartialEq)]
struct Email(String);

impl CustomColumn for Email {
    type Stored = String;
    fn to_stored(&self) -> String {
        self.0.clone()
    }
    fn from_stored(text: String) -> Result<Self, tabula::BoxError> {
        match text.contains('@') {
            true => Ok(Email(text)),
            false => Err(format!("not an e-mail address: {text:?}").into()),
        }
    }
}
tabula::custom_column!(Email);

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "kinds", cache(ttl = 60))]
struct Kinds {
    #[table(primary_key, generated)]
    id: i64,
    local_at: NaiveDateTime,
    opens: NaiveTime,
    addr: IpAddr,
    price: Decimal,
    ids: Vec<i64>,
    names: Vec<String>,
    gaps: Vec<Option<i32>>,
    uuids: Vec<Uuid>,
    mood: Mood,
    moods: Vec<Mood>,
    mood_text: Mood,
    email: Email,
    o_local_at: Option<NaiveDateTime>,
    o_opens: Option<NaiveTime>,
    o_addr: Option<IpAddr>,
    o_price: Option<Decimal>,
    o_ids: Option<Vec<i64>>,
    o_mood: Option<Mood>,
    o_email: Option<Email>,
}

const CREATE: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'meh', 'very_sad');
CREATE TABLE kinds (
    id bigserial PRIMARY KEY, local_at timestamp NOT NULL, opens time NOT NULL,
    addr inet NOT NULL, price numeric NOT NULL, ids int8[] NOT NULL, names text[] NOT NULL,
    gaps int4[] NOT NULL, uuids uuid[] NOT NULL, mood mood NOT NULL, moods mood[] NOT NULL,
    mood_text text NOT NULL CHECK (mood_text IN ('happy', 'meh', 'very_sad')),
    email text NOT NULL,
    o_local_at timestamp, o_opens time, o_addr inet, o_price numeric, o_ids int8[],
    o_mood mood, o_email text
)"#;

fn full(seed: i64) -> NewKinds {
    let day = NaiveDate::from_ymd_opt(2026, 2, 28).expect("date");
    NewKinds {
        local_at: day.and_hms_micro_opt(23, 59, 58, 123_456).expect("time")
            - chrono::Duration::seconds(seed),
        opens: NaiveTime::from_hms_micro_opt(7, 30, 0, 5).expect("time")
            + chrono::Duration::microseconds(seed * 7),
        addr: IpAddr::from_str("2001:db8::1").expect("ip"),
        price: Decimal::from_str("-12345678901234567890.123456789").expect("decimal"),
        ids: vec![seed, i64::MIN, i64::MAX],
        names: vec![
            "a".into(),
            "with, comma".into(),
            "{braces}\"quote\"".into(),
            String::new(),
        ],
        gaps: vec![Some(1), None, Some(-3)],
        uuids: vec![Uuid::new_v4(), Uuid::nil()],
        mood: Mood::SoSo,
        moods: vec![Mood::VerySad, Mood::Happy, Mood::VerySad],
        mood_text: Mood::VerySad,
        email: Email(format!("user{seed}@example.com")),
        o_local_at: Some(day.and_hms_opt(0, 0, 0).expect("time")),
        o_opens: Some(NaiveTime::from_hms_opt(23, 59, 59).expect("time")),
        o_addr: Some(IpAddr::from_str("192.0.2.7").expect("ip")),
        o_price: Some(Decimal::new(5, 28)),
        o_ids: Some(Vec::new()),
        o_mood: Some(Mood::Happy),
        o_email: Some(Email("other@example.com".into())),
    }
}

fn nulls(seed: i64) -> NewKinds {
    NewKinds {
        o_local_at: None,
        o_opens: None,
        o_addr: None,
        o_price: None,
        o_ids: None,
        o_mood: None,
        o_email: None,
        ..full(seed)
    }
}

fn same(new: &NewKinds, row: &Kinds) {
    let back = NewKinds {
        local_at: row.local_at,
        opens: row.opens,
        addr: row.addr,
        price: row.price,
        ids: row.ids.clone(),
        names: row.names.clone(),
        gaps: row.gaps.clone(),
        uuids: row.uuids.clone(),
        mood: row.mood,
        moods: row.moods.clone(),
        mood_text: row.mood_text,
        email: row.email.clone(),
        o_local_at: row.o_local_at,
        o_opens: row.o_opens,
        o_addr: row.o_addr,
        o_price: row.o_price,
        o_ids: row.o_ids.clone(),
        o_mood: row.o_mood,
        o_email: row.o_email.clone(),
    };
    assert_eq!(format!("{new:?}"), format!("{back:?}"));
}

async fn cached_db() -> Db {
    let (_, url) = common::db_and_url().await;
    let cache = CacheService::in_memory(CacheConfig::default()).expect("memory cache");
    let db = Db::connect_with(DbConfig::new(url).cache(cache))
        .await
        .expect("db");
    db.execute_batch(CREATE).await.expect("schema");
    db
}

#[tokio::test]
async fn every_new_type_round_trips_through_create_read_and_the_cache() {
    let db = cached_db().await;
    for new in [full(1), nulls(2)] {
        let stored = db.create(new.clone()).await.expect("create");
        same(&new, &stored);
        // The first read fills the row cache, the second is answered by it.
        for _ in 0..2 {
            let read = db
                .read::<Kinds>(stored.id)
                .await
                .expect("read")
                .expect("row");
            same(&new, &read);
        }
    }
    // The values as PostgreSQL holds them, not only as Tabula reads them back.
    let text: Vec<String> = db
        .sql_rows(
            "SELECT mood::text || '|' || moods::text || '|' || names[2] || '|' || price::text \
             FROM kinds ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .expect("sql")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        text,
        ["meh|{very_sad,happy,very_sad}|with, comma|-12345678901234567890.123456789"]
    );
}

#[tokio::test]
async fn batches_with_array_and_enum_columns_keep_every_row_apart() {
    let db = cached_db().await;
    let rows: Vec<NewKinds> = (0..5)
        .map(|i| if i % 2 == 0 { full(i) } else { nulls(i) })
        .collect();
    let stored = db.create_many(rows.clone()).await.expect("create_many");
    assert_eq!(stored.len(), 5, "one row per new row, arrays not flattened");
    for (new, row) in rows.iter().zip(&stored) {
        same(new, row);
    }
    let copied = db.insert_many(rows.clone()).await.expect("insert_many");
    assert_eq!(copied, 5);
    let all = db
        .query::<Kinds>()
        .order_by(Kinds::ID.asc())
        .all()
        .await
        .expect("all");
    assert_eq!(all.len(), 10);
    for (new, row) in rows.iter().chain(&rows).zip(&all) {
        same(new, row);
    }
}

#[tokio::test]
async fn filters_compare_enums_decimals_addresses_and_custom_values() {
    let db = cached_db().await;
    let mut sad = full(1);
    sad.mood = Mood::VerySad;
    sad.price = Decimal::new(100, 2);
    db.create_many(vec![full(0), sad, nulls(2)])
        .await
        .expect("seed");
    let very_sad = db
        .query::<Kinds>()
        .filter(Kinds::MOOD.eq(Mood::VerySad))
        .count()
        .await
        .expect("enum filter");
    assert_eq!(very_sad, 1);
    // Enums order by declaration (PostgreSQL's order), not by label.
    let above_happy = db
        .query::<Kinds>()
        .filter(Kinds::MOOD.gt(Mood::Happy))
        .count()
        .await
        .expect("enum order");
    assert_eq!(above_happy, 3);
    let cheap = db
        .query::<Kinds>()
        .filter(Kinds::PRICE.gt(Decimal::ZERO))
        .select(Kinds::PRICE)
        .all()
        .await
        .expect("decimal filter");
    assert_eq!(cheap, [Decimal::new(100, 2)]);
    let by_mail = db
        .query::<Kinds>()
        .filter(Kinds::EMAIL.eq(Email("user2@example.com".into())))
        .select(Kinds::ID)
        .all()
        .await
        .expect("custom filter");
    assert_eq!(by_mail.len(), 1);
    let moods = db
        .query::<Kinds>()
        .filter(Kinds::O_MOOD.is_null())
        .select((Kinds::MOOD, Kinds::O_MOOD))
        .cached(30)
        .all()
        .await
        .expect("cached selection of enums");
    assert_eq!(moods, [(Mood::SoSo, None)]);
    let by_addr = db
        .query::<Kinds>()
        .filter(Kinds::ADDR.eq(IpAddr::from_str("2001:db8::1").expect("ip")))
        .count()
        .await
        .expect("inet filter");
    assert_eq!(by_addr, 3);
}

#[tokio::test]
async fn values_a_type_cannot_hold_are_decode_errors_naming_the_column() {
    let db = cached_db().await;
    let row = db.create(full(1)).await.expect("create");
    // A label added to the type by a later migration, before the code knows it.
    db.execute_batch(
        "ALTER TYPE mood ADD VALUE 'ecstatic'; \
         ALTER TABLE kinds DROP CONSTRAINT kinds_mood_text_check;",
    )
    .await
    .expect("alter");
    db.execute_batch(&format!(
        "UPDATE kinds SET mood = 'ecstatic' WHERE id = {}",
        row.id
    ))
    .await
    .expect("update behind tabula's back");
    match db.query::<Kinds>().all().await {
        Err(Error::Decode { column, source, .. }) => {
            assert_eq!(column, "mood");
            assert!(source.to_string().contains("ecstatic"), "{source}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    db.execute_batch(&format!(
        "UPDATE kinds SET mood = 'meh', mood_text = 'Happy' WHERE id = {}",
        row.id
    ))
    .await
    .expect("text column holding no label");
    assert!(
        matches!(
            db.query::<Kinds>().all().await,
            Err(Error::Decode {
                column: "mood_text",
                ..
            })
        ),
        "labels are case-sensitive"
    );
    db.execute_batch(&format!(
        "UPDATE kinds SET mood_text = 'happy', email = 'nobody' WHERE id = {}",
        row.id
    ))
    .await
    .expect("custom value its type refuses");
    assert!(
        matches!(
            db.query::<Kinds>().all().await,
            Err(Error::Decode {
                column: "email",
                ..
            })
        ),
        "from_stored's error is a decode error"
    );
}

#[tokio::test]
async fn a_multidimensional_array_is_a_decode_error_not_a_flattened_vec() {
    let db = cached_db().await;
    let row = db.create(full(1)).await.expect("create");
    db.execute_batch(&format!(
        "UPDATE kinds SET ids = '{{{{1,2}},{{3,4}}}}' WHERE id = {}",
        row.id
    ))
    .await
    .expect("2-D array");
    let err = db
        .query::<Kinds>()
        .all()
        .await
        .expect_err("a Vec<i64> is one-dimensional");
    assert!(
        matches!(err, Error::Decode { column: "ids", .. }),
        "{err:?}"
    );
}

#[test]
fn enum_metadata_matches_the_declaration() {
    assert_eq!(Mood::TYPE_NAME, "mood");
    assert_eq!(Mood::LABELS, ["happy", "meh", "very_sad"]);
    assert_eq!(
        Mood::create_type(),
        r#"CREATE TYPE "mood" AS ENUM ('happy', 'meh', 'very_sad')"#
    );
    assert_eq!(<Vec<Mood> as tabula::ColumnType>::SQL_TYPE, r#""mood"[]"#);
    assert_eq!(Mood::from_label("Happy"), None);
}

/// Keyset pages ordered by each of the new types: every cursor Tabula issues is one it
/// takes back, and the pages together are the rows in order.
#[tokio::test]
async fn keyset_pages_order_by_every_new_type() {
    use tabula::OrderBy;
    let db = cached_db().await;
    let rows: Vec<NewKinds> = (0..7)
        .map(|i| {
            let mut row = full(i);
            row.price = Decimal::new(i * 37 % 11, 2);
            row.addr = IpAddr::from([10, 0, 0, (i * 5 % 7) as u8]);
            row.mood = [Mood::Happy, Mood::SoSo, Mood::VerySad][(i % 3) as usize];
            row.ids = vec![i % 4, i];
            row
        })
        .collect();
    db.create_many(rows).await.expect("seed");
    let orders: Vec<(&str, OrderBy<Kinds>)> = vec![
        ("local_at", Kinds::LOCAL_AT.asc()),
        ("opens", Kinds::OPENS.desc()),
        ("addr", Kinds::ADDR.asc()),
        ("price", Kinds::PRICE.desc()),
        ("mood", Kinds::MOOD.asc()),
        ("ids", Kinds::IDS.asc()),
    ];
    for (name, order) in orders {
        let all: Vec<i64> = db
            .query::<Kinds>()
            .order_by(order.clone())
            .order_by(Kinds::ID.asc())
            .select(Kinds::ID)
            .all()
            .await
            .expect("all");
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = db
                .query::<Kinds>()
                .order_by(order.clone())
                .select(Kinds::ID)
                .page(3, cursor.as_ref())
                .await
                .unwrap_or_else(|e| panic!("page by {name}: {e}"));
            paged.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(paged, all, "pages by {name}");
    }
}

/// An enum kept in a text column, with no enum type in the database at all.
#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "labels")]
struct Label {
    #[table(primary_key, generated)]
    id: i64,
    mood: Mood,
    moods: Option<Vec<Mood>>,
}

#[tokio::test]
async fn an_enum_in_a_text_column_needs_no_type_in_any_write() {
    let db = common::db().await;
    db.execute_batch(
        "CREATE TABLE labels (id bigserial PRIMARY KEY, mood text NOT NULL, moods text[])",
    )
    .await
    .expect("table");
    let new = |mood| NewLabel {
        mood,
        moods: Some(vec![mood, Mood::Happy]),
    };
    db.create(new(Mood::SoSo)).await.expect("create");
    db.create_many(vec![new(Mood::VerySad), new(Mood::Happy)])
        .await
        .expect("create_many");
    db.insert_many(vec![new(Mood::SoSo)])
        .await
        .expect("insert_many (COPY)");
    let moods = db
        .query::<Label>()
        .order_by(Label::ID.asc())
        .select((Label::MOOD, Label::MOODS))
        .all()
        .await
        .expect("read back");
    assert_eq!(moods.len(), 4);
    assert_eq!(
        moods[1],
        (Mood::VerySad, Some(vec![Mood::VerySad, Mood::Happy]))
    );
    let stored: Vec<String> = db
        .sql_rows("SELECT mood FROM labels ORDER BY id", &[])
        .await
        .expect("raw")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["meh", "very_sad", "happy", "meh"]);
}
