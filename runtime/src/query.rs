//! The typed query builder (placeholder until the query issue lands).

/// Placeholder.
pub struct Query;
/// Placeholder.
pub struct Order;
