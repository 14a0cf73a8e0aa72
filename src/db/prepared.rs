//! Raw SQL that is prepared once per connection, as diesel's query builder statements are.
//!
//! `diesel::sql_query` is never cached: diesel cannot know its text is fixed, so every run
//! costs Postgres a parse and a plan, and diesel-async an extra round trip to prepare it. The
//! outbox relay runs its statements after every commit, so that adds up under load.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// `query` (a `diesel::sql_query` with its binds), cached by its text. Only for a constant
/// text: a text built at run time would fill the statement cache.
pub struct Prepared<Q>(pub Q);

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    // No static id: the statement cache keys it by its SQL text.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}
