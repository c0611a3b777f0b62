//! Filters: typed comparisons built from a model's columns, combined with and / or /
//! not, rendered to sea-query with every value bound as a parameter.

use std::marker::PhantomData;

use sea_query::{Alias, Expr, ExprTrait};

use super::OrderBy;
use crate::sql::{Binder, OwnedParam};
use crate::table::{Column, Table, TableMeta};
use crate::types::ColumnType;

/// A value usable where a column of type `T` is expected: `T` itself, `&str` for text
/// columns, and the inner value for a nullable column.
#[diagnostic::on_unimplemented(
    message = "a `{Self}` cannot be compared with a column of type `{T}`",
    label = "expected a value of the column's type `{T}`"
)]
pub trait IntoValue<T> {
    /// The value as a bound parameter.
    fn into_param(self) -> OwnedParam;
}

impl<T: ColumnType> IntoValue<T> for T {
    fn into_param(self) -> OwnedParam {
        std::sync::Arc::new(self)
    }
}

impl<T: ColumnType> IntoValue<Option<T>> for T {
    fn into_param(self) -> OwnedParam {
        std::sync::Arc::new(self)
    }
}

impl IntoValue<String> for &str {
    fn into_param(self) -> OwnedParam {
        std::sync::Arc::new(self.to_owned())
    }
}

impl IntoValue<Option<String>> for &str {
    fn into_param(self) -> OwnedParam {
        std::sync::Arc::new(self.to_owned())
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    Contains,
}

#[derive(Clone)]
pub(crate) enum Node {
    Compare(usize, Op, OwnedParam),
    Between(usize, OwnedParam, OwnedParam),
    In(usize, Vec<OwnedParam>, bool),
    IsNull(usize, bool),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// A filter on rows of model `M`, built from its columns and combined with
/// [`and`](Filter::and), [`or`](Filter::or) and [`not`](Filter::not).
///
/// ```
/// # use tabula::Table;
/// # #[derive(Table)] pub struct Item { #[table(primary_key)] pub id: i64, pub price: i32, pub name: Option<String> }
/// let cheap_or_unnamed = Item::PRICE.lt(10).or(Item::NAME.is_null());
/// let _f = cheap_or_unnamed.and(Item::ID.ne(0_i64)).not();
/// ```
pub struct Filter<M> {
    pub(crate) node: Node,
    _model: PhantomData<fn() -> M>,
}

impl<M> Filter<M> {
    pub(crate) fn new(node: Node) -> Self {
        Filter {
            node,
            _model: PhantomData,
        }
    }

    /// Both this and `other`.
    pub fn and(self, other: Filter<M>) -> Filter<M> {
        Filter::new(match self.node {
            Node::And(mut all) => {
                all.push(other.node);
                Node::And(all)
            }
            node => Node::And(vec![node, other.node]),
        })
    }

    /// This or `other`.
    pub fn or(self, other: Filter<M>) -> Filter<M> {
        Filter::new(match self.node {
            Node::Or(mut any) => {
                any.push(other.node);
                Node::Or(any)
            }
            node => Node::Or(vec![node, other.node]),
        })
    }

    /// Not this.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter<M> {
        Filter::new(Node::Not(Box::new(self.node)))
    }
}

impl<M: Table, T: ColumnType> Column<M, T> {
    fn compare(self, op: Op, value: impl IntoValue<T>) -> Filter<M> {
        Filter::new(Node::Compare(self.index(), op, value.into_param()))
    }

    /// `column = value`.
    pub fn eq(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Eq, value)
    }

    /// `column <> value`.
    pub fn ne(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Ne, value)
    }

    /// `column < value`.
    pub fn lt(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Lt, value)
    }

    /// `column <= value`.
    pub fn le(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Le, value)
    }

    /// `column > value`.
    pub fn gt(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Gt, value)
    }

    /// `column >= value`.
    pub fn ge(self, value: impl IntoValue<T>) -> Filter<M> {
        self.compare(Op::Ge, value)
    }

    /// `column BETWEEN low AND high` (both ends included).
    pub fn between(self, low: impl IntoValue<T>, high: impl IntoValue<T>) -> Filter<M> {
        Filter::new(Node::Between(
            self.index(),
            low.into_param(),
            high.into_param(),
        ))
    }

    /// `column IN (values…)`; an empty list matches no row.
    pub fn is_in<V: IntoValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<M> {
        let values = values.into_iter().map(IntoValue::into_param).collect();
        Filter::new(Node::In(self.index(), values, true))
    }

    /// `column NOT IN (values…)`; an empty list matches every row.
    pub fn not_in<V: IntoValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<M> {
        let values = values.into_iter().map(IntoValue::into_param).collect();
        Filter::new(Node::In(self.index(), values, false))
    }

    /// Ascending order on this column.
    pub fn asc(self) -> OrderBy<M> {
        OrderBy::new(self.index(), false)
    }

    /// Descending order on this column.
    pub fn desc(self) -> OrderBy<M> {
        OrderBy::new(self.index(), true)
    }
}

/// Pattern matching on text columns.
impl<M: Table> Column<M, String> {
    /// `column LIKE pattern` (`%` and `_` are wildcards).
    pub fn like(self, pattern: impl IntoValue<String>) -> Filter<M> {
        self.compare(Op::Like, pattern)
    }

    /// `column ILIKE pattern`: like [`like`](Self::like), ignoring case.
    pub fn ilike(self, pattern: impl IntoValue<String>) -> Filter<M> {
        self.compare(Op::ILike, pattern)
    }
}

/// Containment on JSON columns.
impl<M: Table> Column<M, serde_json::Value> {
    /// `column @> value`: the JSON document contains `value` (PostgreSQL's jsonb
    /// containment: objects match on a subset of keys, arrays on a subset of elements).
    pub fn contains(self, value: serde_json::Value) -> Filter<M> {
        self.compare(Op::Contains, value)
    }
}

/// Containment on nullable JSON columns.
impl<M: Table> Column<M, Option<serde_json::Value>> {
    /// `column @> value`; NULL contains nothing.
    pub fn contains(self, value: serde_json::Value) -> Filter<M> {
        self.compare(Op::Contains, value)
    }
}

impl<M: Table, T: ColumnType> Column<M, Option<T>> {
    /// `column IS NULL`.
    pub fn is_null(self) -> Filter<M> {
        Filter::new(Node::IsNull(self.index(), true))
    }

    /// `column IS NOT NULL`.
    pub fn is_not_null(self) -> Filter<M> {
        Filter::new(Node::IsNull(self.index(), false))
    }
}

pub(crate) fn condition(meta: &TableMeta, node: &Node, binder: &mut Binder<'_>) -> Expr {
    let col = |i: usize| Expr::col(Alias::new(meta.columns[i].name));
    match node {
        Node::Compare(i, op, value) => {
            let v = binder.owned(value.clone());
            match op {
                Op::Eq => col(*i).eq(v),
                Op::Ne => col(*i).ne(v),
                Op::Lt => col(*i).lt(v),
                Op::Le => col(*i).lte(v),
                Op::Gt => col(*i).gt(v),
                Op::Ge => col(*i).gte(v),
                Op::Like => col(*i).binary(sea_query::BinOper::Like, v),
                Op::Contains => col(*i).binary(
                    sea_query::BinOper::PgOperator(
                        sea_query::extension::postgres::PgBinOper::Contains,
                    ),
                    v,
                ),
                Op::ILike => col(*i).binary(
                    sea_query::BinOper::PgOperator(
                        sea_query::extension::postgres::PgBinOper::ILike,
                    ),
                    v,
                ),
            }
        }
        Node::Between(i, low, high) => {
            let (low, high) = (binder.owned(low.clone()), binder.owned(high.clone()));
            col(*i).between(low, high)
        }
        Node::In(i, values, positive) => {
            if values.is_empty() {
                // IN () is not SQL; an empty list matches nothing (NOT IN: everything).
                return Expr::cust(if *positive { "FALSE" } else { "TRUE" });
            }
            let values: Vec<Expr> = values.iter().map(|v| binder.owned(v.clone())).collect();
            if *positive {
                col(*i).is_in(values)
            } else {
                col(*i).is_not_in(values)
            }
        }
        Node::IsNull(i, true) => col(*i).is_null(),
        Node::IsNull(i, false) => col(*i).is_not_null(),
        Node::And(nodes) => combine(meta, nodes, binder, true),
        Node::Or(nodes) => combine(meta, nodes, binder, false),
        Node::Not(node) => condition(meta, node, binder).not(),
    }
}

fn combine(meta: &TableMeta, nodes: &[Node], binder: &mut Binder<'_>, all: bool) -> Expr {
    let mut exprs = nodes.iter().map(|n| condition(meta, n, binder));
    let Some(first) = exprs.next() else {
        return Expr::cust(if all { "TRUE" } else { "FALSE" });
    };
    exprs.fold(first, |acc, e| if all { acc.and(e) } else { acc.or(e) })
}
