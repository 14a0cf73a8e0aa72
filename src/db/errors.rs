//! What a database error means for the request that hit it.
//!
//! diesel exposes only a coarse error kind (no SQLSTATE for timeouts or deadlocks), so those are
//! recognised by the server's message, which `SET lc_messages` cannot change for our sessions
//! (Postgres reports these in English unless the server itself is localised).

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

fn classify_message(message: &str) -> DbFailure {
    if message.contains("lock timeout") {
        DbFailure::LockTimeout
    } else if message.contains("deadlock detected") {
        DbFailure::Retryable
    } else if message.contains("statement timeout")
        || message.contains("terminating connection")
        || message.contains("the database system is")
        || message.contains("connection")
        || message.contains("read-only transaction")
        || message.contains("out of memory")
        || message.contains("could not extend file")
        || message.contains("No space left on device")
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
            classify_message("cannot execute INSERT in a read-only transaction"),
            DbFailure::Unavailable
        );
        assert_eq!(
            classify_message("could not extend file \"base/1/2\": No space left on device"),
            DbFailure::Unavailable
        );
        assert_eq!(
            classify_message("new row for relation \"wallets\" violates check constraint"),
            DbFailure::Bug
        );
    }
}
