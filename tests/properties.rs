//! Property tests on a real PostgreSQL.
//!
//! 1. Differential: random rows, random filter trees / orders / limits; PostgreSQL's
//!    answer equals an in-memory evaluation of the same query (SQL's three-valued
//!    logic, NULL ordering and LIKE included).
//! 2. `QuerySpec` from arbitrary input never panics, never reaches PostgreSQL as a
//!    syntax error, and is either refused as `Validation` or answered correctly.

mod common;

use std::cmp::Ordering;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tabula::query::spec::FilterSpec;
use tabula::query::{QuerySpec, SpecLimits};
use tabula::{Db, Error, Filter, OrderBy, Table};

#[derive(Table, Debug, Clone, PartialEq)]
#[table(name = "prop_rows")]
struct Row {
    #[table(primary_key)]
    id: i32,
    a: i32,
    b: Option<i32>,
    s: String,
    t: Option<String>,
    flag: bool,
}

const SCHEMA: &str = "CREATE TABLE prop_rows (id int4 PRIMARY KEY, a int4 NOT NULL, b int4, s text NOT NULL, t text, flag bool NOT NULL)";

const WORDS: &[&str] = &["", "a", "ab", "abc", "b", "ba", "c", "bca"];

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(WORDS).prop_map(str::to_owned)
}

fn rows() -> impl Strategy<Value = Vec<NewRow>> {
    prop::collection::vec(
        (
            -4..4i32,
            prop::option::of(-4..4i32),
            word(),
            prop::option::of(word()),
            any::<bool>(),
        ),
        0..25,
    )
    .prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (a, b, s, t, flag))| NewRow {
                id: i as i32,
                a,
                b,
                s,
                t,
                flag,
            })
            .collect()
    })
}

/// A filter that can both build a tabula `Filter` and evaluate itself in memory.
#[derive(Debug, Clone)]
enum F {
    A(Cmp, i32),
    ABetween(i32, i32),
    AIn(Vec<i32>, bool),
    B(Cmp, i32),
    BNull(bool),
    BIn(Vec<i32>, bool),
    S(Cmp, String),
    SLike(String, bool),
    T(Cmp, String),
    TNull(bool),
    Flag(bool),
    And(Vec<F>),
    Or(Vec<F>),
    Not(Box<F>),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds<T: Ord>(self, x: &T, y: &T) -> bool {
        let o = x.cmp(y);
        match self {
            Cmp::Eq => o == Ordering::Equal,
            Cmp::Ne => o != Ordering::Equal,
            Cmp::Lt => o == Ordering::Less,
            Cmp::Le => o != Ordering::Greater,
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Ge => o != Ordering::Less,
        }
    }
}

macro_rules! cmp_filter {
    ($cmp:expr, $col:expr, $v:expr) => {
        match $cmp {
            Cmp::Eq => $col.eq($v),
            Cmp::Ne => $col.ne($v),
            Cmp::Lt => $col.lt($v),
            Cmp::Le => $col.le($v),
            Cmp::Gt => $col.gt($v),
            Cmp::Ge => $col.ge($v),
        }
    };
}

fn like(text: &str, pattern: &str, fold: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if fold {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    fn go(t: &[char], p: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('%') => (0..=t.len()).any(|k| go(&t[k..], &p[1..])),
            Some('_') => !t.is_empty() && go(&t[1..], &p[1..]),
            Some(c) => t.first() == Some(c) && go(&t[1..], &p[1..]),
        }
    }
    go(&t, &p)
}

fn in_list(x: Option<i32>, list: &[i32], positive: bool) -> Option<bool> {
    if list.is_empty() {
        return Some(!positive);
    }
    let x = x?;
    Some(list.contains(&x) == positive)
}

impl F {
    fn filter(&self) -> Filter<Row> {
        match self {
            F::A(c, v) => cmp_filter!(c, Row::A, *v),
            F::ABetween(lo, hi) => Row::A.between(*lo, *hi),
            F::AIn(list, true) => Row::A.is_in(list.clone()),
            F::AIn(list, false) => Row::A.not_in(list.clone()),
            F::B(c, v) => cmp_filter!(c, Row::B, *v),
            F::BNull(true) => Row::B.is_null(),
            F::BNull(false) => Row::B.is_not_null(),
            F::BIn(list, true) => Row::B.is_in(list.clone()),
            F::BIn(list, false) => Row::B.not_in(list.clone()),
            F::S(c, v) => cmp_filter!(c, Row::S, v.as_str()),
            F::SLike(p, false) => Row::S.like(p.as_str()),
            F::SLike(p, true) => Row::S.ilike(p.as_str()),
            F::T(c, v) => cmp_filter!(c, Row::T, v.as_str()),
            F::TNull(true) => Row::T.is_null(),
            F::TNull(false) => Row::T.is_not_null(),
            F::Flag(v) => Row::FLAG.eq(*v),
            F::And(fs) => fs
                .iter()
                .map(F::filter)
                .reduce(Filter::and)
                .unwrap_or_else(|| Row::ID.ge(i32::MIN)),
            F::Or(fs) => fs
                .iter()
                .map(F::filter)
                .reduce(Filter::or)
                .unwrap_or_else(|| Row::ID.lt(i32::MIN)),
            F::Not(f) => f.filter().not(),
        }
    }

    /// SQL's three-valued result: `None` is NULL.
    fn eval(&self, r: &NewRow) -> Option<bool> {
        match self {
            F::A(c, v) => Some(c.holds(&r.a, v)),
            F::ABetween(lo, hi) => Some(*lo <= r.a && r.a <= *hi),
            F::AIn(list, positive) => in_list(Some(r.a), list, *positive),
            F::B(c, v) => r.b.map(|b| c.holds(&b, v)),
            F::BNull(null) => Some(r.b.is_none() == *null),
            F::BIn(list, positive) => in_list(r.b, list, *positive),
            F::S(c, v) => Some(c.holds(&r.s, v)),
            F::SLike(p, fold) => Some(like(&r.s, p, *fold)),
            F::T(c, v) => r.t.as_ref().map(|t| c.holds(t, v)),
            F::TNull(null) => Some(r.t.is_none() == *null),
            F::Flag(v) => Some(r.flag == *v),
            F::And(fs) => fs
                .iter()
                .try_fold(Some(true), |acc, f| match (acc, f.eval(r)) {
                    (_, Some(false)) | (Some(false), _) => Err(()),
                    (Some(true), Some(true)) => Ok(Some(true)),
                    _ => Ok(None),
                })
                .unwrap_or(Some(false)),
            F::Or(fs) => fs
                .iter()
                .try_fold(Some(false), |acc, f| match (acc, f.eval(r)) {
                    (_, Some(true)) | (Some(true), _) => Err(()),
                    (Some(false), Some(false)) => Ok(Some(false)),
                    _ => Ok(None),
                })
                .unwrap_or(Some(true)),
            F::Not(f) => f.eval(r).map(|b| !b),
        }
    }
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop::sample::select(vec![Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge])
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', 'A', '%', '_']), 0..4)
        .prop_map(|cs| cs.into_iter().collect())
}

fn leaf() -> impl Strategy<Value = F> {
    let int = -5..5i32;
    let list = prop::collection::vec(-5..5i32, 0..4);
    prop_oneof![
        (cmp(), int.clone()).prop_map(|(c, v)| F::A(c, v)),
        (int.clone(), int.clone()).prop_map(|(lo, hi)| F::ABetween(lo, hi)),
        (list.clone(), any::<bool>()).prop_map(|(l, p)| F::AIn(l, p)),
        (cmp(), int).prop_map(|(c, v)| F::B(c, v)),
        any::<bool>().prop_map(F::BNull),
        (list, any::<bool>()).prop_map(|(l, p)| F::BIn(l, p)),
        (cmp(), word()).prop_map(|(c, v)| F::S(c, v)),
        (pattern(), any::<bool>()).prop_map(|(p, i)| F::SLike(p, i)),
        (cmp(), word()).prop_map(|(c, v)| F::T(c, v)),
        any::<bool>().prop_map(F::TNull),
        any::<bool>().prop_map(F::Flag),
    ]
}

fn filter_tree() -> impl Strategy<Value = F> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(F::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(F::Or),
            inner.prop_map(|f| F::Not(Box::new(f))),
        ]
    })
}

/// (column 0..=5, descending, nulls: None / first / last)
type Key = (usize, bool, Option<bool>);

fn order_key(k: &Key) -> OrderBy<Row> {
    let key = match k.0 {
        0 => {
            if k.1 {
                Row::A.desc()
            } else {
                Row::A.asc()
            }
        }
        1 => {
            if k.1 {
                Row::B.desc()
            } else {
                Row::B.asc()
            }
        }
        2 => {
            if k.1 {
                Row::S.desc()
            } else {
                Row::S.asc()
            }
        }
        3 => {
            if k.1 {
                Row::T.desc()
            } else {
                Row::T.asc()
            }
        }
        _ => {
            if k.1 {
                Row::FLAG.desc()
            } else {
                Row::FLAG.asc()
            }
        }
    };
    match k.2 {
        Some(true) => key.nulls_first(),
        Some(false) => key.nulls_last(),
        None => key,
    }
}

fn compare_key(k: &Key, x: &NewRow, y: &NewRow) -> Ordering {
    fn with_nulls<T: Ord>(x: Option<T>, y: Option<T>, desc: bool, nulls_first: bool) -> Ordering {
        match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(a), Some(b)) => {
                if desc {
                    b.cmp(&a)
                } else {
                    a.cmp(&b)
                }
            }
        }
    }
    let nulls_first = k.2.unwrap_or(k.1);
    match k.0 {
        0 => with_nulls(Some(x.a), Some(y.a), k.1, nulls_first),
        1 => with_nulls(x.b, y.b, k.1, nulls_first),
        2 => with_nulls(Some(&x.s), Some(&y.s), k.1, nulls_first),
        3 => with_nulls(x.t.as_ref(), y.t.as_ref(), k.1, nulls_first),
        _ => with_nulls(Some(x.flag), Some(y.flag), k.1, nulls_first),
    }
}

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<NewRow>,
    filter: Option<F>,
    order: Vec<Key>,
    limit: Option<u64>,
    offset: Option<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        rows(),
        prop::option::weighted(0.9, filter_tree()),
        prop::collection::vec(
            (0..5usize, any::<bool>(), prop::option::of(any::<bool>())),
            0..3,
        ),
        prop::option::of(0..12u64),
        prop::option::of(0..8u64),
    )
        .prop_map(|(rows, filter, order, limit, offset)| Case {
            rows,
            filter,
            order,
            limit,
            offset,
        })
}

async fn check(db: &Db, case: Case) -> Result<(), TestCaseError> {
    db.delete_all::<Row>()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    db.create_many(case.rows.clone())
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;

    let mut query = db.query::<Row>();
    if let Some(f) = &case.filter {
        query = query.filter(f.filter());
    }
    for k in &case.order {
        query = query.order_by(order_key(k));
    }
    query = query.order_by(Row::ID.asc());
    if let Some(n) = case.limit {
        query = query.limit(n);
    }
    if let Some(n) = case.offset {
        query = query.offset(n);
    }
    let got: Vec<i32> = query
        .all()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .iter()
        .map(|r| r.id)
        .collect();

    let mut expected: Vec<&NewRow> = case
        .rows
        .iter()
        .filter(|r| case.filter.as_ref().is_none_or(|f| f.eval(r) == Some(true)))
        .collect();
    expected.sort_by(|x, y| {
        case.order
            .iter()
            .map(|k| compare_key(k, x, y))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or_else(|| x.id.cmp(&y.id))
    });
    let skip = case.offset.unwrap_or(0) as usize;
    let take = case.limit.map_or(usize::MAX, |n| n as usize);
    let expected: Vec<i32> = expected
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|r| r.id)
        .collect();
    prop_assert_eq!(
        got,
        expected,
        "filter {:?} order {:?}",
        case.filter,
        case.order
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn queries_agree_with_an_in_memory_evaluation() {
    let rt = runtime();
    let db = rt.block_on(async {
        let db = common::db().await;
        db.execute_batch(SCHEMA).await.expect("schema");
        db
    });
    let result = runner(400).run(&case(), |case| rt.block_on(check(&db, case)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn column_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "username",
            "avatar_url",
            "status",
            "created_at",
            "user_id"
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
        prop::sample::select(vec![
            "\"id\"",
            "id; DROP TABLE profiles",
            "username--",
            "*",
            "id)",
            ""
        ])
        .prop_map(str::to_owned),
    ]
}

fn op() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "eq", "ne", "lt", "lte", "gt", "gte", "like", "ilike", "in", "not_in", "is_null",
            "not_null", "contains",
        ])
        .prop_map(str::to_owned),
        ".{0,8}",
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,16}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "' OR '1'='1",
            "x'); DROP TABLE profiles; --",
            "2026-11-25T01:02:03Z",
            "00000000-0000-0000-0000-000000000000",
            "%",
            "\\",
            "\u{0}",
            "NaN",
            "1e400",
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(serde_json::Value::Array)
    })
}

fn spec() -> impl Strategy<Value = QuerySpec> {
    (
        prop::collection::vec((column_name(), op(), prop::option::of(json_value())), 0..4),
        prop::option::of(prop::collection::vec(column_name(), 0..3)),
        prop::option::of((
            column_name(),
            prop::sample::select(vec!["asc", "desc", "sideways"]),
        )),
        prop::option::of(0..2000u64),
    )
        .prop_map(|(filters, select, order, limit)| QuerySpec {
            filters: filters
                .into_iter()
                .map(|(column, op, value)| FilterSpec { column, op, value })
                .collect(),
            select: select.map(tabula::query::spec::SelectSpec::Columns),
            order: order.map(|(c, d)| {
                tabula::query::spec::OrderSpec::Map([(c, d.to_owned())].into_iter().collect())
            }),
            limit,
            ..QuerySpec::default()
        })
}

#[test]
fn arbitrary_query_specs_are_refused_or_answered_never_crash() {
    let rt = runtime();
    let db = rt.block_on(async {
        let db = common::db().await;
        for name in ["' OR '1'='1", "x'); DROP TABLE profiles; --", "plain"] {
            db.create(common::new_profile(name)).await.expect("seed");
        }
        db
    });
    let limits = SpecLimits::default();
    let answered = std::cell::Cell::new(0);
    let result = runner(500).run(&spec(), |spec| {
        let outcome = rt.block_on(db.query_spec::<common::Profile>(&spec, &limits));
        match outcome {
            Ok(page) => {
                answered.set(answered.get() + 1);
                prop_assert!(page.rows.len() as u64 <= spec.limit.unwrap_or(100));
                // Every equality on username holds for each returned row.
                for f in spec
                    .filters
                    .iter()
                    .filter(|f| f.column == "username" && f.op == "eq")
                {
                    for row in &page.rows {
                        if let (Some(got), Some(serde_json::Value::String(want))) =
                            (row.get("username"), &f.value)
                        {
                            prop_assert_eq!(got.as_str(), Some(want.as_str()));
                        }
                    }
                }
                Ok(())
            }
            Err(Error::Validation(_)) => Ok(()),
            Err(other) => Err(TestCaseError::fail(format!(
                "{spec:?} gave a non-validation error: {other}"
            ))),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let answered = answered.get();
    assert!(
        answered > 20,
        "the generator should produce valid specs too (answered {answered})"
    );
    // The injection strings are plain values: they find exactly their own row.
    for name in ["' OR '1'='1", "x'); DROP TABLE profiles; --"] {
        let spec = QuerySpec {
            eq: [("username".to_owned(), serde_json::Value::from(name))]
                .into_iter()
                .collect(),
            ..QuerySpec::default()
        };
        let page = rt
            .block_on(db.query_spec::<common::Profile>(&spec, &limits))
            .expect("query");
        assert_eq!(page.rows.len(), 1, "{name}");
    }
    assert_eq!(
        rt.block_on(db.query::<common::Profile>().count())
            .expect("table intact"),
        3
    );
}
