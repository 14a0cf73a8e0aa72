//! Currencies and amounts, parsed once at the edge and trusted everywhere after.
//!
//! The API carries money as decimal strings (`"12.50"`), never JSON numbers, so that no float ever
//! touches a balance. A [`Money`] can only be built by [`Money::parse`], which enforces the
//! contract: amount > 0, at most [`AMOUNT_MAX`], and no more fraction digits (as written) than the
//! currency has minor units.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// The largest amount one request may move: 10^15, inclusive (API.md, Conventions).
pub const AMOUNT_MAX: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

/// The largest balance a wallet may reach: 10^18. The `NUMERIC(28,4)` columns hold far more;
/// this bound keeps every sum of two balances exact in a 96-bit `Decimal`.
pub const BALANCE_MAX: Decimal = Decimal::from_parts(2_808_348_672, 232_830_643, 0, false, 0);

/// Longest amount string we even try to read; anything longer is over the maximum anyway
/// (16 integer digits, a point and at most 4 fraction digits).
const AMOUNT_TEXT_LEN_MAX: usize = 24;

/// Why a currency code or an amount was rejected. Each maps to 400 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The code is not an ISO 4217 alpha-3 code with defined minor units.
    #[error("currency {0:?} is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    /// The amount text is not a plain decimal number (`"12.50"`).
    #[error("amount {0:?} is not a decimal string such as \"12.50\"")]
    Malformed(String),
    /// The amount is zero (amounts must be strictly positive).
    #[error("amount must be greater than 0")]
    NotPositive,
    /// More fraction digits than the currency's minor units.
    #[error("amount has {written} fraction digits; {currency} allows at most {allowed}")]
    TooPrecise {
        written: usize,
        allowed: u32,
        currency: Currency,
    },
    /// Above [`AMOUNT_MAX`].
    #[error("amount must be at most 1000000000000000")]
    TooLarge,
}

/// An ISO 4217 currency that has minor units (so not XAU, XDR, XXX and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: iso_currency::Currency,
    minor_units: u32,
}

impl Currency {
    /// Parses an upper-case ISO 4217 alpha-3 code. Lower case is rejected: the contract says
    /// codes are upper case, and accepting both would give one request two fingerprints.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency(code.to_owned());
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(unknown());
        }
        let iso = iso_currency::Currency::from_code(code).ok_or_else(unknown)?;
        let minor_units = iso.exponent().ok_or_else(unknown)?;
        Ok(Self {
            code: iso,
            minor_units: u32::from(minor_units),
        })
    }

    pub fn code(&self) -> &'static str {
        self.code.code()
    }

    /// Digits after the decimal point: EUR 2, JPY 0, KWD 3.
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Renders a value with exactly this currency's minor-unit digits (`"100.00"`, `"5"`).
    pub fn render(&self, value: Decimal) -> String {
        let digits = self.minor_units as usize;
        format!("{value:.digits$}")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A strictly positive amount in a currency, within the contract's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Parses an amount string in the given currency. See the module doc for the rules.
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let amount = parse_decimal(amount, currency)?;
        if amount.is_zero() {
            return Err(MoneyError::NotPositive);
        }
        Ok(Self { amount, currency })
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// An amount whose currency is not known yet: a capture or a reversal names only the hold or
/// the entry it acts on. Checked now as far as it can be (a decimal > 0, at most 10^15, at
/// most 4 fraction digits, the most any currency has), and completed with
/// [`PendingAmount::in_currency`] once the currency is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAmount(String);

/// A currency with the most minor units (4), to check an amount before its currency is known.
const WIDEST_CURRENCY: &str = "CLF";

impl PendingAmount {
    pub fn parse(text: String) -> Result<Self, MoneyError> {
        Money::parse(&text, Currency::parse(WIDEST_CURRENCY)?)?;
        Ok(Self(text))
    }

    /// The amount in `currency`: refused if it has more fraction digits than `currency` has.
    pub fn in_currency(&self, currency: Currency) -> Result<Money, MoneyError> {
        Money::parse(&self.0, currency)
    }
}

/// A non-negative amount (an overdraft limit): like [`Money`], but zero is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonNegativeAmount(Decimal);

impl NonNegativeAmount {
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        parse_decimal(amount, currency).map(Self)
    }

    pub fn zero() -> Self {
        Self(Decimal::ZERO)
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

/// Digits, optionally a point and more digits; no sign, exponent, spaces or leading point.
fn parse_decimal(text: &str, currency: Currency) -> Result<Decimal, MoneyError> {
    let malformed = || MoneyError::Malformed(text.to_owned());
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(malformed());
    }
    let written = fraction.map_or(0, str::len);
    if written > currency.minor_units() as usize {
        return Err(MoneyError::TooPrecise {
            written,
            allowed: currency.minor_units(),
            currency,
        });
    }
    let significant = integer.trim_start_matches('0');
    if significant.len() + written > AMOUNT_TEXT_LEN_MAX {
        return Err(MoneyError::TooLarge);
    }
    let value = Decimal::from_str(text).map_err(|_| malformed())?;
    if value > AMOUNT_MAX {
        return Err(MoneyError::TooLarge);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn constants_are_what_they_claim() {
        assert_eq!(AMOUNT_MAX, Decimal::from_str("1000000000000000").unwrap());
        assert_eq!(
            BALANCE_MAX,
            Decimal::from_str("1000000000000000000").unwrap()
        );
    }

    #[test]
    fn currencies_carry_iso_minor_units() {
        for (code, digits) in [("EUR", 2), ("USD", 2), ("GBP", 2), ("JPY", 0), ("KRW", 0)] {
            assert_eq!(
                Currency::parse(code).unwrap().minor_units(),
                digits,
                "{code}"
            );
        }
        for code in ["KWD", "BHD", "JOD"] {
            assert_eq!(Currency::parse(code).unwrap().minor_units(), 3, "{code}");
        }
    }

    #[test]
    fn non_currencies_are_rejected() {
        for code in ["eur", "EU", "EURO", "ABC", "XAU", "XXX", "", "€", "EUR "] {
            assert!(Currency::parse(code).is_err(), "{code:?} must be rejected");
        }
    }

    #[test]
    fn amounts_render_with_the_currency_digits() {
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(eur().render(Decimal::from(100)), "100.00");
        assert_eq!(eur().render(Decimal::from_str("87.5").unwrap()), "87.50");
        assert_eq!(jpy.render(Decimal::from_str("5.000").unwrap()), "5");
        assert_eq!(kwd.render(Decimal::ONE), "1.000");
        assert_eq!(eur().render(Decimal::from_str("-12.5").unwrap()), "-12.50");
    }

    #[test]
    fn contract_examples() {
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert!(Money::parse("12.50", eur()).is_ok());
        assert!(Money::parse("5", jpy).is_ok());
        assert!(matches!(
            Money::parse("5.0", jpy),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("1.0000", kwd),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(Money::parse("1.000", kwd).is_ok());
        assert!(Money::parse("1000000000000000", eur()).is_ok());
        assert_eq!(
            Money::parse("1000000000000000.01", eur()),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(
            Money::parse("1000000000000000.00", eur()).unwrap().amount(),
            AMOUNT_MAX
        );
    }

    #[test]
    fn hostile_amounts_are_rejected() {
        for text in [
            "",
            "0",
            "0.00",
            "-0",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "NaN",
            "Infinity",
            " 1",
            "1 ",
            ".5",
            "5.",
            "1,00",
            "0x10",
            "１",
            "1.2.3",
            "99999999999999999999999999999999",
        ] {
            assert!(
                Money::parse(text, eur()).is_err(),
                "{text:?} must be rejected"
            );
        }
    }

    #[test]
    fn zero_is_a_valid_overdraft_limit() {
        assert_eq!(
            NonNegativeAmount::parse("0.00", eur()).unwrap().value(),
            Decimal::ZERO
        );
        assert!(NonNegativeAmount::parse("-1.00", eur()).is_err());
    }

    proptest! {
        #[test]
        fn any_valid_cents_amount_round_trips(cents in 1u64..=100_000_000_000_000_000) {
            let text = format!("{}.{:02}", cents / 100, cents % 100);
            let money = Money::parse(&text, eur()).unwrap();
            prop_assert_eq!(eur().render(money.amount()), text);
        }

        #[test]
        fn fraction_digits_beyond_minor_units_never_parse(int in 0u64..1_000_000, frac in 0u32..1000) {
            let text = format!("{int}.{frac:03}");
            prop_assert!(Money::parse(&text, eur()).is_err());
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = Money::parse(&text, eur());
        }

        #[test]
        fn accepted_amounts_are_within_bounds(text in "[0-9]{1,20}(\\.[0-9]{1,2})?") {
            if let Ok(money) = Money::parse(&text, eur()) {
                prop_assert!(money.amount() > Decimal::ZERO);
                prop_assert!(money.amount() <= AMOUNT_MAX);
            }
        }
    }
}
