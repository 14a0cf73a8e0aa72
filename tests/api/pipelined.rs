//! The hand-run transactions of every pipeline request (`walletd::db::pipelined`): BEGIN sent
//! with the first statement, COMMIT with the last writes. What they must keep from an ordinary
//! transaction, proved on a real Postgres: the statements around BEGIN and COMMIT run inside
//! the transaction (even ones still being prepared when COMMIT is queued: the statements here
//! are `sql_query`, prepared afresh each time), a failed write commits nothing, and a
//! connection dropped inside the transaction never serves anyone again.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use std::time::Duration;

use walletd::db::{PgConn, build_pool, pipelined};
use walletd::pipeline::deadline::Deadline;
use walletd::pipeline::transaction::transaction_within_deadline;

use crate::helpers::{base_settings, fresh_database};

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Integer)]
    id: i32,
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Open {
    #[diesel(sql_type = BigInt)]
    open: i64,
}

/// A fresh database with a table `t (id int primary key)` holding the row 1.
async fn database() -> String {
    let url = fresh_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    conn.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    url
}

async fn ids(url: &str) -> Vec<i32> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    let rows: Vec<Id> = diesel::sql_query("SELECT id FROM t ORDER BY id")
        .load(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|row| row.id).collect()
}

async fn insert(mut conn: &PgConn, id: i32) -> diesel::QueryResult<()> {
    diesel::sql_query("INSERT INTO t VALUES ($1)")
        .bind::<Integer, _>(id)
        .execute(&mut conn)
        .await
        .map(drop)
}

#[derive(QueryableByName)]
struct Xact {
    #[diesel(sql_type = diesel::sql_types::Text)]
    xact: String,
}

/// Inserts `id` and returns the id of the transaction it ran in.
async fn insert_in(mut conn: &PgConn, id: i32) -> diesel::QueryResult<String> {
    let row: Xact = diesel::sql_query(
        "WITH i AS (INSERT INTO t VALUES ($1) RETURNING id) \
         SELECT pg_current_xact_id()::text AS xact FROM i",
    )
    .bind::<Integer, _>(id)
    .get_result(&mut conn)
    .await?;
    Ok(row.xact)
}

/// Whether the session is inside a transaction that has written, asked of Postgres itself: a
/// statement outside a block runs in a transaction of its own, with no id assigned yet.
async fn in_transaction(conn: &mut PgConn) -> bool {
    let open: Open = diesel::sql_query(
        "SELECT (pg_current_xact_id_if_assigned() IS NOT NULL)::int::bigint AS open",
    )
    .get_result(conn)
    .await
    .unwrap();
    open.open == 1
}

#[tokio::test]
async fn writes_pipelined_with_commit_all_commit_in_the_one_transaction() {
    let url = database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();

    let first: diesel::QueryResult<String> =
        pipelined::begin_with(&mut conn, None, async |c| insert_in(c, 2).await).await;
    let began = first.unwrap();
    assert!(pipelined::is_open(&mut conn));
    let committed: diesel::QueryResult<((String, String), &str)> = pipelined::commit_with(
        &mut conn,
        async |c| tokio::try_join!(insert_in(c, 3), insert_in(c, 4)),
        async { "before" },
    )
    .await;
    let ((third, fourth), before) = committed.unwrap();
    assert_eq!(before, "before");
    // Every write ran in the transaction BEGIN opened (none after COMMIT, on its own).
    assert_eq!((&third, &fourth), (&began, &began));

    assert!(!pipelined::is_open(&mut conn));
    assert!(!in_transaction(&mut conn).await);
    assert_eq!(ids(&url).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_write_that_fails_beside_commit_commits_nothing_of_the_transaction() {
    let url = database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();

    let first: diesel::QueryResult<()> =
        pipelined::begin_with(&mut conn, None, async |c| insert(c, 2).await).await;
    first.unwrap();
    // 1 is there already: the second write fails, after the first and before COMMIT.
    let committed: diesel::QueryResult<(((), ()), ())> = pipelined::commit_with(
        &mut conn,
        async |c| tokio::try_join!(biased; insert(c, 3), insert(c, 1)),
        async {},
    )
    .await;
    let error = committed.unwrap_err();
    assert!(error.to_string().contains("duplicate key"), "{error}");

    // Nothing committed, the connection is usable, and it knows it may still be in a block.
    assert!(pipelined::is_open(&mut conn));
    assert!(pipelined::roll_back_if_open(&mut conn).await);
    assert!(!pipelined::is_open(&mut conn));
    // A transaction that did not end is never begun into.
    let nested: diesel::QueryResult<()> =
        pipelined::begin_with(&mut conn, None, async |_| Ok(())).await;
    nested.unwrap();
    let again: diesel::QueryResult<()> =
        pipelined::begin_with(&mut conn, None, async |_| Ok(())).await;
    assert!(matches!(
        again,
        Err(diesel::result::Error::AlreadyInTransaction)
    ));
    assert!(pipelined::roll_back_if_open(&mut conn).await);
    assert!(!in_transaction(&mut conn).await);
    assert_eq!(ids(&url).await, [1]);
}

#[tokio::test]
async fn the_first_statement_runs_inside_the_transaction_it_begins() {
    let url = database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();

    let first: diesel::QueryResult<()> = pipelined::begin_with(
        &mut conn,
        Some("SET LOCAL lock_timeout = 1234"),
        async |c| insert(c, 2).await,
    )
    .await;
    first.unwrap();
    assert!(in_transaction(&mut conn).await);
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        lock_timeout: String,
    }
    let setting: Setting =
        diesel::sql_query("SELECT current_setting('lock_timeout') AS lock_timeout")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(setting.lock_timeout, "1234ms");

    assert!(pipelined::roll_back_if_open(&mut conn).await);
    // Rolled back with the transaction: the insert was not committed on its own.
    assert_eq!(ids(&url).await, [1]);
}

#[tokio::test]
async fn a_connection_dropped_inside_a_transaction_is_closed_not_pooled() {
    let url = database().await;
    let mut settings = base_settings().database;
    settings.url = url.clone();
    settings.pool_max_size = 1;
    let pool = build_pool(&settings).unwrap();

    let mut conn = pool.get().await.unwrap();
    let leaked_pid = backend_pid(&mut conn).await;
    let first: diesel::QueryResult<()> =
        pipelined::begin_with(&mut conn, None, async |c| insert(c, 2).await).await;
    first.unwrap();
    // Dropped inside the transaction (what a panic or a lost future does).
    drop(conn);

    let mut next: Object<PgConn> = pool.get().await.unwrap();
    assert_ne!(
        backend_pid(&mut next).await,
        leaked_pid,
        "the pool handed out the connection left inside a transaction"
    );
    assert!(!in_transaction(&mut next).await);
    // The new session commits on its own; the dropped transaction's row never does.
    insert(&next, 3).await.unwrap();
    assert_eq!(ids(&url).await, [1, 3]);
}

async fn backend_pid(conn: &mut PgConn) -> i32 {
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(conn)
        .await
        .unwrap();
    pid.pid
}

#[tokio::test]
async fn a_task_that_panics_inside_a_transaction_frees_its_row_lock_at_once() {
    let url = database().await;
    let mut settings = base_settings().database;
    settings.url = url.clone();
    let pool = build_pool(&settings).unwrap();

    let conn = pool.get().await.unwrap();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let deadline = Deadline::after(Duration::from_secs(30));
        transaction_within_deadline(&deadline, conn, async |c| {
            let locked: diesel::QueryResult<()> = pipelined::begin_with(c, None, async |c| {
                let mut c = c;
                diesel::sql_query("SELECT id FROM t WHERE id = 1 FOR UPDATE")
                    .execute(&mut c)
                    .await
                    .map(drop)
            })
            .await;
            locked.unwrap();
            locked_tx.send(()).unwrap();
            panic!("a bug inside the transaction");
            #[allow(unreachable_code)]
            Ok(())
        })
        .await
    });
    locked_rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());

    // The row is free at once (not after idle_in_transaction_session_timeout, nor at the pool's
    // next checkout of that connection): another session locks it without waiting.
    let mut other = AsyncPgConnection::establish(&url).await.unwrap();
    other
        .batch_execute(
            "SET lock_timeout = 2000; BEGIN; SELECT id FROM t WHERE id = 1 FOR UPDATE; COMMIT",
        )
        .await
        .unwrap();
}
