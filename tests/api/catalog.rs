//! The migrated schema, read from Postgres' catalog, against the distribution plan of
//! `docs/scale-out.md` (Citus, by wallet): what would stop the tables from being distributed,
//! or make a debit touch more than its wallet's shard and one key shard, fails here on a
//! single Postgres, long before anyone runs Citus.

use std::collections::{BTreeMap, BTreeSet};

use diesel::QueryableByName;
use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::helpers::fresh_database;

/// How each table is placed: distributed by a column (with its colocation group), or copied to
/// every node as a reference table. A new table must be placed here before this test passes.
fn plan() -> BTreeMap<&'static str, Placement> {
    use Placement::{Distributed, Reference};
    BTreeMap::from([
        ("tenants", Reference),
        ("api_keys", Reference),
        ("wallets", Distributed("id", Group::Wallet)),
        ("ledger_entries", Distributed("wallet_id", Group::Wallet)),
        ("holds", Distributed("wallet_id", Group::Wallet)),
        ("outbox_events", Distributed("wallet_id", Group::Wallet)),
        ("idempotency_keys", Distributed("result_id", Group::Result)),
        ("routes_before_result_ids", Distributed("id", Group::Result)),
        // diesel's own bookkeeping, written only by `walletd migrate`.
        ("__diesel_schema_migrations", Reference),
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Distributed(&'static str, Group),
    Reference,
}

/// Colocation groups: tables in one group are split the same way, so rows with the same
/// distribution value live on the same node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Everything of one wallet.
    Wallet,
    /// Keyed by a request's result id (the key table and the old id routes).
    Result,
}

#[derive(QueryableByName, Debug)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName, Debug)]
struct UniqueIndex {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    index_name: String,
    #[diesel(sql_type = Array<Text>)]
    columns: Vec<String>,
}

#[derive(QueryableByName, Debug)]
struct ForeignKey {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    from_table: String,
    #[diesel(sql_type = Array<Text>)]
    from_columns: Vec<String>,
    #[diesel(sql_type = Text)]
    to_table: String,
    #[diesel(sql_type = Array<Text>)]
    to_columns: Vec<String>,
}

#[derive(QueryableByName, Debug)]
struct VolatileDefault {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    expression: String,
}

async fn migrated() -> AsyncPgConnection {
    AsyncPgConnection::establish(&fresh_database().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_table_is_placed_by_the_distribution_plan() {
    let mut db = migrated().await;
    let tables: BTreeSet<String> = diesel::sql_query(
        "SELECT relname AS name FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')",
    )
    .load::<TableName>(&mut db)
    .await
    .unwrap()
    .into_iter()
    .map(|t| t.name)
    .collect();
    let planned: BTreeSet<String> = plan().keys().map(|t| t.to_string()).collect();
    assert_eq!(
        tables, planned,
        "a table is missing from (or stale in) the distribution plan of docs/scale-out.md"
    );
}

/// Citus enforces a unique key only within a shard: each must include the distribution column.
#[tokio::test]
async fn every_unique_key_of_a_distributed_table_includes_its_distribution_column() {
    let mut db = migrated().await;
    let indexes: Vec<UniqueIndex> = diesel::sql_query(
        "SELECT t.relname AS table_name, i.relname AS index_name, \
                array_agg(a.attname::text ORDER BY a.attnum) AS columns \
         FROM pg_index x \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey) \
         WHERE t.relnamespace = 'public'::regnamespace AND x.indisunique \
         GROUP BY t.relname, i.relname",
    )
    .load(&mut db)
    .await
    .unwrap();
    let plan = plan();
    let mut offending = Vec::new();
    for index in &indexes {
        if let Some(Placement::Distributed(column, _)) = plan.get(index.table_name.as_str())
            && !index.columns.iter().any(|c| c == column)
        {
            offending.push(format!(
                "{}.{} ({:?}) lacks {column}",
                index.table_name, index.index_name, index.columns
            ));
        }
    }
    assert!(
        indexes.iter().any(|i| i.table_name == "ledger_entries"),
        "the catalog query found the ledger's keys"
    );
    assert!(offending.is_empty(), "{offending:#?}");
}

/// Citus allows a foreign key between colocated tables on their distribution column, or to a
/// reference table; any other would make a write visit two groups of nodes.
#[tokio::test]
async fn foreign_keys_stay_within_a_colocation_group_or_point_to_reference_tables() {
    let mut db = migrated().await;
    let keys: Vec<ForeignKey> = diesel::sql_query(
        "SELECT c.conname::text AS name, \
                f.relname::text AS from_table, \
                ARRAY(SELECT attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o) \
                      JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.o) AS from_columns, \
                t.relname::text AS to_table, \
                ARRAY(SELECT attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o) \
                      JOIN pg_attribute ON attrelid = c.confrelid AND attnum = k.n ORDER BY k.o) AS to_columns \
         FROM pg_constraint c \
         JOIN pg_class f ON f.oid = c.conrelid \
         JOIN pg_class t ON t.oid = c.confrelid \
         WHERE c.contype = 'f' AND f.relnamespace = 'public'::regnamespace",
    )
    .load(&mut db)
    .await
    .unwrap();
    let plan = plan();
    let mut offending = Vec::new();
    for key in &keys {
        let from = plan[key.from_table.as_str()];
        let to = plan[key.to_table.as_str()];
        let allowed = match (from, to) {
            (_, Placement::Reference) => true,
            (Placement::Reference, Placement::Distributed(..)) => false,
            (
                Placement::Distributed(from_column, from_group),
                Placement::Distributed(to_column, to_group),
            ) => {
                // The distribution columns must correspond to each other in the key.
                from_group == to_group
                    && key
                        .from_columns
                        .iter()
                        .zip(&key.to_columns)
                        .any(|(f, t)| f == from_column && t == to_column)
            }
        };
        if !allowed {
            offending.push(format!(
                "{}: {}{:?} -> {}{:?}",
                key.name, key.from_table, key.from_columns, key.to_table, key.to_columns
            ));
        }
    }
    assert!(
        keys.iter().any(|k| k.name == "ledger_entries_hold"),
        "the catalog query found the ledger's foreign keys"
    );
    assert!(offending.is_empty(), "{offending:#?}");
}

/// The columns of tables named `LIKE pattern` whose default calls a volatile function (a
/// default's parsed tree names each function it calls as `:funcid <oid>`).
async fn volatile_defaults(db: &mut AsyncPgConnection, pattern: &str) -> Vec<VolatileDefault> {
    diesel::sql_query(
        "SELECT c.relname::text AS table_name, a.attname::text AS column_name, \
                pg_get_expr(d.adbin, d.adrelid) AS expression \
         FROM pg_attrdef d \
         JOIN pg_class c ON c.oid = d.adrelid \
         JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE $1 \
           AND EXISTS ( \
               SELECT 1 FROM regexp_matches(d.adbin::text, ':funcid (\\d+)', 'g') AS m(id) \
               JOIN pg_proc p ON p.oid = m.id[1]::oid \
               WHERE p.provolatile = 'v')",
    )
    .bind::<Text, _>(pattern)
    .load(db)
    .await
    .unwrap()
}

/// A default is evaluated in the write: Citus refuses a volatile function there on a
/// distributed table (and would evaluate it per shard). Times and ids come from the service.
#[tokio::test]
async fn no_column_default_calls_a_volatile_function() {
    let mut db = migrated().await;
    let defaults: Vec<String> = volatile_defaults(&mut db, "%")
        .await
        .iter()
        .map(|d| {
            format!(
                "{}.{} DEFAULT {}",
                d.table_name, d.column_name, d.expression
            )
        })
        .collect();
    assert!(defaults.is_empty(), "{defaults:#?}");

    // The check sees a volatile default when there is one, and only then.
    db.batch_execute(
        "CREATE TABLE catalog_probe (at timestamptz DEFAULT clock_timestamp()); \
         CREATE TABLE catalog_probe_ok (at timestamptz DEFAULT now())",
    )
    .await
    .unwrap();
    let found = volatile_defaults(&mut db, "catalog_probe%").await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].table_name, "catalog_probe");
    assert_eq!(found[0].column_name, "at");
    assert_eq!(found[0].expression, "clock_timestamp()");
}

/// The statements the service sends: no volatile function computes a value it writes (the
/// SET of an UPDATE, the VALUES of an INSERT). Read from the SQL text in `src/`, where every
/// statement of the service is written.
#[tokio::test]
async fn no_statement_of_the_service_writes_a_volatile_function() {
    let mut db = migrated().await;
    let volatile: Vec<TableName> = diesel::sql_query(
        "SELECT DISTINCT proname::text AS name FROM pg_proc \
         WHERE provolatile = 'v' AND pronamespace = 'pg_catalog'::regnamespace \
           AND proname IN ('clock_timestamp', 'timeofday', 'random', 'gen_random_uuid', \
                           'nextval', 'uuid_generate_v4', 'statement_timestamp')",
    )
    .load(&mut db)
    .await
    .unwrap();
    // statement_timestamp is stable, not volatile: the catalog, not this list, decides.
    assert!(volatile.iter().any(|f| f.name == "clock_timestamp"));
    assert!(!volatile.iter().any(|f| f.name == "statement_timestamp"));
    let mut offending = Vec::new();
    for file in rust_sources(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            // SQL lives in string literals; comments may name the functions they avoid.
            if line.trim_start().starts_with("//") || !line.contains('"') {
                continue;
            }
            for function in &volatile {
                if line.contains(&format!("{}(", function.name)) {
                    offending.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(offending.is_empty(), "{offending:#?}");
}

fn rust_sources(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_sources(path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
