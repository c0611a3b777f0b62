//! Filters: typed comparisons built from a model's columns, combined with and / or /
//! not, rendered to sea-query with every value bound as a parameter.
//!
//! A filter is a tree, and a tree can come from untrusted input, so nothing walks it
//! by recursion unless its depth was checked first: the depth itself is measured with
//! an explicit stack ([`check_depth`]), a tree is dropped with an explicit stack (the
//! `Drop` of [`Node`]), and only [`render`], which checks the depth against
//! [`MAX_FILTER_DEPTH`] before anything else, turns a tree into SQL. An `and` / `or`
//! of many parts is rendered as a balanced tree, so a filter of 70,000 alternatives is
//! 17 levels deep in SQL, not 70,000. An `IN` list is one array parameter
//! (`col = ANY($1)`), so its length changes neither the SQL text nor the number of
//! parameters.

use std::marker::PhantomData;

use sea_query::extension::postgres::PgFunc;
use sea_query::{Alias, Expr, ExprTrait};

use super::OrderBy;
use crate::error::{Error, Result};
use crate::sql::{Binder, OwnedParam, ParamList};
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

/// The deepest a filter may nest, in levels of the SQL it renders to: each `not` is a
/// level, and an `and` / `or` of `n` parts is ⌈log₂ n⌉ levels (it is rendered as a
/// balanced tree), so a chain `a.and(b).and(c)…` of any length costs a handful of
/// levels while each `.not()` or alternation of `and` and `or` costs one. A deeper
/// filter, from the typed builder or a [`QuerySpec`](super::QuerySpec) alike, is an
/// [`Error::Validation`] before any SQL is rendered. Hand-written filters stay far
/// below it; the limit exists so that input cannot drive rendering (here, in sea-query
/// and in PostgreSQL's parser) arbitrarily deep.
pub const MAX_FILTER_DEPTH: usize = 64;

/// A filter tree. Not `Clone`: a deep tree must never be walked by recursion, and a
/// derived `clone` would.
pub(crate) enum Node {
    Compare(usize, Op, OwnedParam),
    Between(usize, OwnedParam, OwnedParam),
    /// `col = ANY($1)` (true) or `col <> ALL($1)` (false), the list one [`ParamList`].
    In(usize, OwnedParam, bool),
    IsNull(usize, bool),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

impl Node {
    /// A node with no children and nothing to bind (`TRUE`), to leave behind when a
    /// child is moved out.
    const EMPTY: Node = Node::And(Vec::new());

    /// Moves this node's children onto `stack`, leaving it childless.
    fn detach_children(&mut self, stack: &mut Vec<Node>) {
        match self {
            Node::And(children) | Node::Or(children) => stack.append(children),
            Node::Not(child) => stack.push(std::mem::replace(&mut **child, Node::EMPTY)),
            _ => {}
        }
    }
}

/// Drops the tree with an explicit stack: the derived drop glue would recurse once per
/// level and overflow the stack (aborting the process) on a deep enough tree.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.detach_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.detach_children(&mut stack);
            // `node` is childless here: its own drop does not recurse.
        }
    }
}

/// Whether a LIKE pattern ends in an unpaired `\` (an odd run of them).
fn ends_in_escape(pattern: &(dyn tokio_postgres::types::ToSql + Sync + Send)) -> bool {
    let mut text = bytes::BytesMut::new();
    if pattern
        .to_sql_checked(&tokio_postgres::types::Type::TEXT, &mut text)
        .is_err()
    {
        return false;
    }
    text.iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
}

/// ⌈log₂ n⌉: the levels of a balanced binary tree over `n` parts.
fn balanced_levels(n: usize) -> usize {
    n.next_power_of_two().trailing_zeros() as usize
}

/// Appends the shape of `node` to `shape` — its structure, columns and operators,
/// never a value — in pre-order with child counts, so two trees have the same shape
/// exactly when they render the same SQL. `false` (and `shape` unusable) past
/// `limit` entries: such a filter is not worth keeping a template for.
pub(crate) fn shape(node: &Node, shape: &mut Vec<u64>, limit: usize) -> bool {
    // Most filters are one comparison: no stack for them.
    let mut stack: Vec<&Node> = Vec::new();
    let mut next = Some(node);
    while let Some(node) = next.take().or_else(|| stack.pop()) {
        if shape.len() > limit {
            return false;
        }
        match node {
            Node::Compare(i, op, _) => shape.extend([1, *i as u64, *op as u64]),
            Node::Between(i, _, _) => shape.extend([2, *i as u64]),
            Node::In(i, _, positive) => shape.extend([3, *i as u64, u64::from(*positive)]),
            Node::IsNull(i, null) => shape.extend([4, *i as u64, u64::from(*null)]),
            Node::And(children) | Node::Or(children) => {
                let tag = if matches!(node, Node::And(_)) { 5 } else { 6 };
                shape.extend([tag, children.len() as u64]);
                stack.extend(children.iter().rev());
            }
            Node::Not(child) => {
                shape.push(7);
                stack.push(child);
            }
        }
    }
    true
}

/// The values `node` binds, in the order [`render`] binds them (pre-order, left to
/// right), for a template of its shape. The checks of values [`check_depth`] makes
/// before rendering are made here too: a template skips the rendering, not them.
pub(crate) fn values(table: &str, node: &Node, out: &mut Vec<OwnedParam>) -> Result<()> {
    let mut stack: Vec<&Node> = Vec::new();
    let mut next = Some(node);
    while let Some(node) = next.take().or_else(|| stack.pop()) {
        check_value(table, node)?;
        match node {
            Node::Compare(_, _, value) | Node::In(_, value, _) => out.push(value.clone()),
            Node::Between(_, low, high) => out.extend([low.clone(), high.clone()]),
            Node::IsNull(..) => {}
            Node::And(children) | Node::Or(children) => stack.extend(children.iter().rev()),
            Node::Not(child) => stack.push(child),
        }
    }
    Ok(())
}

/// The check of one node's own value: a LIKE pattern PostgreSQL can read (whether it
/// would read it depends on the rows and the plan: the answer must not).
fn check_value(table: &str, node: &Node) -> Result<()> {
    match node {
        Node::Compare(_, Op::Like | Op::ILike, pattern) if ends_in_escape(pattern.as_ref()) => {
            Err(Error::Validation(format!(
                "a LIKE pattern on `{table}` ends in its escape character `\\` \
                 (write `\\\\` for a backslash)"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks that `node` renders at most [`MAX_FILTER_DEPTH`] levels deep, walking it with
/// an explicit stack and stopping at the first path that is too deep — and the values
/// in it (see [`check_value`]).
pub(crate) fn check_depth(table: &str, node: &Node) -> Result<()> {
    // Each entry: a node and the levels above it.
    let mut stack: Vec<(&Node, usize)> = vec![(node, 0)];
    while let Some((node, above)) = stack.pop() {
        let here = above + 1;
        if here > MAX_FILTER_DEPTH {
            return Err(Error::Validation(format!(
                "a filter on `{table}` nests deeper than {MAX_FILTER_DEPTH} levels"
            )));
        }
        check_value(table, node)?;
        match node {
            Node::Not(child) => stack.push((child, here)),
            Node::And(children) | Node::Or(children) if !children.is_empty() => {
                let levels = balanced_levels(children.len());
                stack.extend(children.iter().map(|c| (c, above + levels)));
            }
            _ => {}
        }
    }
    Ok(())
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
    pub fn and(mut self, other: Filter<M>) -> Filter<M> {
        if let Node::And(all) = &mut self.node {
            all.push(other.node);
            return self;
        }
        Filter::new(Node::And(vec![self.node, other.node]))
    }

    /// This or `other`.
    pub fn or(mut self, other: Filter<M>) -> Filter<M> {
        if let Node::Or(any) = &mut self.node {
            any.push(other.node);
            return self;
        }
        Filter::new(Node::Or(vec![self.node, other.node]))
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

    /// `column IN (values…)`, sent as `column = ANY($1)` with the list as one array
    /// parameter: any length, and the same SQL text whatever the length (so the
    /// prepared statement is reused). An empty list matches no row; a NULL column is in
    /// no list.
    pub fn is_in<V: IntoValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<M> {
        Filter::new(Node::In(self.index(), ParamList::collect(values), true))
    }

    /// `column NOT IN (values…)`, sent as `column <> ALL($1)`, which PostgreSQL defines
    /// to mean the same, NULLs included: an empty list matches every row (even where
    /// the column is NULL); otherwise a row whose column is NULL is not returned (SQL's
    /// `NULL NOT IN (…)` is NULL, not true), nor is any row when the list holds a NULL.
    pub fn not_in<V: IntoValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<M> {
        Filter::new(Node::In(self.index(), ParamList::collect(values), false))
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
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl<M: Table> Column<M, serde_json::Value> {
    /// `column @> value`: the JSON document contains `value` (PostgreSQL's jsonb
    /// containment: objects match on a subset of keys, arrays on a subset of elements).
    pub fn contains(self, value: serde_json::Value) -> Filter<M> {
        self.compare(Op::Contains, value)
    }
}

/// Containment on nullable JSON columns.
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
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

/// The condition `node` stands for, after checking its depth: the only way a filter
/// becomes SQL.
pub(crate) fn render(meta: &TableMeta, node: &Node, binder: &mut Binder<'_>) -> Result<Expr> {
    render_as(meta, None, node, binder)
}

/// [`render`], with every column qualified by the table's alias in a join.
pub(crate) fn render_as(
    meta: &TableMeta,
    alias: Option<&str>,
    node: &Node,
    binder: &mut Binder<'_>,
) -> Result<Expr> {
    check_depth(meta.name, node)?;
    Ok(condition(meta, alias, node, binder))
}

/// A column of `meta`, qualified by `alias` when there is one.
pub(crate) fn column_expr(meta: &TableMeta, alias: Option<&str>, index: usize) -> Expr {
    let name = Alias::new(meta.columns[index].name);
    match alias {
        Some(table) => Expr::col((Alias::new(table), name)),
        None => Expr::col(name),
    }
}

/// Recursive, so only for trees whose depth [`check_depth`] bounded.
fn condition(meta: &TableMeta, alias: Option<&str>, node: &Node, binder: &mut Binder<'_>) -> Expr {
    let col = |i: usize| column_expr(meta, alias, i);
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
        Node::In(i, list, positive) => {
            // `= ANY` of an empty array is false and `<> ALL` of one true, for every
            // row: what `IN ()` and `NOT IN ()` would mean if SQL had them.
            let list = binder.owned(list.clone());
            if *positive {
                col(*i).eq(PgFunc::any(list))
            } else {
                col(*i).ne(PgFunc::all(list))
            }
        }
        Node::IsNull(i, true) => col(*i).is_null(),
        Node::IsNull(i, false) => col(*i).is_not_null(),
        Node::And(nodes) => combine(meta, alias, nodes, binder, true),
        Node::Or(nodes) => combine(meta, alias, nodes, binder, false),
        Node::Not(node) => condition(meta, alias, node, binder).not(),
    }
}

/// Joins the parts pairwise, level by level: a balanced tree ⌈log₂ n⌉ deep, where a
/// left fold would nest `n` deep and overflow the stack of whatever renders or drops
/// it (sea-query, PostgreSQL's parser) on a wide enough filter.
fn combine(
    meta: &TableMeta,
    alias: Option<&str>,
    nodes: &[Node],
    binder: &mut Binder<'_>,
    all: bool,
) -> Expr {
    let mut level: Vec<Expr> = nodes
        .iter()
        .map(|n| condition(meta, alias, n, binder))
        .collect();
    while level.len() > 1 {
        let mut parts = level.into_iter();
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        while let Some(a) = parts.next() {
            next.push(match parts.next() {
                Some(b) if all => a.and(b),
                Some(b) => a.or(b),
                None => a,
            });
        }
        level = next;
    }
    level
        .pop()
        .unwrap_or_else(|| Expr::cust(if all { "TRUE" } else { "FALSE" }))
}
