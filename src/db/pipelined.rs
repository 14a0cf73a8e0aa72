//! Transactions whose BEGIN and COMMIT cost no round trip of their own: BEGIN is sent with
//! the transaction's first statement and COMMIT with its last writes (pipelined on the one
//! connection). diesel-async's `transaction()` awaits each of them alone, two of a debit's
//! five round trips.
//!
//! Why this is as safe as `transaction()`:
//! - **Order.** diesel-async queues a statement on the connection's statement cache (a mutex,
//!   first come first served) when its future is first polled, and sends it (preparing it
//!   first if it is not cached) while holding that place; the futures here are polled in the
//!   order written (`biased`). COMMIT is itself a cached prepared statement, polled after the
//!   writes, so it is sent after every one of them, even one still being prepared. BEGIN is a
//!   simple query, sent at once, before the first statement is polled. This rests on
//!   diesel-async's internals (its version is pinned in Cargo.toml) and on two rules for the
//!   writes given to [`commit_with`], stated there.
//! - **All or nothing.** A statement that fails aborts the transaction, and Postgres answers
//!   the COMMIT of an aborted transaction by rolling back, so nothing after a failed write
//!   commits. A write that fails before it is sent (its binds did not serialize) ends the
//!   `try_join` before COMMIT is polled: COMMIT is never sent, and [`roll_back_if_open`] ends
//!   the transaction.
//! - **The pool.** diesel's transaction manager is told the transaction is open from BEGIN until
//!   COMMIT or ROLLBACK has answered, so a connection left inside it (a failed ROLLBACK, a
//!   dropped future) counts as broken: the pool refuses it at its next checkout instead of
//!   handing it out inside this transaction. Closing it at once, so that Postgres rolls back and
//!   frees its row locks right away, is the caller's job
//!   (`pipeline::transaction::transaction_within_deadline` does).

use std::borrow::Cow;

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
    // Never a BEGIN inside a transaction that did not end (Postgres would only warn).
    if is_open(conn) {
        return Err(E::from(Error::AlreadyInTransaction));
    }
    note(conn, TransactionDepthChange::IncreaseDepth)?;
    let begin: Cow<'_, str> = match setup {
        Some(setup) => format!("BEGIN; {setup}").into(),
        None => "BEGIN".into(),
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
///
/// `last` must start every one of its statements on its first poll (join them, never await
/// one before starting the next), and they must bind no custom Postgres type (diesel-async
/// looks those up before it queues the statement): otherwise COMMIT could be sent first and
/// the late statement run on its own, outside the transaction.
///
/// A COMMIT that Postgres turned into a rollback (an earlier statement failed) reports success
/// like a real one; here every failed statement is also a failed `last`, so it cannot pass
/// unseen.
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
    if committed.is_ok()
        && let Err(error) = note(conn, TransactionDepthChange::DecreaseDepth)
    {
        // Committed: the answer stands. The pool will refuse this connection.
        tracing::error!(%error, "committed, but the transaction manager disagrees");
    }
    committed
}

/// Ends a transaction that did not commit. A ROLLBACK after a pipelined COMMIT that already
/// ended it only draws a warning from Postgres. Returns whether the transaction is over; if
/// the ROLLBACK failed it is not, and stays marked open, so the pool refuses the connection.
pub async fn roll_back_if_open(conn: &mut PgConn) -> bool {
    if !is_open(conn) {
        return true;
    }
    match conn.batch_execute("ROLLBACK").await {
        Ok(()) => match note(conn, TransactionDepthChange::DecreaseDepth) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "rolled back, but the transaction manager disagrees");
                false
            }
        },
        Err(error) => {
            tracing::warn!(%error, "ROLLBACK failed; the connection will be closed");
            false
        }
    }
}
