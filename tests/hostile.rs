//! Hostile and huge input: filter trees 1,000 and 100,000 deep, very wide filters,
//! `IN` lists of 70,000 values, forged cursors, hostile names in a `QuerySpec`. Each
//! one is refused as [`Error::Validation`] before any SQL is sent, or answered
//! correctly; none overflows a stack, aborts the process or reaches PostgreSQL as an
//! error.
//!
//! Deep structures are built, rendered and dropped on threads with small stacks
//! (256 KiB for pure rendering and dropping; tokio's 2 MiB worker threads for queries),
//! so a recursion that user input can drive deep shows up as a crash here.

mod common;

use common::*;
use tabula::query::{QuerySpec, SpecLimits};
use tabula::{Db, Error, Filter, Table};

/// Runs `f` on a thread with a `kib` KiB stack and returns its result.
fn on_stack<T: Send + 'static>(kib: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::Builder::new()
        .stack_size(kib * 1024)
        .spawn(f)
        .expect("spawn a small-stack thread")
        .join()
    {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `eq(…)` negated `depth` times.
fn not_chain(depth: usize) -> Filter<Profile> {
    let mut f = Profile::USERNAME.eq("ann");
    for _ in 0..depth {
        f = f.not();
    }
    f
}

/// `((a AND b) OR c) AND d …`: every step nests one level deeper.
fn and_or_chain(depth: usize) -> Filter<Profile> {
    let mut f = Profile::USERNAME.eq("ann");
    for i in 0..depth {
        let leaf = Profile::USERNAME.ne(format!("u{i}"));
        f = if i % 2 == 0 { f.and(leaf) } else { f.or(leaf) };
    }
    f
}

fn is_validation<T: std::fmt::Debug>(result: tabula::Result<T>, what: &str) {
    match result {
        Err(Error::Validation(message)) => {
            assert!(
                message.contains("deep") || message.contains("nest"),
                "{what}: the message should say the filter is too deep: {message}"
            );
        }
        other => panic!("{what}: expected a validation error, got {other:?}"),
    }
}

async fn seeded() -> Db {
    let db = db().await;
    for (i, name) in ["ann", "bob", "cid", "dee", "eve"].iter().enumerate() {
        db.create(NewProfile {
            avatar_url: (i % 2 == 0).then(|| format!("{name}.jpg")),
            ..new_profile(name)
        })
        .await
        .expect("seed");
    }
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_filters_are_validation_errors_from_count_and_all() {
    let db = seeded().await;
    for depth in [1_000, 100_000] {
        for (shape, build) in [
            ("not chain", not_chain as fn(usize) -> Filter<Profile>),
            ("and/or chain", and_or_chain),
        ] {
            let d = db.clone();
            // On a tokio worker thread: 2 MiB of stack, as in a server.
            let (count, all) = tokio::spawn(async move {
                let count = d.query::<Profile>().filter(build(depth)).count().await;
                let all = d.query::<Profile>().filter(build(depth)).all().await;
                (count, all)
            })
            .await
            .expect("the query task crashed");
            is_validation(count, &format!("count, {shape} {depth} deep"));
            is_validation(all, &format!("all, {shape} {depth} deep"));
        }
    }
}

#[test]
fn dropping_filters_a_hundred_thousand_deep_does_not_overflow_the_stack() {
    on_stack(256, || {
        drop(not_chain(100_000));
        drop(and_or_chain(100_000));
        // Built on one side and dropped inside a combinator.
        drop(
            not_chain(100_000)
                .and(and_or_chain(100_000))
                .or(not_chain(50_000)),
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_of_ten_thousand_alternatives_runs_on_a_worker_stack() {
    let db = seeded().await;
    let wide = (0..10_000)
        .map(|i| Profile::USERNAME.eq(format!("x{i}")))
        .fold(Profile::USERNAME.eq("bob"), Filter::or);
    let d = db.clone();
    let n = tokio::spawn(async move { d.query::<Profile>().filter(wide).count().await })
        .await
        .expect("the query task crashed")
        .expect("count");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn an_in_list_of_seventy_thousand_values_returns_the_matching_rows() {
    let db = seeded().await;
    let mut names: Vec<String> = (0..70_000).map(|i| format!("nobody{i}")).collect();
    names.push("cid".into());
    names.push("eve".into());
    let mut found: Vec<String> = db
        .query::<Profile>()
        .select(Profile::USERNAME)
        .filter(Profile::USERNAME.is_in(names.iter().map(String::as_str)))
        .all()
        .await
        .expect("is_in with 70,002 values");
    found.sort();
    assert_eq!(found, ["cid", "eve"]);
    let rest = db
        .query::<Profile>()
        .filter(Profile::USERNAME.not_in(names.iter().map(String::as_str)))
        .count()
        .await
        .expect("not_in with 70,002 values");
    assert_eq!(rest, 3);
}

#[tokio::test]
async fn in_lists_keep_sql_null_semantics_on_nullable_columns() {
    let db = seeded().await;
    // avatar_url is NULL for bob and dee.
    let count = |f: Filter<Profile>| db.query::<Profile>().filter(f).count();
    assert_eq!(
        count(Profile::AVATAR_URL.is_in(["ann.jpg", "bob.jpg"]))
            .await
            .expect("in"),
        1,
        "NULL is in no list"
    );
    assert_eq!(
        count(Profile::AVATAR_URL.not_in(["ann.jpg"]))
            .await
            .expect("not in"),
        2,
        "NULL NOT IN (…) is NULL, so rows with NULL are not returned"
    );
    assert_eq!(
        count(Profile::AVATAR_URL.not_in(Vec::<String>::new()))
            .await
            .expect("not in ()"),
        5,
        "NOT IN an empty list holds for every row, NULL included"
    );
    assert_eq!(
        count(Profile::AVATAR_URL.is_in(Vec::<String>::new()))
            .await
            .expect("in ()"),
        0,
        "IN an empty list holds for no row"
    );
    assert_eq!(
        count(Profile::AVATAR_URL.not_in(["ann.jpg"]).not())
            .await
            .expect("not (not in)"),
        1,
        "NOT (NULL NOT IN (…)) is still NULL"
    );
}

// ---- forged cursors -------------------------------------------------------------

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "cursor_rows")]
struct CursorRow {
    #[table(primary_key, generated)]
    id: i64,
    score: Option<i32>,
    ratio: f64,
    label: String,
    at: chrono::DateTime<chrono::Utc>,
    day: chrono::NaiveDate,
    ref_id: uuid::Uuid,
    on: bool,
}

async fn cursor_db() -> Db {
    let db = db().await;
    db.execute_batch(
        "CREATE TABLE cursor_rows (id bigserial PRIMARY KEY, score int4, ratio float8 NOT NULL,
            label text NOT NULL, at timestamptz NOT NULL, day date NOT NULL, ref_id uuid NOT NULL,
            \"on\" bool NOT NULL)",
    )
    .await
    .expect("schema");
    let base = chrono::DateTime::parse_from_rfc3339("2024-02-29T23:59:59.123456+00:00")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let rows = (0..30)
        .map(|i| NewCursorRow {
            score: (i % 4 != 0).then_some(i % 5),
            ratio: f64::from(i) / 3.0,
            label: format!("label {}", i % 7),
            at: base + chrono::Duration::microseconds(i64::from(i) * 1_000_001),
            day: chrono::NaiveDate::from_ymd_opt(2024, 1, 1 + (i as u32 % 28)).expect("day"),
            ref_id: uuid::Uuid::from_u128(i as u128 * 7919),
            on: i % 3 == 0,
        })
        .collect();
    db.create_many(rows).await.expect("seed");
    db
}

/// The query every forged cursor is tried on: every key type in one order.
fn keyed(db: &Db) -> tabula::Query<CursorRow> {
    db.query::<CursorRow>()
        .order_by(CursorRow::SCORE.desc())
        .order_by(CursorRow::RATIO.asc())
        .order_by(CursorRow::LABEL.asc())
        .order_by(CursorRow::AT.desc())
        .order_by(CursorRow::DAY.asc())
        .order_by(CursorRow::REF_ID.asc())
        .order_by(CursorRow::ON.asc())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test]
async fn cursors_of_every_key_type_walk_the_whole_order() {
    let db = cursor_db().await;
    let all = keyed(&db).all().await.expect("all");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = keyed(&db).page(4, cursor.as_ref()).await.expect("page");
        seen.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn forged_cursors_are_validation_errors_before_any_sql() {
    let db = cursor_db().await;
    let real = keyed(&db)
        .page(3, None)
        .await
        .expect("first page")
        .next
        .expect("more pages");
    let payload: serde_json::Value =
        serde_json::from_slice(&unhex(real.as_str())).expect("a cursor is hex JSON");
    let good: Vec<serde_json::Value> = payload["k"].as_array().expect("keys").clone();
    assert_eq!(good.len(), 8, "seven keys and the primary key");
    // Each forged key list replaces one position of a real cursor.
    let huge = "9".repeat(30_000);
    let forged_at: &[(usize, serde_json::Value)] = &[
        (0, "abc".into()),
        (0, "NaN".into()),
        (0, "99999999999".into()),
        (0, "1.5".into()),
        (0, " 1".into()),
        (0, huge.clone().into()),
        (1, "1e400".into()),
        (1, "-1e400".into()),
        (1, "1e-400".into()),
        (1, "0x10".into()),
        (1, "".into()),
        (2, "nul\u{0}byte".into()),
        (3, "2024-13-45 00:00:00+00".into()),
        (3, "yesterday".into()),
        (3, "2024-01-01".into()),
        (3, "now".into()),
        (4, "2024-02-30".into()),
        (4, "epoch".into()),
        (5, "not-a-uuid".into()),
        (5, "urn:uuid:00000000-0000-0000-0000-000000000000".into()),
        (6, "yes".into()),
        (6, "t".into()),
        (7, "1; DROP TABLE cursor_rows".into()),
        (7, "99999999999999999999999".into()),
        (7, serde_json::Value::Null),
        (2, serde_json::json!(1)),
        (0, serde_json::json!(["1"])),
    ];
    let mut forged: Vec<(String, String)> = forged_at
        .iter()
        .map(|(at, value)| {
            let mut keys = good.clone();
            keys[*at] = value.clone();
            let mut p = payload.clone();
            p["k"] = serde_json::Value::Array(keys);
            let text = serde_json::to_vec(&p).expect("json");
            (format!("key {at} = {value:.40}"), hex(&text))
        })
        .collect();
    // Wrong number of parts, wrong shapes, not hex, not JSON.
    for (what, keys) in [
        ("too few keys", serde_json::json!(good[..3])),
        (
            "too many keys",
            serde_json::json!([good.clone(), good.clone()].concat()),
        ),
        ("no keys", serde_json::json!([])),
        ("keys not a list", serde_json::json!("1,2")),
    ] {
        let mut p = payload.clone();
        p["k"] = keys;
        forged.push((what.into(), hex(&serde_json::to_vec(&p).expect("json"))));
    }
    for (what, text) in [
        ("base64", "eyJvIjoiMSIsImsiOltdfQ=="),
        ("odd hex", "7b7"),
        ("hex of garbage", "ffff00ff"),
        ("hex of not-json", &hex(b"{\"o\": ")),
        ("huge", &"7b".repeat(40_000)),
        ("unicode", "ΩΩ"),
        ("empty", ""),
    ] {
        forged.push((what.into(), text.to_owned()));
    }
    for (what, token) in forged {
        let cursor = tabula::Cursor::new(token);
        for result in [
            keyed(&db)
                .page(3, Some(&cursor))
                .await
                .map(|p| p.items.len()),
            keyed(&db)
                .page_before(3, &cursor)
                .await
                .map(|p| p.items.len()),
        ] {
            match result {
                Err(Error::Validation(_)) => {}
                other => {
                    panic!("forged cursor ({what}): expected a validation error, got {other:?}")
                }
            }
        }
    }
    // The real cursor still works after all that.
    assert_eq!(
        keyed(&db)
            .page(3, Some(&real))
            .await
            .expect("real cursor")
            .items
            .len(),
        3
    );
}

#[tokio::test]
async fn a_nan_cursor_on_a_float_key_is_a_position_not_an_error() {
    let db = cursor_db().await;
    db.execute_batch("UPDATE cursor_rows SET ratio = 'NaN' WHERE id % 10 = 0")
        .await
        .expect("NaN rows");
    let q = || db.query::<CursorRow>().order_by(CursorRow::RATIO.asc());
    let all = q().all().await.expect("all");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = q().page(4, cursor.as_ref()).await.expect("page");
        seen.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), all.len());
    assert_eq!(
        seen.iter().map(|r| r.id).collect::<Vec<_>>(),
        all.iter().map(|r| r.id).collect::<Vec<_>>()
    );
}

// ---- QuerySpec ------------------------------------------------------------------

fn spec(json: serde_json::Value) -> QuerySpec {
    serde_json::from_value(json).expect("spec")
}

#[tokio::test]
async fn hostile_names_in_a_query_spec_are_validation_errors() {
    let db = seeded().await;
    let names = [
        "\"username\"",
        "username\"; DROP TABLE profiles; --",
        "user'name",
        "select",
        "order",
        "user",
        "username ",
        " username\u{0}",
        "ユーザー名",
        "usérname",
        "\u{202e}emanresu",
        "profiles.username",
        "*",
        "",
        "id)",
    ];
    let limits = SpecLimits::default();
    for name in names {
        if name.trim() == "username" {
            continue;
        }
        for (part, s) in [
            (
                "filter",
                spec(
                    serde_json::json!({ "filters": [{ "column": name, "op": "eq", "value": "ann" }] }),
                ),
            ),
            ("eq", spec(serde_json::json!({ "eq": { name: "ann" } }))),
            (
                "order",
                spec(serde_json::json!({ "order": [{ "column": name }] })),
            ),
            (
                "select",
                spec(serde_json::json!({ "select": [name, "id"] })),
            ),
        ] {
            if part == "select" && (name == "*" || name.is_empty()) {
                continue; // "*" and "" in a select list mean "every column".
            }
            match db.query_spec::<Profile>(&s, &limits).await {
                Err(Error::Validation(_)) => {}
                other => {
                    panic!("{part} naming {name:?}: expected a validation error, got {other:?}")
                }
            }
        }
    }
    assert_eq!(db.query::<Profile>().count().await.expect("intact"), 5);
}

#[tokio::test]
async fn a_query_spec_in_list_of_seventy_thousand_values_is_answered() {
    let db = seeded().await;
    let mut values: Vec<serde_json::Value> =
        (0..70_000).map(|i| format!("nobody{i}").into()).collect();
    values.push("bob".into());
    let s = spec(serde_json::json!({
        "filters": [{ "column": "username", "op": "in", "value": values }],
        "select": ["username"],
    }));
    let mut limits = SpecLimits::default();
    assert!(
        matches!(
            db.query_spec::<Profile>(&s, &limits).await,
            Err(Error::Validation(_))
        ),
        "over the default max_list"
    );
    limits.max_list = 100_000;
    let page = db.query_spec::<Profile>(&s, &limits).await.expect("big in");
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0]["username"], "bob");
}

// ---- the depth limit, everywhere --------------------------------------------------

#[tokio::test]
async fn rendering_a_too_deep_filter_is_a_validation_error_on_a_small_stack() {
    let db = db().await;
    on_stack(256, move || {
        for depth in [1_000, 100_000] {
            let not = db.query::<Profile>().filter(not_chain(depth)).to_sql();
            is_validation(not, &format!("to_sql, not chain {depth} deep"));
            let and_or = db.query::<Profile>().filter(and_or_chain(depth)).to_sql();
            is_validation(and_or, &format!("to_sql, and/or chain {depth} deep"));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_allowed_filter_runs_and_one_level_more_is_refused() {
    let db = seeded().await;
    let limit = tabula::query::MAX_FILTER_DEPTH;
    // A leaf is one level; each `not` adds one.
    let at_limit = limit - 1;
    let d = db.clone();
    let n = tokio::spawn(async move {
        d.query::<Profile>()
            .filter(not_chain(at_limit))
            .count()
            .await
    })
    .await
    .expect("the query task crashed")
    .expect("a filter at the limit runs");
    // An odd number of `not`s negates `username = 'ann'`.
    assert_eq!(n, if at_limit % 2 == 1 { 4 } else { 1 });
    is_validation(
        db.query::<Profile>()
            .filter(not_chain(at_limit + 1))
            .count()
            .await,
        "one level over the limit",
    );
    // The same limit holds for an alternation of and / or (two parts per level).
    let d = db.clone();
    tokio::spawn(async move {
        d.query::<Profile>()
            .filter(and_or_chain(limit - 1))
            .all()
            .await
    })
    .await
    .expect("the query task crashed")
    .expect("an and/or chain at the limit runs");
    is_validation(
        db.query::<Profile>()
            .filter(and_or_chain(limit))
            .all()
            .await,
        "and/or one level over the limit",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_executor_refuses_a_too_deep_filter_and_writes_nothing() {
    let db = seeded().await;
    let deep = || not_chain(1_000);
    let q = || db.query::<Profile>().filter(deep());
    is_validation(q().first().await, "first");
    is_validation(q().one().await, "one");
    is_validation(q().exists().await, "exists");
    is_validation(q().count_estimate().await, "count_estimate");
    is_validation(q().page(10, None).await, "page");
    is_validation(
        q().page_offset(10, 0, tabula::Total::Exact).await,
        "page_offset",
    );
    is_validation(q().stream().await.map(|_| ()), "stream");
    is_validation(q().cached(60).all().await, "cached");
    is_validation(
        db.update_where(
            deep(),
            ProfilePatch {
                avatar_url: Some(Some("x".into())),
                ..Default::default()
            },
        )
        .await,
        "update_where",
    );
    is_validation(db.delete_where(deep()).await, "delete_where");
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 5);
    assert_eq!(
        db.query::<Profile>()
            .filter(Profile::AVATAR_URL.eq("x"))
            .count()
            .await
            .expect("count"),
        0,
        "nothing was updated"
    );
}

#[tokio::test]
async fn in_lists_render_the_same_sql_whatever_their_length() {
    let db = db().await;
    let sql = |n: usize| {
        db.query::<Profile>()
            .filter(Profile::USERNAME.is_in((0..n).map(|i| format!("u{i}"))))
            .filter(Profile::AVATAR_URL.not_in((0..n).map(|i| format!("a{i}"))))
            .to_sql()
            .expect("render")
    };
    let one = sql(1);
    assert_eq!(
        one,
        r#"SELECT "id", "user_id", "username", "avatar_url", "status", "created_at", "updated_at" FROM "profiles" WHERE "username" = ANY($1) AND "avatar_url" <> ALL($2)"#
    );
    for n in [0, 2, 1_000, 70_000] {
        assert_eq!(sql(n), one, "a list of {n} renders like a list of 1");
    }
}

#[tokio::test]
async fn a_statement_over_the_parameter_limit_is_a_validation_error() {
    let db = seeded().await;
    // 70,000 separate comparisons cannot be one array; they are refused before sending.
    let wide = (0..70_000)
        .map(|i| Profile::USERNAME.eq(format!("x{i}")))
        .fold(Profile::USERNAME.eq("bob"), Filter::or);
    match db.query::<Profile>().filter(wide).count().await {
        Err(Error::Validation(message)) => assert!(message.contains("65535"), "{message}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // The connection is fine afterwards.
    assert_eq!(db.query::<Profile>().count().await.expect("count"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_json_value_in_a_query_spec_is_a_validation_error() {
    let db = db().await;
    db.execute_batch("CREATE TABLE docs (id int8 PRIMARY KEY, body jsonb NOT NULL)")
        .await
        .expect("schema");
    let limits = SpecLimits::default();
    for depth in [100, 1_000] {
        let mut value = serde_json::json!(1);
        for _ in 0..depth {
            value = serde_json::Value::Array(vec![value]);
        }
        let s = QuerySpec {
            filters: vec![tabula::query::spec::FilterSpec {
                column: "body".into(),
                op: "contains".into(),
                value: Some(value),
            }],
            ..QuerySpec::default()
        };
        let d = db.clone();
        let result = tokio::spawn(async move { d.query_spec::<Doc>(&s, &limits).await })
            .await
            .expect("the query task crashed");
        match result {
            Err(Error::Validation(message)) => assert!(message.contains("deeper"), "{message}"),
            other => panic!("depth {depth}: expected a validation error, got {other:?}"),
        }
    }
}

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "docs")]
struct Doc {
    #[table(primary_key)]
    id: i64,
    body: serde_json::Value,
}

#[tokio::test]
async fn a_query_spec_naming_an_order_column_twice_is_a_validation_error() {
    let db = seeded().await;
    let keys: Vec<serde_json::Value> = (0..10_000)
        .map(|_| serde_json::json!({ "column": "username" }))
        .collect();
    let s = spec(serde_json::json!({ "order": keys }));
    match db.query_spec::<Profile>(&s, &SpecLimits::default()).await {
        Err(Error::Validation(message)) => assert!(message.contains("twice"), "{message}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn a_percent_escape_takes_exactly_two_hex_digits() {
    use tabula::query::QuerySpec;
    for bad in [
        "status=eq.%+1",
        "status=eq.%-1",
        "status=eq.% 1",
        "status=eq.%1",
    ] {
        assert!(
            matches!(
                QuerySpec::from_query_string(bad),
                Err(tabula::Error::Validation(_))
            ),
            "{bad:?} was accepted"
        );
    }
    let spec = QuerySpec::from_query_string("status=eq.%41").expect("a real escape");
    assert_eq!(spec.filters[0].value, Some(serde_json::json!("A")));
}

/// A LIKE pattern ending in its escape character is bad input (the server cannot read
/// it): a validation error, from the typed builder and from a `QuerySpec` alike.
#[tokio::test]
async fn a_like_pattern_ending_in_a_backslash_is_a_validation_error() {
    let db = db().await;
    // PostgreSQL reads the pattern when it compares a row with it.
    db.create(new_profile("abc"))
        .await
        .expect("a row to compare");
    let typed = db
        .query::<Profile>()
        .filter(Profile::USERNAME.like("\\"))
        .all()
        .await;
    assert!(matches!(typed, Err(Error::Validation(_))), "{typed:?}");
    let spec = QuerySpec::from_query_string("username=like.%5C").expect("spec");
    let spec = db
        .query_spec::<Profile>(&spec, &SpecLimits::default())
        .await;
    assert!(matches!(spec, Err(Error::Validation(_))), "{spec:?}");
    // An escaped backslash is a pattern like any other.
    assert!(
        db.query::<Profile>()
            .filter(Profile::USERNAME.like("abc\\\\"))
            .all()
            .await
            .expect("escaped")
            .is_empty()
    );
}
