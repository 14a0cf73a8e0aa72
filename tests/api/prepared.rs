//! `walletd::db::prepared::Prepared`: raw SQL prepared once per connection (what the outbox
//! relay's statements use), where plain `sql_query` is prepared afresh on every run.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use walletd::db::prepared::Prepared;

use crate::helpers::fresh_database;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Integer)]
    id: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Named statements this session holds whose text contains `marker`.
async fn prepared_with(conn: &mut AsyncPgConnection, marker: &str) -> i64 {
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_prepared_statements WHERE strpos(statement, $1) > 0",
    )
    .bind::<diesel::sql_types::Text, _>(marker)
    .get_result(conn)
    .await
    .unwrap();
    count.count
}

#[tokio::test]
async fn a_prepared_raw_statement_is_parsed_once_per_connection_and_sql_query_never() {
    let url = fresh_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();

    for n in 0..3 {
        let row: Id =
            Prepared(diesel::sql_query("SELECT $1::int AS id /* cached */").bind::<Integer, _>(n))
                .get_result(&mut conn)
                .await
                .unwrap();
        assert_eq!(row.id, n);
        let row: Id = diesel::sql_query("SELECT $1::int AS id /* uncached */")
            .bind::<Integer, _>(n)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.id, n);
    }

    assert_eq!(prepared_with(&mut conn, "/* cached */").await, 1);
    assert_eq!(prepared_with(&mut conn, "/* uncached */").await, 0);
}
