//! What an API key may do. Stored as text in `api_keys.scopes` (with a CHECK listing the same set).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Create wallets, debit, credit, holds.
    WalletsWrite,
    /// Read wallets, transactions, ledger.
    WalletsRead,
    /// Audit and export, for finance.
    LedgerRead,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::WalletsWrite, Scope::WalletsRead, Scope::LedgerRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::WalletsWrite => "wallets:write",
            Scope::WalletsRead => "wallets:read",
            Scope::LedgerRead => "ledger:read",
        }
    }

    /// Parses a comma-separated list (`wallets:read,ledger:read`), as the CLI takes it.
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, UnknownScope> {
        let mut scopes = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(UnknownScope(text.to_owned()));
        }
        Ok(scopes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}; known scopes: wallets:write, wallets:read, ledger:read")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_sorted_and_deduplicated() {
        assert_eq!(
            Scope::parse_list("ledger:read, wallets:read,ledger:read").unwrap(),
            vec![Scope::WalletsRead, Scope::LedgerRead]
        );
        assert!(Scope::parse_list("wallets:admin").is_err());
        assert!(Scope::parse_list("").is_err());
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
    }
}
