//! Verifying one wallet's ledger from its stored rows (API.md, Ledger integrity and audit).
//!
//! [`ChainVerifier`] takes the entries one at a time in `seq` order and keeps only what the
//! next entry is checked against (the expected seq, the previous `balance_after` and `hash`),
//! so [`audit_wallet`] can page through a wallet of any size with flat memory. Per entry, in
//! this order, the first failure is the finding:
//!
//! 1. `seq` is the next one (1, 2, 3, … without gaps);
//! 2. the entry belongs to its wallet's tenant and currency, and its amount is > 0 with no more
//!    fraction digits than the currency has;
//! 3. `balance_before` is the previous `balance_after` (0 for the first) and `balance_after =
//!    balance_before ± amount` (+ for credits and reversals of debits, by
//!    [`LedgerEntryRow::is_inflow`]);
//! 4. `prev_hash` is the previous entry's `hash` (64 zeros for seq 1), and `hash` is what
//!    [`Transaction::chain_hash`] recomputes from the entry as the API renders it.
//!
//! At the end the wallet row must agree with its ledger's end: as many entries as its
//! `last_seq` and its `last_hash` equal to the newest entry's hash (a rewrite of the tail,
//! hashes recomputed, still shows there unless the wallet row was rewritten too). Whether the
//! wallet's `balance` equals the ledger sum is reported beside the chain (`balance`,
//! `ledger_sum`): a wallet is sound when its chain is and the two are equal.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::LedgerReadError;
use crate::db::PgConn;
use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::db::schema::{ledger_entries, wallets};
use crate::domain::{Currency, TenantId, WalletId};
use crate::representation::schema::{signed_money, timestamp};
use crate::representation::{GENESIS_HASH, Transaction, render_timestamp};

/// Entries read per query while auditing a wallet (keyset pages by `seq`): what bounds the
/// audit's memory, whatever the wallet's size.
pub const AUDIT_PAGE_ROWS: i64 = 1000;

/// Wallet ids read per query when auditing many wallets.
pub const WALLET_PAGE_ROWS: i64 = 1000;

/// What is wrong with the first bad entry, or with the wallet's record of its ledger's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// The entry with this seq is missing: the next stored entry has seq `found`.
    SeqGap { found: i64 },
    /// The entry names another tenant than its wallet's (it would show in that tenant's
    /// export; `tenant_id` is not part of the hashed representation, so only this catches it).
    ForeignTenant { tenant_id: Uuid },
    /// The entry's currency is not its wallet's.
    ForeignCurrency { currency: String },
    /// The amount is not > 0, or has more fraction digits than the currency has.
    BadAmount { amount: Decimal },
    /// `balance_before` is not the previous entry's `balance_after` (0 for the first).
    BalanceBefore { expected: Decimal, found: Decimal },
    /// `balance_after` is not `balance_before ± amount`.
    BalanceAfter { expected: Decimal, found: Decimal },
    /// `prev_hash` is not the previous entry's `hash` (64 zeros for seq 1).
    PrevHash { expected: String, found: String },
    /// `hash` is not what the entry's content recomputes to.
    Hash { computed: String, stored: String },
    /// The entry has no hash (written before the chain and not yet chained by `walletd
    /// migrate`) or cannot be rendered at all.
    Unreadable(String),
    /// The wallet records `last_seq` entries but its ledger ends earlier.
    MissingEntries { last_seq: i64 },
    /// The ledger has entries past the wallet's `last_seq`.
    EntriesBeyondWallet { last_seq: i64 },
    /// The wallet's `last_hash` is not its newest entry's hash.
    LastHash { wallet: String, ledger: String },
}

/// The first thing wrong with a wallet's chain, and the seq it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub seq: i64,
    pub defect: Defect,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seq = self.seq;
        match &self.defect {
            Defect::SeqGap { found } => {
                write!(f, "seq {seq} is missing (the next entry is seq {found})")
            }
            Defect::ForeignTenant { tenant_id } => {
                write!(
                    f,
                    "seq {seq} belongs to tenant {tenant_id}, not its wallet's"
                )
            }
            Defect::ForeignCurrency { currency } => {
                write!(f, "seq {seq} is in {currency}, not its wallet's currency")
            }
            Defect::BadAmount { amount } => write!(f, "seq {seq} has amount {amount}"),
            Defect::BalanceBefore { expected, found } => write!(
                f,
                "seq {seq}: balance_before {found}, but the previous balance_after is {expected}"
            ),
            Defect::BalanceAfter { expected, found } => write!(
                f,
                "seq {seq}: balance_after {found}, but balance_before and amount give {expected}"
            ),
            Defect::PrevHash { expected, found } => write!(
                f,
                "seq {seq}: prev_hash {found}, but the previous entry's hash is {expected}"
            ),
            Defect::Hash { computed, stored } => write!(
                f,
                "seq {seq}: stored hash {stored}, but the entry recomputes to {computed}"
            ),
            Defect::Unreadable(why) => write!(f, "seq {seq} cannot be verified: {why}"),
            Defect::MissingEntries { last_seq } => write!(
                f,
                "the wallet records {last_seq} entries, but seq {seq} onwards is missing"
            ),
            Defect::EntriesBeyondWallet { last_seq } => write!(
                f,
                "the wallet records {last_seq} entries, but seq {seq} onwards exists too"
            ),
            Defect::LastHash { wallet, ledger } => write!(
                f,
                "the wallet's last_hash {wallet} is not its newest entry's hash {ledger} (seq {seq})"
            ),
        }
    }
}

/// Checks a wallet's entries one at a time, in `seq` order (see the module documentation).
#[derive(Debug)]
pub struct ChainVerifier {
    tenant_id: Uuid,
    currency: Currency,
    /// The seq the next entry must have.
    next_seq: i64,
    previous_after: Decimal,
    previous_hash: String,
    entries: u64,
    ledger_sum: Decimal,
    finding: Option<Finding>,
}

/// What [`ChainVerifier::finish`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub entries: u64,
    /// Credits and reversals of debits minus debits and reversals of credits, over every entry
    /// read (including any after the first finding).
    pub ledger_sum: Decimal,
    pub finding: Option<Finding>,
}

impl ChainVerifier {
    pub fn new(wallet: &WalletRow) -> Result<Self, LedgerReadError> {
        Ok(Self {
            tenant_id: wallet.tenant_id,
            currency: wallet_currency(wallet)?,
            next_seq: 1,
            previous_after: Decimal::ZERO,
            previous_hash: GENESIS_HASH.to_owned(),
            entries: 0,
            ledger_sum: Decimal::ZERO,
            finding: None,
        })
    }

    /// Takes the next entry (rows must come in increasing `seq`). After the first finding the
    /// rest is only counted and summed.
    pub fn push(&mut self, row: &LedgerEntryRow) {
        self.entries += 1;
        if row.is_inflow() {
            self.ledger_sum += row.amount;
        } else {
            self.ledger_sum -= row.amount;
        }
        if self.finding.is_some() {
            return;
        }
        if let Err(finding) = self.check(row) {
            self.finding = Some(finding);
        }
    }

    fn check(&mut self, row: &LedgerEntryRow) -> Result<(), Finding> {
        let at = |seq: i64, defect: Defect| Finding { seq, defect };
        if row.seq != self.next_seq {
            return Err(at(self.next_seq, Defect::SeqGap { found: row.seq }));
        }
        let seq = row.seq;
        if row.tenant_id != self.tenant_id {
            let tenant_id = row.tenant_id;
            return Err(at(seq, Defect::ForeignTenant { tenant_id }));
        }
        if row.currency.trim() != self.currency.code() {
            let currency = row.currency.clone();
            return Err(at(seq, Defect::ForeignCurrency { currency }));
        }
        if row.amount <= Decimal::ZERO
            || row.amount.normalize().scale() > self.currency.minor_units()
        {
            let amount = row.amount;
            return Err(at(seq, Defect::BadAmount { amount }));
        }
        if row.balance_before != self.previous_after {
            let (expected, found) = (self.previous_after, row.balance_before);
            return Err(at(seq, Defect::BalanceBefore { expected, found }));
        }
        let expected_after = if row.is_inflow() {
            row.balance_before + row.amount
        } else {
            row.balance_before - row.amount
        };
        if row.balance_after != expected_after {
            let found = row.balance_after;
            let expected = expected_after;
            return Err(at(seq, Defect::BalanceAfter { expected, found }));
        }
        let (Some(prev_hash), Some(hash)) = (&row.prev_hash, &row.hash) else {
            let why = "it has no hash yet (run `walletd migrate`)".to_owned();
            return Err(at(seq, Defect::Unreadable(why)));
        };
        if *prev_hash != self.previous_hash {
            let (expected, found) = (self.previous_hash.clone(), prev_hash.clone());
            return Err(at(seq, Defect::PrevHash { expected, found }));
        }
        let computed = Transaction::from_row(row)
            .and_then(|rendered| rendered.chain_hash())
            .map_err(|e| at(seq, Defect::Unreadable(format!("{e:#}"))))?;
        if computed != *hash {
            let stored = hash.clone();
            return Err(at(seq, Defect::Hash { computed, stored }));
        }
        self.next_seq += 1;
        self.previous_after = row.balance_after;
        self.previous_hash = hash.clone();
        Ok(())
    }

    /// Compares the end of the ledger with the wallet's record of it.
    pub fn finish(self, wallet: &WalletRow) -> Verdict {
        let last_read = i64::try_from(self.entries).unwrap_or(i64::MAX);
        let finding = self.finding.or_else(|| {
            if last_read < wallet.last_seq {
                Some(Finding {
                    seq: last_read + 1,
                    defect: Defect::MissingEntries {
                        last_seq: wallet.last_seq,
                    },
                })
            } else if last_read > wallet.last_seq {
                Some(Finding {
                    seq: wallet.last_seq + 1,
                    defect: Defect::EntriesBeyondWallet {
                        last_seq: wallet.last_seq,
                    },
                })
            } else if wallet.last_hash != self.previous_hash {
                Some(Finding {
                    seq: last_read.max(1),
                    defect: Defect::LastHash {
                        wallet: wallet.last_hash.clone(),
                        ledger: self.previous_hash.clone(),
                    },
                })
            } else {
                None
            }
        });
        Verdict {
            entries: self.entries,
            ledger_sum: self.ledger_sum,
            finding,
        }
    }
}

fn wallet_currency(wallet: &WalletRow) -> Result<Currency, LedgerReadError> {
    Currency::parse(wallet.currency.trim()).map_err(|e| {
        LedgerReadError::Corrupt(anyhow::anyhow!(
            "wallet {} has an invalid currency: {e}",
            wallet.id
        ))
    })
}

/// The audit of one wallet, as read in one snapshot.
#[derive(Debug, Clone)]
pub struct WalletAudit {
    pub tenant_id: Uuid,
    pub wallet_id: Uuid,
    pub currency: Currency,
    pub entries: u64,
    /// The wallet row's balance.
    pub balance: Decimal,
    pub ledger_sum: Decimal,
    pub finding: Option<Finding>,
    /// When the snapshot was taken.
    pub checked_at: DateTime<Utc>,
}

impl WalletAudit {
    /// Every entry and the wallet's record of the ledger's end check out.
    pub fn chain_ok(&self) -> bool {
        self.finding.is_none()
    }

    /// The chain is intact and the balance is the ledger sum.
    pub fn is_sound(&self) -> bool {
        self.chain_ok() && self.balance == self.ledger_sum
    }

    /// What is wrong, in a sentence (`None` for a sound wallet).
    pub fn problem(&self) -> Option<String> {
        match &self.finding {
            Some(finding) => Some(finding.to_string()),
            None if self.balance != self.ledger_sum => Some(format!(
                "the wallet's balance is {} but its ledger sums to {}",
                self.balance, self.ledger_sum
            )),
            None => None,
        }
    }

    /// The `GET /v1/wallets/{id}/audit` body.
    pub fn report(&self) -> AuditReport {
        AuditReport {
            wallet_id: self.wallet_id.hyphenated().to_string(),
            entries: self.entries,
            balance: render_exact(self.currency, self.balance),
            ledger_sum: render_exact(self.currency, self.ledger_sum),
            chain_ok: self.chain_ok(),
            first_bad_seq: self.finding.as_ref().map(|f| f.seq),
            checked_at: render_timestamp(self.checked_at),
        }
    }

    /// The line `walletd audit` prints for a wallet that is not sound.
    pub fn line(&self) -> AuditLine {
        let report = self.report();
        AuditLine {
            tenant_id: self.tenant_id.hyphenated().to_string(),
            wallet_id: report.wallet_id,
            entries: report.entries,
            balance: report.balance,
            ledger_sum: report.ledger_sum,
            chain_ok: report.chain_ok,
            first_bad_seq: report.first_bad_seq,
            problem: self.problem().unwrap_or_default(),
            checked_at: report.checked_at,
        }
    }
}

/// An amount with exactly the currency's minor-unit digits, as everywhere in the API, unless
/// it has more (only a damaged row can): then with all of them, so that an audit never rounds
/// a difference away.
pub fn render_exact(currency: Currency, value: Decimal) -> String {
    let scale = value.normalize().scale().max(currency.minor_units()) as usize;
    format!("{value:.scale$}")
}

/// `GET /v1/wallets/{id}/audit`: the ledger recomputed from its entries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditReport {
    #[schema(format = Uuid)]
    pub wallet_id: String,
    /// Ledger entries read.
    #[schema(minimum = 0)]
    pub entries: u64,
    /// The wallet's balance.
    #[schema(schema_with = signed_money, example = "87.50")]
    pub balance: String,
    /// Credits minus debits over the entries; equal to `balance` in a sound wallet.
    #[schema(schema_with = signed_money, example = "87.50")]
    pub ledger_sum: String,
    /// Every entry checks out: seq 1, 2, 3… without gaps, `balance_before` = the previous
    /// `balance_after` (0 first), `balance_after = balance_before ± amount`, `prev_hash` = the
    /// previous `hash` (64 zeros first), each `hash` recomputed, and the wallet's own record of
    /// its newest entry agrees.
    pub chain_ok: bool,
    /// The seq of the first entry that does not check out (or that is missing); `null` when
    /// `chain_ok`.
    #[schema(required = true, minimum = 1)]
    pub first_bad_seq: Option<i64>,
    /// When the entries were read (one consistent snapshot).
    #[schema(schema_with = timestamp)]
    pub checked_at: String,
}

/// One line of `walletd audit` output: a wallet that is not sound.
#[derive(Debug, Clone, Serialize)]
pub struct AuditLine {
    pub tenant_id: String,
    pub wallet_id: String,
    pub entries: u64,
    pub balance: String,
    pub ledger_sum: String,
    pub chain_ok: bool,
    pub first_bad_seq: Option<i64>,
    pub problem: String,
    pub checked_at: String,
}

/// Audits one wallet (of `tenant`, if given) in one read-only, repeatable-read snapshot, so
/// that the wallet row and every entry are read as of the same moment while writes go on.
/// `None` when there is no such wallet.
pub async fn audit_wallet(
    conn: &mut PgConn,
    wallet: WalletId,
    tenant: Option<TenantId>,
) -> Result<Option<WalletAudit>, LedgerReadError> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| audit_in_snapshot(conn, wallet, tenant).await)
        .await
}

async fn audit_in_snapshot(
    conn: &mut PgConn,
    wallet: WalletId,
    tenant: Option<TenantId>,
) -> Result<Option<WalletAudit>, LedgerReadError> {
    let checked_at = Utc::now();
    let mut query = wallets::table
        .filter(wallets::id.eq(wallet.as_uuid()))
        .select(WalletRow::as_select())
        .into_boxed();
    if let Some(tenant) = tenant {
        query = query.filter(wallets::tenant_id.eq(tenant.as_uuid()));
    }
    let Some(wallet) = query.first(conn).await.optional()? else {
        return Ok(None);
    };
    let mut verifier = ChainVerifier::new(&wallet)?;
    let mut after_seq = 0;
    loop {
        let page: Vec<LedgerEntryRow> = ledger_entries::table
            .filter(ledger_entries::wallet_id.eq(wallet.id))
            .filter(ledger_entries::seq.gt(after_seq))
            .order(ledger_entries::seq.asc())
            .limit(AUDIT_PAGE_ROWS)
            .select(LedgerEntryRow::as_select())
            .load(conn)
            .await?;
        for row in &page {
            verifier.push(row);
        }
        match page.last() {
            Some(last) if page.len() as i64 == AUDIT_PAGE_ROWS => after_seq = last.seq,
            _ => break,
        }
        // Hashing a page is CPU work on a shared runtime thread: let other tasks in between.
        tokio::task::yield_now().await;
    }
    let verdict = verifier.finish(&wallet);
    Ok(Some(WalletAudit {
        tenant_id: wallet.tenant_id,
        wallet_id: wallet.id,
        currency: wallet_currency(&wallet)?,
        entries: verdict.entries,
        balance: wallet.balance,
        ledger_sum: verdict.ledger_sum,
        finding: verdict.finding,
        checked_at,
    }))
}

/// The next page of wallet ids (of `tenant`, if given) after `after`, in id order.
pub async fn wallet_ids_after(
    conn: &mut PgConn,
    tenant: Option<TenantId>,
    after: Option<Uuid>,
) -> Result<Vec<Uuid>, LedgerReadError> {
    let mut query = wallets::table
        .select(wallets::id)
        .order(wallets::id.asc())
        .limit(WALLET_PAGE_ROWS)
        .into_boxed();
    if let Some(tenant) = tenant {
        query = query.filter(wallets::tenant_id.eq(tenant.as_uuid()));
    }
    if let Some(after) = after {
        query = query.filter(wallets::id.gt(after));
    }
    Ok(query.load(conn).await?)
}

/// What `walletd audit` found, printed as its last line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditSummary {
    /// Wallets audited.
    pub wallets: u64,
    /// Wallets whose chain is broken or whose balance is not the ledger sum.
    pub bad_wallets: u64,
    /// Entries read, over all wallets.
    pub entries: u64,
    pub ok: bool,
}

/// `walletd audit [--tenant T] [--wallet W]`: audits the wallet `W`, or every wallet (of `T`,
/// if given) in id order, each in its own snapshot, and writes one JSON line ([`AuditLine`]) to
/// `out` per wallet that is not sound. An unknown `W` is an error.
pub async fn audit_wallets(
    conn: &mut PgConn,
    tenant: Option<TenantId>,
    wallet: Option<WalletId>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<AuditSummary> {
    let mut summary = AuditSummary {
        ok: true,
        ..AuditSummary::default()
    };
    let mut record = |audit: &WalletAudit, out: &mut dyn std::io::Write| -> anyhow::Result<()> {
        summary.wallets += 1;
        summary.entries += audit.entries;
        if !audit.is_sound() {
            summary.bad_wallets += 1;
            summary.ok = false;
            writeln!(out, "{}", serde_json::to_string(&audit.line())?)?;
        }
        Ok(())
    };
    if let Some(wallet) = wallet {
        let audit = audit_wallet(conn, wallet, tenant).await?;
        let audit = audit.ok_or_else(|| match tenant {
            Some(tenant) => anyhow::anyhow!("tenant {tenant} has no wallet {wallet}"),
            None => anyhow::anyhow!("no wallet {wallet}"),
        })?;
        record(&audit, out)?;
        return Ok(summary);
    }
    let mut after = None;
    loop {
        let ids = wallet_ids_after(conn, tenant, after).await?;
        for id in &ids {
            // Wallets are never deleted, so every listed id is found again.
            if let Some(audit) = audit_wallet(conn, WalletId::from_uuid(*id), tenant).await? {
                record(&audit, out)?;
            }
        }
        match ids.last() {
            Some(last) if ids.len() as i64 == WALLET_PAGE_ROWS => after = Some(*last),
            _ => break,
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn wallet() -> WalletRow {
        WalletRow {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            currency: "EUR".into(),
            owner_ref: None,
            balance: Decimal::ZERO,
            held: Decimal::ZERO,
            overdraft_limit: Decimal::ZERO,
            version: 1,
            last_seq: 0,
            status: "active".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_hash: GENESIS_HASH.to_owned(),
        }
    }

    /// A valid chain of entries (credit 100, then debits of 10) and the wallet at its end.
    fn ledger(count: i64) -> (WalletRow, Vec<LedgerEntryRow>) {
        let mut wallet = wallet();
        let mut rows = Vec::new();
        for seq in 1..=count {
            let (kind, amount) = if seq == 1 {
                ("credit", dec("100.00"))
            } else {
                ("debit", dec("10.00"))
            };
            let before = wallet.balance;
            let after = if kind == "credit" {
                before + amount
            } else {
                before - amount
            };
            let mut row = LedgerEntryRow {
                wallet_id: wallet.id,
                seq,
                id: Uuid::now_v7(),
                tenant_id: wallet.tenant_id,
                entry_type: kind.into(),
                amount,
                currency: "EUR".into(),
                balance_before: before,
                balance_after: after,
                reference: Some(format!("ref-{seq}")),
                description: None,
                metadata: serde_json::json!({"n": seq, "rate": 1.5}),
                idempotency_key: format!("key-{seq}"),
                created_at: Utc::now(),
                direction: None,
                hold_id: None,
                reverses: None,
                prev_hash: Some(wallet.last_hash.clone()),
                hash: None,
            };
            let sealed = Transaction::sealed(&row, &wallet.last_hash).unwrap();
            row.hash = Some(sealed.hash.clone());
            wallet.balance = after;
            wallet.last_seq = seq;
            wallet.last_hash = sealed.hash;
            rows.push(row);
        }
        (wallet, rows)
    }

    fn verify(wallet: &WalletRow, rows: &[LedgerEntryRow]) -> Verdict {
        let mut verifier = ChainVerifier::new(wallet).unwrap();
        rows.iter().for_each(|row| verifier.push(row));
        verifier.finish(wallet)
    }

    fn first_bad(wallet: &WalletRow, rows: &[LedgerEntryRow]) -> Option<(i64, Defect)> {
        verify(wallet, rows).finding.map(|f| (f.seq, f.defect))
    }

    #[test]
    fn a_sound_ledger_passes() {
        let (wallet, rows) = ledger(5);
        let verdict = verify(&wallet, &rows);
        assert_eq!(verdict.finding, None);
        assert_eq!(verdict.entries, 5);
        assert_eq!(verdict.ledger_sum, dec("60.00"));
        assert_eq!(verdict.ledger_sum, wallet.balance);
        let empty = self::wallet();
        assert_eq!(verify(&empty, &[]).finding, None);
    }

    #[test]
    fn a_changed_amount_is_found_at_its_seq() {
        let (wallet, mut rows) = ledger(5);
        rows[2].amount = dec("11.00");
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 3);
        assert!(matches!(defect, Defect::BalanceAfter { .. }), "{defect:?}");
        // Balances rewritten to match: the arithmetic holds, the hash does not.
        rows[2].balance_after = dec("79.00");
        for row in &mut rows[3..] {
            row.balance_before -= dec("1.00");
            row.balance_after -= dec("1.00");
        }
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 3);
        assert!(matches!(defect, Defect::Hash { .. }), "{defect:?}");
    }

    #[test]
    fn changed_metadata_breaks_the_hash() {
        let (wallet, mut rows) = ledger(4);
        rows[1].metadata = serde_json::json!({"n": 2, "rate": 1.25});
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 2);
        assert!(matches!(defect, Defect::Hash { .. }));
    }

    #[test]
    fn a_resealed_entry_breaks_the_next_link() {
        let (wallet, mut rows) = ledger(4);
        rows[1].description = Some("rewritten".into());
        let resealed = Transaction::sealed(&rows[1], rows[1].prev_hash.as_deref().unwrap());
        rows[1].hash = Some(resealed.unwrap().hash);
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 3);
        assert!(matches!(defect, Defect::PrevHash { .. }));
    }

    #[test]
    fn a_broken_prev_hash_is_found() {
        let (wallet, mut rows) = ledger(3);
        rows[0].prev_hash = Some("1".repeat(64));
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 1);
        assert!(matches!(defect, Defect::PrevHash { .. }));
    }

    #[test]
    fn a_gap_names_the_missing_seq() {
        let (wallet, mut rows) = ledger(5);
        rows.remove(1);
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!((seq, defect), (2, Defect::SeqGap { found: 3 }));
    }

    #[test]
    fn the_wallet_must_agree_with_the_ledger_end() {
        let (wallet, mut rows) = ledger(5);
        rows.pop();
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!((seq, defect), (5, Defect::MissingEntries { last_seq: 5 }));

        let (mut wallet, rows) = ledger(5);
        wallet.last_seq = 4;
        let (seq, defect) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(
            (seq, defect),
            (5, Defect::EntriesBeyondWallet { last_seq: 4 })
        );

        let (mut wallet, rows) = ledger(5);
        wallet.last_hash = "2".repeat(64);
        let (seq, _) = first_bad(&wallet, &rows).unwrap();
        assert_eq!(seq, 5);
    }

    #[test]
    fn foreign_rows_and_bad_amounts_are_found() {
        let (wallet, rows) = ledger(3);
        let mut foreign = rows.clone();
        foreign[1].tenant_id = Uuid::now_v7();
        assert!(matches!(
            first_bad(&wallet, &foreign),
            Some((2, Defect::ForeignTenant { .. }))
        ));
        let mut precise = rows.clone();
        precise[2].amount = dec("10.001");
        assert!(matches!(
            first_bad(&wallet, &precise),
            Some((3, Defect::BadAmount { .. }))
        ));
        let mut missing = rows;
        missing[0].hash = None;
        assert!(matches!(
            first_bad(&wallet, &missing),
            Some((1, Defect::Unreadable(_)))
        ));
    }

    #[test]
    fn reversals_move_the_way_their_direction_says() {
        let (mut wallet, mut rows) = ledger(2);
        let original = rows[1].id;
        let mut reversal = rows[1].clone();
        reversal.seq = 3;
        reversal.id = Uuid::now_v7();
        reversal.entry_type = "reversal".into();
        reversal.direction = Some("credit".into());
        reversal.reverses = Some(original);
        reversal.balance_before = wallet.balance;
        reversal.balance_after = wallet.balance + reversal.amount;
        reversal.prev_hash = Some(wallet.last_hash.clone());
        let sealed = Transaction::sealed(&reversal, &wallet.last_hash).unwrap();
        reversal.hash = Some(sealed.hash.clone());
        wallet.balance = reversal.balance_after;
        wallet.last_seq = 3;
        wallet.last_hash = sealed.hash;
        rows.push(reversal);
        let verdict = verify(&wallet, &rows);
        assert_eq!(verdict.finding, None);
        assert_eq!(verdict.ledger_sum, dec("100.00"));
    }

    #[test]
    fn reports_render_minor_units_and_never_round_a_difference_away() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(render_exact(eur, dec("12.5")), "12.50");
        assert_eq!(render_exact(eur, dec("-3")), "-3.00");
        assert_eq!(render_exact(eur, dec("10.0010")), "10.001");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(render_exact(jpy, dec("500.0000")), "500");

        let (wallet, rows) = ledger(3);
        let verdict = verify(&wallet, &rows);
        let audit = WalletAudit {
            tenant_id: wallet.tenant_id,
            wallet_id: wallet.id,
            currency: eur,
            entries: verdict.entries,
            balance: dec("70.00"),
            ledger_sum: verdict.ledger_sum,
            finding: verdict.finding,
            checked_at: Utc::now(),
        };
        assert!(audit.chain_ok());
        assert!(!audit.is_sound());
        let report = serde_json::to_value(audit.report()).unwrap();
        assert_eq!(report["balance"], "70.00");
        assert_eq!(report["ledger_sum"], "80.00");
        assert_eq!(report["first_bad_seq"], serde_json::Value::Null);
        assert!(audit.problem().unwrap().contains("sums to 80"));
    }
}
