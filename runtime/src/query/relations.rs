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
    by_parent: HashMap<String, Vec<C>>,
    _parent: std::marker::PhantomData<fn() -> P>,
}

impl<P: Table, C> Children<P, C> {
    /// The children of `parent` (none when it has none, or was not among the parents
    /// loaded).
    pub fn of(&self, parent: &P) -> &[C] {
        self.by_parent
            .get(&crate::db::key_text::<P>(parent.key()))
            .map_or(&[], Vec::as_slice)
    }

    /// Every child loaded, for the next level down.
    pub fn all(&self) -> impl Iterator<Item = &C> {
        self.by_parent.values().flatten()
    }

    /// How many children were loaded.
    pub fn len(&self) -> usize {
        self.by_parent.values().map(Vec::len).sum()
    }

    /// Whether no child was loaded.
    pub fn is_empty(&self) -> bool {
        self.by_parent.values().all(Vec::is_empty)
    }

    /// Each parent with its children, in the parents' order (a parent listed twice
    /// gets its children twice).
    pub fn attach(self, parents: Vec<P>) -> Vec<(P, Vec<C>)>
    where
        C: Clone,
    {
        parents
            .into_iter()
            .map(|parent| {
                let children = self.of(&parent).to_vec();
                (parent, children)
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
        let mut by_parent: HashMap<String, Vec<C>> = HashMap::new();
        let mut keys: Vec<P::Key> = Vec::with_capacity(parents.len());
        for parent in parents {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                by_parent.entry(crate::db::key_text::<P>(parent.key()))
            {
                slot.insert(Vec::new());
                keys.push(parent.key().clone());
            }
        }
        if !keys.is_empty() {
            let values: Vec<crate::sql::OwnedParam> = keys
                .into_iter()
                .map(|k| std::sync::Arc::new(k) as crate::sql::OwnedParam)
                .collect();
            let rows = self
                .query::<C>()
                .filter_node(super::in_list(C::FOREIGN_KEY, values))
                .order_by_key()
                .all()
                .await?;
            for child in rows {
                // The query matched a key, so the foreign key is set.
                if let Some(key) = child.parent_key() {
                    let text = crate::db::key_text::<P>(key);
                    by_parent.entry(text).or_default().push(child);
                }
            }
        }
        Ok(Children {
            by_parent,
            _parent: std::marker::PhantomData,
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
