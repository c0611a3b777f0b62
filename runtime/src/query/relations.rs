//! Relations: a child model declares the parent it belongs to
//! (`#[table(belongs_to = Parent)]` on its foreign-key field, whose type must be the
//! parent's key), and `Db` loads either side for a whole slice at once — one query per
//! level, never one per row.
//!
//! Children are matched to parents by the key's value as Rust sees it: with a key
//! type whose database equality is looser (`citext`), spell foreign keys as the
//! parent's.
//!
//! The parent names no child: the derive implements [`BelongsTo<Parent>`] on the
//! *child*, and a loader finds the relation through the two types
//! (`db.children::<Profile, Experience>(&profiles)`). A model with no such declaration
//! is a compile error there, not a run-time surprise.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;

use crate::db::Db;
use crate::error::Result;
use crate::table::{BelongsTo, Table};

/// The children of a set of parents, grouped by parent; see [`Db::children`](crate::Db::children).
///
/// ```no_run
/// # use tabula::{Db, Table};
/// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64 }
/// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
/// # async fn run(db: Db, users: Vec<User>) -> tabula::Result<()> {
/// let posts = db.children::<User, Post>(&users).await?;
/// for user in &users {
///     let theirs: &[Post] = posts.of(user);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Children<P, C> {
    /// A parent's key (as text) to its group.
    index: HashMap<String, usize>,
    /// The groups, in the order their parents were first listed; each in the child's
    /// key order.
    groups: Vec<Vec<C>>,
    _parent: PhantomData<fn() -> P>,
}

impl<P: Table, C> Children<P, C> {
    fn group(&self, parent: &P) -> Option<usize> {
        self.index
            .get(&crate::db::key_text::<P>(parent.key()))
            .copied()
    }

    /// The children of `parent` (none when it has none, or was not among the parents
    /// loaded).
    pub fn of(&self, parent: &P) -> &[C] {
        self.group(parent)
            .map_or(&[], |g| self.groups[g].as_slice())
    }

    /// Moves the children of `parent` out (a second call for it returns none).
    pub fn take(&mut self, parent: &P) -> Vec<C> {
        self.group(parent)
            .map(|g| std::mem::take(&mut self.groups[g]))
            .unwrap_or_default()
    }

    /// Every child loaded, for the next level down: the first parent's children, then
    /// the next parent's, in the order the parents were given (a parent listed twice
    /// counts once), each parent's in key order.
    pub fn all(&self) -> impl Iterator<Item = &C> {
        self.groups.iter().flatten()
    }

    /// How many children were loaded.
    pub fn len(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// Whether no child was loaded.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(Vec::is_empty)
    }

    /// Each parent with its children, in the parents' order. The children are moved,
    /// not copied; only a parent listed twice gets a copy of its children.
    pub fn attach(self, parents: Vec<P>) -> Vec<(P, Vec<C>)>
    where
        C: Clone,
    {
        let lined = self.lined_up(&parents);
        parents.into_iter().zip(lined).collect()
    }

    /// Each parent's children, lined up with `parents`: moved out on a parent's last
    /// listing, copied for the listings before it.
    pub(crate) fn lined_up(mut self, parents: &[P]) -> Vec<Vec<C>>
    where
        C: Clone,
    {
        let groups: Vec<Option<usize>> = parents.iter().map(|p| self.group(p)).collect();
        let mut left = vec![0usize; self.groups.len()];
        for g in groups.iter().flatten() {
            left[*g] += 1;
        }
        groups
            .into_iter()
            .map(|g| match g {
                None => Vec::new(),
                Some(g) => {
                    left[g] -= 1;
                    match left[g] {
                        0 => std::mem::take(&mut self.groups[g]),
                        _ => self.groups[g].clone(),
                    }
                }
            })
            .collect()
    }
}

impl crate::Db {
    /// The children of `parents` — every `C` whose foreign key (declared with
    /// `#[table(belongs_to = P)]`) names one of them — in one query (`= ANY($1)` on the
    /// parents' keys), ordered by the child's primary key. Levels compose: load the
    /// next one from [`Children::all`].
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64 }
    /// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
    /// # #[derive(Table, Clone)] pub struct Comment { #[table(primary_key)] pub id: i64, #[table(belongs_to = Post)] pub post_id: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let users = db.query::<User>().all().await?;
    /// let posts = db.children::<User, Post>(&users).await?;
    /// let all_posts: Vec<Post> = posts.all().cloned().collect();
    /// let comments = db.children::<Post, Comment>(&all_posts).await?; // three levels, three queries
    /// # Ok(()) }
    /// ```
    pub async fn children<P: Table, C: BelongsTo<P>>(
        &self,
        parents: &[P],
    ) -> Result<Children<P, C>> {
        self.children_via::<P, C, _>(parents, |query| async move { query.all().await })
            .await
    }

    /// [`children`](Self::children), reading through the row cache when `C` has one
    /// (outside transactions and user scopes): the query returns only the children's
    /// keys, and the rows come from [`Db::read_many`] — cache hits, and one query for
    /// the misses.
    pub(crate) async fn children_cached<P: Table, C: BelongsTo<P> + Clone>(
        &self,
        parents: &[P],
    ) -> Result<Children<P, C>> {
        let cached = C::META.cache_ttl.is_some()
            && self.shared.cache.is_some()
            && self.tx.is_none()
            && self.scope.is_none();
        if !cached {
            return self.children::<P, C>(parents).await;
        }
        let db = self.clone();
        self.children_via::<P, C, _>(parents, |query| async move {
            let keys = query.keys().await?;
            Ok(db
                .read_many::<C>(&keys)
                .await?
                .into_iter()
                .flatten()
                .collect())
        })
        .await
    }

    /// The children of `parents`, the rows fetched by `fetch` from the query that finds
    /// them.
    async fn children_via<P: Table, C: BelongsTo<P>, F>(
        &self,
        parents: &[P],
        fetch: impl FnOnce(super::Query<C>) -> F,
    ) -> Result<Children<P, C>>
    where
        F: Future<Output = Result<Vec<C>>>,
    {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut keys: Vec<P::Key> = Vec::with_capacity(parents.len());
        for parent in parents {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                index.entry(crate::db::key_text::<P>(parent.key()))
            {
                slot.insert(keys.len());
                keys.push(parent.key().clone());
            }
        }
        let mut groups: Vec<Vec<C>> = (0..keys.len()).map(|_| Vec::new()).collect();
        if !keys.is_empty() {
            let values: Vec<crate::sql::OwnedParam> = keys
                .into_iter()
                .map(|k| std::sync::Arc::new(k) as crate::sql::OwnedParam)
                .collect();
            let query = self
                .query::<C>()
                .filter_node(super::in_list(C::FOREIGN_KEY, values))
                .order_by_key();
            let rows = fetch(query).await?;
            for child in rows {
                // The query matched a key, so the foreign key is set (and names a
                // parent, unless the database's equality is looser than Rust's).
                let group = child
                    .parent_key()
                    .and_then(|key| index.get(&crate::db::key_text::<P>(key)));
                if let Some(&g) = group {
                    groups[g].push(child);
                }
            }
        }
        Ok(Children {
            index,
            groups,
            _parent: PhantomData,
        })
    }

    /// The parent of each of `children`, lined up with them (`None` for a child whose
    /// foreign key is NULL, or whose parent is gone), read by key — through the row cache when `P` has one — in one
    /// round trip for all of them.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64 }
    /// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
    /// # async fn run(db: Db, posts: Vec<Post>) -> tabula::Result<()> {
    /// let authors: Vec<Option<User>> = db.parents::<Post, User>(&posts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn parents<C: BelongsTo<P>, P: Table + Clone>(
        &self,
        children: &[C],
    ) -> Result<Vec<Option<P>>> {
        // Each distinct key once (many children share a parent); a NULL foreign key
        // has no parent.
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<P::Key> = children
            .iter()
            .filter_map(|c| c.parent_key())
            .filter(|key| seen.insert(crate::db::key_text::<P>(key)))
            .cloned()
            .collect();
        let mut found: HashMap<String, P> = HashMap::new();
        for parent in self.read_many::<P>(&keys).await?.into_iter().flatten() {
            found.insert(crate::db::key_text::<P>(parent.key()), parent);
        }
        Ok(children
            .iter()
            .map(|c| {
                c.parent_key()
                    .and_then(|key| found.get(&crate::db::key_text::<P>(key)).cloned())
            })
            .collect())
    }
}

/// What to load with each row of a query, one query per level: see
/// [`Query::load`](crate::Query::load), [`children`] and [`parent`].
pub trait Loader<P: Table>: Send + Sync {
    /// What each parent gets.
    type Output: Send + 'static;

    /// The related rows of each of `parents`, lined up with them.
    fn load<'a>(
        &'a self,
        db: &'a Db,
        parents: &'a [P],
    ) -> impl Future<Output = Result<Vec<Self::Output>>> + Send + 'a;
}

/// Loads the children `C` of each row (`Vec<C>`), or with [`LoadChildren::with`] the
/// next level below them too; from [`children`].
pub struct LoadChildren<C, L = ()> {
    next: L,
    _child: PhantomData<fn() -> C>,
}

/// A level below another; see [`LoadChildren::with`].
pub struct Nested<L>(L);

/// Loads each row's children of model `C` — the rows whose `#[table(belongs_to = …)]`
/// foreign key names it — in one query for all the rows (`= ANY($1)` on their keys),
/// through the row cache when `C` is cached.
///
/// ```no_run
/// # use tabula::{Db, Table};
/// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64 }
/// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
/// # #[derive(Table, Clone)] pub struct Comment { #[table(primary_key)] pub id: i64, #[table(belongs_to = Post)] pub post_id: i64 }
/// # async fn run(db: Db) -> tabula::Result<()> {
/// use tabula::query::children;
///
/// // Three levels, three queries.
/// let tree: Vec<(User, Vec<(Post, Vec<Comment>)>)> = db
///     .query::<User>()
///     .load(children::<Post>().with(children::<Comment>()))
///     .await?;
/// # Ok(()) }
/// ```
pub fn children<C: Table>() -> LoadChildren<C> {
    LoadChildren {
        next: (),
        _child: PhantomData,
    }
}

impl<C: Table> LoadChildren<C> {
    /// Also loads `next` for each child (the level below); `next` may be a pair of
    /// loaders, for two relations of the child.
    pub fn with<L: Loader<C>>(self, next: L) -> LoadChildren<C, Nested<L>> {
        LoadChildren {
            next: Nested(next),
            _child: PhantomData,
        }
    }
}

impl<P: Table, C: BelongsTo<P> + Clone> Loader<P> for LoadChildren<C> {
    type Output = Vec<C>;

    async fn load(&self, db: &Db, parents: &[P]) -> Result<Vec<Vec<C>>> {
        let found = db.children_cached::<P, C>(parents).await?;
        Ok(found.lined_up(parents))
    }
}

impl<P: Table, C: BelongsTo<P> + Clone, L: Loader<C>> Loader<P> for LoadChildren<C, Nested<L>> {
    type Output = Vec<(C, L::Output)>;

    async fn load(&self, db: &Db, parents: &[P]) -> Result<Vec<Self::Output>> {
        let found = db.children_cached::<P, C>(parents).await?;
        // Each parent's children in one slice, in the parents' order, for the
        // level below (a parent listed twice gets its children twice).
        let lined = found.lined_up(parents);
        let counts: Vec<usize> = lined.iter().map(Vec::len).collect();
        let all: Vec<C> = lined.into_iter().flatten().collect();
        let below = self.next.0.load(db, &all).await?;
        let mut pairs = all.into_iter().zip(below);
        Ok(counts
            .into_iter()
            .map(|n| pairs.by_ref().take(n).collect())
            .collect())
    }
}

/// Loads each row's parent `P` (`Option<P>`: `None` for a NULL foreign key or a
/// parent that is gone); from [`parent`].
pub struct LoadParent<P>(PhantomData<fn() -> P>);

/// Loads the parent (the model a `#[table(belongs_to = P)]` field names) of each row,
/// each distinct parent read once by key, through the row cache when `P` is cached.
///
/// ```no_run
/// # use tabula::{Db, Table};
/// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64 }
/// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
/// # async fn run(db: Db) -> tabula::Result<()> {
/// let posts: Vec<(Post, Option<User>)> = db
///     .query::<Post>()
///     .load(tabula::query::parent::<User>())
///     .await?;
/// # Ok(()) }
/// ```
pub fn parent<P: Table>() -> LoadParent<P> {
    LoadParent(PhantomData)
}

impl<C: BelongsTo<P>, P: Table + Clone> Loader<C> for LoadParent<P> {
    type Output = Option<P>;

    fn load<'a>(
        &'a self,
        db: &'a Db,
        children: &'a [C],
    ) -> impl Future<Output = Result<Vec<Option<P>>>> + Send + 'a {
        db.parents::<C, P>(children)
    }
}

/// Two relations of the same rows: each row gets both.
impl<P: Table, A: Loader<P>, B: Loader<P>> Loader<P> for (A, B) {
    type Output = (A::Output, B::Output);

    async fn load(&self, db: &Db, parents: &[P]) -> Result<Vec<Self::Output>> {
        let first = self.0.load(db, parents).await?;
        let second = self.1.load(db, parents).await?;
        Ok(first.into_iter().zip(second).collect())
    }
}

impl<M: Table> super::Query<M> {
    /// Runs the query and loads `loader`'s relations for its rows, one query per level
    /// and relation, never one per row: each row with what was loaded for it.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table};
    /// # #[derive(Table, Clone)] pub struct User { #[table(primary_key)] pub id: i64, pub name: String }
    /// # #[derive(Table, Clone)] pub struct Post { #[table(primary_key)] pub id: i64, #[table(belongs_to = User)] pub user_id: i64 }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let users: Vec<(User, Vec<Post>)> = db
    ///     .query::<User>()
    ///     .filter(User::NAME.like("a%"))
    ///     .load(tabula::query::children::<Post>())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn load<L: Loader<M>>(self, loader: L) -> Result<Vec<(M, L::Output)>> {
        let db = self.db.clone();
        let rows = self.all().await?;
        let loaded = loader.load(&db, &rows).await?;
        Ok(rows.into_iter().zip(loaded).collect())
    }
}
