//! What a database error means for the request that hit it.
//!
//! diesel exposes only a coarse error kind (no SQLSTATE for timeouts or deadlocks), so those are
//! recognised by the server's exact message, which `SET lc_messages` cannot change for our
//! sessions (Postgres reports these in English unless the server itself is localised). Errors
//! without a SQLSTATE (a lost socket) arrive as `UnableToSendCommand`.

use diesel::result::{DatabaseErrorKind, Error};

/// How a failed database call should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// Connection lost, refused or closed, statement timeout, server shutting down or
    /// read-only, out of memory or disk: 503 `unavailable`; the client retries with the same key.
    Unavailable,
    /// A row lock was not granted within `lock_timeout`: 503 `lock_timeout`.
    LockTimeout,
    /// Serialization failure or deadlock: safe to retry the whole transaction.
    Retryable,
    /// Anything else (a violated constraint is a bug in our code): 500, logged loudly.
    Bug,
}

pub fn classify(error: &Error) -> DbFailure {
    match error {
        Error::DatabaseError(kind, info) => match kind {
            // A read-only server (a failover to a standby) cannot take writes: the service is
            // unavailable, not broken.
            DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::ReadOnlyTransaction => DbFailure::Unavailable,
            DatabaseErrorKind::SerializationFailure => DbFailure::Retryable,
            _ => classify_message(info.message()),
        },
        Error::BrokenTransactionManager | Error::AlreadyInTransaction => DbFailure::Unavailable,
        _ => DbFailure::Bug,
    }
}

/// Server messages (with a SQLSTATE) that mean the request met an unhealthy or overloaded
/// server rather than a bug. Matched as prefixes of Postgres's own wording, so that an error
/// that merely mentions a word like "connection" (a column, a constraint) stays a bug.
const UNAVAILABLE_PREFIXES: [&str; 6] = [
    // 57014: statement_timeout, a cancel request, a conflict with recovery.
    "canceling statement due to",
    // 57P01..57P05: shutdown, crash of another backend, idle(-in-transaction) timeouts.
    "terminating connection ",
    // 57P03: starting up, shutting down, in recovery, not accepting connections.
    "the database system is ",
    // 53200
    "out of memory",
    // 53100: disk full while extending a relation or writing WAL.
    "could not extend file",
    "could not write to file",
];

fn classify_message(message: &str) -> DbFailure {
    if message == "canceling statement due to lock timeout" {
        DbFailure::LockTimeout
    } else if message == "deadlock detected" {
        DbFailure::Retryable
    } else if UNAVAILABLE_PREFIXES.iter().any(|p| message.starts_with(p))
        // 53100 in any wording (a temporary file, a shared memory segment, WAL).
        || message.ends_with("No space left on device")
    {
        DbFailure::Unavailable
    } else {
        DbFailure::Bug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_map_to_failures() {
        assert_eq!(
            classify_message("canceling statement due to lock timeout"),
            DbFailure::LockTimeout
        );
        assert_eq!(
            classify_message("canceling statement due to statement timeout"),
            DbFailure::Unavailable
        );
        assert_eq!(classify_message("deadlock detected"), DbFailure::Retryable);
        assert_eq!(
            classify_message("could not extend file \"base/1/2\": No space left on device"),
            DbFailure::Unavailable
        );
        assert_eq!(
            classify_message("new row for relation \"wallets\" violates check constraint"),
            DbFailure::Bug
        );
        assert_eq!(
            classify_message("terminating connection due to administrator command"),
            DbFailure::Unavailable
        );
        assert_eq!(
            classify_message("the database system is shutting down"),
            DbFailure::Unavailable
        );
        assert_eq!(
            classify_message("could not write block 7 of temporary file: No space left on device"),
            DbFailure::Unavailable
        );
    }

    #[test]
    fn a_bug_that_mentions_a_connection_is_still_a_bug() {
        for message in [
            "column \"connection_id\" does not exist",
            "relation \"connections\" does not exist",
            "duplicate key value violates unique constraint \"connection_pkey\"",
            "syntax error at or near \"timeout\"",
        ] {
            assert_eq!(classify_message(message), DbFailure::Bug, "{message}");
        }
    }
}
