//! Every supported column type round-trips through PostgreSQL, NULLs included.

mod common;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tabula::Table;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    note: String,
    n: Option<i32>,
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "all types", schema = "public")]
struct AllTypes {
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

const CREATE: &str = r#"CREATE TABLE "all types" (
    id bigserial PRIMARY KEY, flag bool NOT NULL, small int2 NOT NULL, int int4 NOT NULL,
    big int8 NOT NULL, real float4 NOT NULL, double float8 NOT NULL, text text NOT NULL,
    uuid uuid NOT NULL, at timestamptz NOT NULL, day date NOT NULL, bytes bytea NOT NULL,
    value jsonb NOT NULL, extra jsonb NOT NULL, maybe_extra jsonb, "Odd ""Name""" text,
    o_flag bool, o_small int2, o_int int4, o_big int8, o_real float4, o_double float8,
    o_uuid uuid, o_at timestamptz, o_day date, o_bytes bytea, o_value jsonb
)"#;

fn full() -> NewAllTypes {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 25, 1, 2, 3)
        .single()
        .expect("valid time");
    let day = NaiveDate::from_ymd_opt(1999, 12, 31).expect("valid date");
    NewAllTypes {
        flag: true,
        small: -7,
        int: i32::MIN,
        big: i64::MAX,
        real: 1.5,
        double: -2.25e100,
        text: "héllo \u{0} \"quoted\" 'single'".replace('\u{0}', ""),
        uuid: Uuid::new_v4(),
        at,
        day,
        bytes: vec![0, 1, 2, 255],
        value: serde_json::json!({"a": [1, 2, {"b": null}]}),
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

fn nulls() -> NewAllTypes {
    NewAllTypes {
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
        o_value: None,
        ..full()
    }
}

fn same_values(new: &NewAllTypes, row: &AllTypes) {
    assert_eq!(
        (new.flag, new.small, new.int, new.big, new.real, new.double),
        (row.flag, row.small, row.int, row.big, row.real, row.double)
    );
    assert_eq!(
        (&new.text, new.uuid, new.at, new.day),
        (&row.text, row.uuid, row.at, row.day)
    );
    assert_eq!(
        (&new.bytes, &new.value, &new.extra),
        (&row.bytes, &row.value, &row.extra)
    );
    assert_eq!(new.maybe_extra, row.maybe_extra, "optional json");
    assert_eq!(new.odd, row.odd, "renamed column with quotes in its name");
    assert_eq!(
        (
            new.o_flag,
            new.o_small,
            new.o_int,
            new.o_big,
            new.o_real,
            new.o_double
        ),
        (
            row.o_flag,
            row.o_small,
            row.o_int,
            row.o_big,
            row.o_real,
            row.o_double
        )
    );
    assert_eq!(
        (new.o_uuid, new.o_at, new.o_day),
        (row.o_uuid, row.o_at, row.o_day)
    );
    assert_eq!((&new.o_bytes, &new.o_value), (&row.o_bytes, &row.o_value));
    assert_eq!(row.computed, 0, "skipped field is filled with Default");
}

#[tokio::test]
async fn every_type_round_trips_with_values_and_with_nulls() {
    let db = common::db().await;
    db.execute_batch(CREATE).await.expect("create table");
    for new in [full(), nulls()] {
        let stored = db.create(new.clone()).await.expect("create");
        same_values(&new, &stored);
        let read = db
            .read::<AllTypes>(stored.id)
            .await
            .expect("read")
            .expect("row exists");
        same_values(&new, &read);
    }
    let sql_null: bool = db
        .with_client(async |c| {
            let row = c
                .query_one(
                    r#"SELECT maybe_extra IS NULL FROM "all types" ORDER BY id DESC LIMIT 1"#,
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
        .expect("query");
    assert!(sql_null, "None in a json column is SQL NULL, not JSON null");
}

#[tokio::test]
async fn every_type_round_trips_through_batch_insert() {
    let db = common::db().await;
    db.execute_batch(CREATE).await.expect("create table");
    let rows = vec![full(), nulls(), full()];
    let stored = db.create_many(rows.clone()).await.expect("create_many");
    assert_eq!(stored.len(), 3);
    for (new, row) in rows.iter().zip(&stored) {
        same_values(new, row);
    }
}

#[tokio::test]
async fn every_nullable_column_can_be_patched_to_null_and_back() {
    let db = common::db().await;
    db.execute_batch(CREATE).await.expect("create table");
    let row = db.create(full()).await.expect("create");
    let cleared = db
        .update::<AllTypes>(
            row.id,
            AllTypesPatch {
                maybe_extra: Some(None),
                odd: Some(None),
                o_at: Some(None),
                o_bytes: Some(None),
                o_value: Some(None),
                ..Default::default()
            },
        )
        .await
        .expect("clear");
    assert_eq!(
        (cleared.maybe_extra, cleared.odd, cleared.o_at),
        (None, None, None)
    );
    assert_eq!((cleared.o_bytes, cleared.o_value), (None, None));
    let set = db
        .update::<AllTypes>(
            row.id,
            AllTypesPatch {
                extra: Some(Extra {
                    note: "patched".into(),
                    n: None,
                }),
                maybe_extra: Some(Some(Extra {
                    note: "back".into(),
                    n: Some(1),
                })),
                ..Default::default()
            },
        )
        .await
        .expect("set");
    assert_eq!(set.extra.note, "patched");
    assert_eq!(set.maybe_extra.map(|e| e.note).as_deref(), Some("back"));
}

#[test]
fn metadata_describes_the_model() {
    let meta = AllTypes::META;
    assert_eq!((meta.schema, meta.name), (Some("public"), "all types"));
    assert_eq!(meta.columns.len(), 27, "skipped field is not a column");
    assert_eq!(meta.key_column().name, "id");
    assert_eq!(AllTypes::ODD.name(), "Odd \"Name\"");
    let extra = meta.column("extra").expect("column").1;
    assert!(extra.json && !extra.nullable);
    assert_eq!(meta.column("o_day").expect("column").1.sql_type, "date");
    assert!(meta.column("o_day").expect("column").1.nullable);
    assert_eq!(
        meta.insert_columns().count(),
        26,
        "generated key left out of inserts"
    );
}
