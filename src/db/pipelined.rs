//! Transactions whose BEGIN and COMMIT cost no round trip of their own: BEGIN is sent with
//! the transaction's first statement and COMMIT with its last writes (pipelined on the one
//! connection). diesel-async's `transaction()` awaits each of them alone, two of a debit's
//! five round trips.
//!
//! Why this is as safe as `transaction()`:
//! - **Order.** A statement is sent when its future is first polled, and the futures here are
//!   polled in the order written (`biased`). diesel's statements also queue one after the other
//!   on the connection's statement cache (a statement being prepared holds the ones behind it),
//!   so COMMIT, itself a cached prepared statement, is sent after every write before it even
//!   when one of them is still being prepared. BEGIN is a simple query, sent at once, before
//!   the first statement is polled.
//! - **All or nothing.** A statement that fails aborts the transaction, and Postgres answers
//!   the COMMIT of an aborted transaction by rolling back, so nothing after a failed write
//!   commits. A write that fails before it is sent (its binds did not serialize) ends the
//!   `try_join` before COMMIT is polled: COMMIT is never sent, and [`roll_back_if_open`] ends
//!   the transaction.
//! - **The pool.** diesel's transaction manager is told the transaction is open from BEGIN until
//!   COMMIT or ROLLBACK has answered, so a connection dropped in between (a panic, a deadline,
//!   a failed ROLLBACK) counts as broken: the pool closes it (Postgres then rolls back) instead
//!   of handing it to the next request inside this transaction.

use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::Error;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager};

use super::PgConn;

/// `COMMIT` as a cached prepared statement, so that it queues behind the writes sent before
/// it (see the module doc).
#[derive(Debug, Clone, Copy, QueryId)]
struct Commit;

impl QueryFragment<Pg> for Commit {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("COMMIT");
        Ok(())
    }
}

/// Tells diesel's transaction manager that a transaction we run by hand began or ended.
fn note(conn: &mut PgConn, change: TransactionDepthChange) -> diesel::QueryResult<()> {
    match <PgConn as AsyncConnection>::TransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.change_transaction_depth(change),
        TransactionManagerStatus::InError => Err(Error::BrokenTransactionManager),
    }
}

/// Whether a transaction begun by [`begin_with`] has not ended yet.
pub fn is_open(conn: &mut PgConn) -> bool {
    match <PgConn as AsyncConnection>::TransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.transaction_depth().is_some(),
        TransactionManagerStatus::InError => true,
    }
}

/// Begins a transaction with `first` as its first statement, in one round trip. `setup` (SQL
/// such as `SET LOCAL …`) runs right after BEGIN, in the same simple query. The transaction is
/// open afterwards even if this fails: end it with [`commit_with`] or [`roll_back_if_open`].
pub async fn begin_with<T, E>(
    conn: &mut PgConn,
    setup: Option<&str>,
    first: impl AsyncFnOnce(&PgConn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error>,
{
    note(conn, TransactionDepthChange::IncreaseDepth)?;
    let begin = match setup {
        Some(setup) => format!("BEGIN; {setup}"),
        None => "BEGIN".to_owned(),
    };
    let conn: &PgConn = conn;
    let mut simple = conn;
    let ((), first) = tokio::try_join!(
        biased;
        async { simple.batch_execute(&begin).await.map_err(E::from) },
        first(conn)
    )?;
    Ok(first)
}

/// Commits with `last` (the transaction's last writes) in one round trip; `before` runs
/// after the writes are sent and before COMMIT is (work that must precede the commit, such as
/// marking a cache entry pending) and its result is returned with the writes'.
pub async fn commit_with<T, M, E>(
    conn: &mut PgConn,
    last: impl AsyncFnOnce(&PgConn) -> Result<T, E>,
    before: impl Future<Output = M>,
) -> Result<(T, M), E>
where
    E: From<Error>,
{
    let committed = {
        let shared: &PgConn = conn;
        let mut prepared = shared;
        tokio::try_join!(biased; last(shared), async {
            let before = before.await;
            Commit.execute(&mut prepared).await.map_err(E::from)?;
            Ok(before)
        })
    };
    if committed.is_ok() {
        note(conn, TransactionDepthChange::DecreaseDepth)?;
    }
    committed
}

/// Ends a transaction that did not commit. A ROLLBACK after a pipelined COMMIT that already
/// ended it only draws a warning from Postgres. If the ROLLBACK fails the transaction stays
/// marked open, so the pool closes the connection.
pub async fn roll_back_if_open(conn: &mut PgConn) {
    if !is_open(conn) {
        return;
    }
    match conn.batch_execute("ROLLBACK").await {
        Ok(()) => {
            if let Err(error) = note(conn, TransactionDepthChange::DecreaseDepth) {
                tracing::error!(%error, "rolled back, but the transaction manager disagrees");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "ROLLBACK failed; the connection will be closed");
        }
    }
}
