//! Exact money amounts for send prices and budgets, kept as whole
//! millionths of a currency unit and never as floating point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many micro-units make one whole currency unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// The most fractional digits an amount can carry exactly.
const MAX_DECIMALS: u32 = 6;

/// Currencies whose ISO 4217 minor unit is 0 (no decimals).
const ZERO_DECIMAL: [&str; 17] = [
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];

/// Currencies whose ISO 4217 minor unit is 3.
const THREE_DECIMAL: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// Why an amount or currency was refused, or a sum could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The currency code was not three letters.
    #[error("{0:?} is not a currency code: expected three letters such as KES")]
    InvalidCurrency(String),
    /// The amount was empty or only whitespace.
    #[error("an amount must not be empty")]
    Empty,
    /// The amount had a sign or a point but no digits.
    #[error("the amount {0:?} has no digits")]
    NoDigits(String),
    /// The amount was written with an exponent, such as `1e3`.
    #[error("the amount {0:?} uses an exponent; write it as a plain decimal such as 1000")]
    Exponent(String),
    /// The amount had whitespace inside it.
    #[error("the amount {0:?} has a space inside it")]
    Whitespace(String),
    /// The amount had more than one decimal point.
    #[error("the amount {0:?} has more than one decimal point")]
    SeveralPoints(String),
    /// A `+` or `-` came somewhere other than first.
    #[error("the amount {0:?} has a sign that is not at the start")]
    MisplacedSign(String),
    /// The amount had a character that is not a digit, sign or point.
    #[error(
        "the amount {input:?} has {found:?}, but may contain only digits, one leading sign and one decimal point"
    )]
    InvalidCharacter {
        /// The amount as given, trimmed.
        input: String,
        /// The first character that is not allowed.
        found: char,
    },
    /// The amount had non-zero digits past the sixth decimal place.
    #[error("the amount {0:?} is more precise than a millionth of a unit")]
    TooPrecise(String),
    /// The amount or the result of a sum is too large to hold.
    #[error("the amount is too large to hold")]
    Overflow,
    /// Two amounts in different currencies were added.
    #[error("cannot add an amount in {right} to an amount in {left}")]
    CurrencyMismatch {
        /// The currency of the amount added to.
        left: Currency,
        /// The currency of the amount being added.
        right: Currency,
    },
}

/// Every active ISO 4217 code (list one, as of 2026: ANG, BGN, SLL and ZWL are
/// gone; XCG, SLE and ZWG are in), sorted, so configuration can refuse a typo
/// such as `KSH` instead of pricing in a currency nobody pays in.
pub const ISO_4217_ACTIVE: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR",
    "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR",
    "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH",
    "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF",
    "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT",
    "XSU", "XTS", "XUA", "XXX", "YER", "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 currency code such as `KES`, always in upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct Currency([u8; 3]);

impl Currency {
    /// The three-letter code, such as `"KES"`.
    pub fn as_str(&self) -> &str {
        // Only three ASCII letters are ever stored, so this is always valid
        // UTF-8; "XXX" is the ISO code for "no currency" and a safe fallback.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Whether this is an active ISO 4217 code ([`ISO_4217_ACTIVE`]).
    pub fn is_active_iso4217(&self) -> bool {
        ISO_4217_ACTIVE.binary_search(&self.as_str()).is_ok()
    }

    /// How many decimals amounts in this currency have (ISO 4217 minor
    /// unit): 0 for JPY or UGX, 3 for KWD, 2 for most others such as KES.
    pub fn minor_units(&self) -> u32 {
        let code = self.as_str();
        if ZERO_DECIMAL.contains(&code) {
            0
        } else if THREE_DECIMAL.contains(&code) {
            3
        } else {
            2
        }
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    /// Reads three ASCII letters in any case, such as `kes` or `KES`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_alphabetic()) => Ok(Currency([
                a.to_ascii_uppercase(),
                b.to_ascii_uppercase(),
                c.to_ascii_uppercase(),
            ])),
            _ => Err(MoneyError::InvalidCurrency(s.to_owned())),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Currency").field(&self.as_str()).finish()
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads an exact decimal amount, such as `"0.8000"` or `"-0.0075"`, as whole
/// micro-units (millionths).
///
/// Surrounding whitespace is ignored. A leading `-` or `+`, digits, and an
/// optional point with fractional digits are allowed (`".5"` and `"1."` too).
/// Digits past the sixth decimal place must all be zero.
pub fn parse_decimal_micros(s: &str) -> Result<i64, MoneyError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(MoneyError::Empty);
    }
    let (negative, unsigned) = if let Some(rest) = input.strip_prefix('-') {
        (true, rest)
    } else {
        (false, input.strip_prefix('+').unwrap_or(input))
    };

    let mut seen_point = false;
    for c in unsigned.chars() {
        match c {
            '0'..='9' => {}
            '.' if seen_point => return Err(MoneyError::SeveralPoints(input.to_owned())),
            '.' => seen_point = true,
            'e' | 'E' => return Err(MoneyError::Exponent(input.to_owned())),
            '+' | '-' => return Err(MoneyError::MisplacedSign(input.to_owned())),
            c if c.is_whitespace() => return Err(MoneyError::Whitespace(input.to_owned())),
            found => {
                return Err(MoneyError::InvalidCharacter {
                    input: input.to_owned(),
                    found,
                });
            }
        }
    }
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(MoneyError::NoDigits(input.to_owned()));
    }

    // Only ASCII digits are left, so splitting by byte count is safe.
    let (kept, extra) = fraction.split_at(fraction.len().min(MAX_DECIMALS as usize));
    if extra.bytes().any(|b| b != b'0') {
        return Err(MoneyError::TooPrecise(input.to_owned()));
    }

    // The digits of the amount in micro-units: the whole part, the kept
    // fraction, then zeros up to six decimals.
    let padding = std::iter::repeat_n('0', (MAX_DECIMALS as usize).saturating_sub(kept.len()));
    let magnitude = whole
        .chars()
        .chain(kept.chars())
        .chain(padding)
        .try_fold(0i128, |sum, c| {
            let digit = c.to_digit(10)?;
            sum.checked_mul(10)?.checked_add(i128::from(digit))
        })
        .ok_or(MoneyError::Overflow)?;
    let signed = if negative {
        magnitude.checked_neg().ok_or(MoneyError::Overflow)?
    } else {
        magnitude
    };
    i64::try_from(signed).map_err(|_| MoneyError::Overflow)
}

/// Writes micro-units as an exact decimal with at least `min_decimals`
/// fractional digits, and more only where needed to stay exact (never more
/// than 6, never rounding): `(800_000, 2)` gives `"0.80"`, `(7_900, 2)` gives
/// `"0.0079"`.
pub fn format_micros(micros: i64, min_decimals: u32) -> String {
    const PER_UNIT: u64 = MICROS_PER_UNIT.unsigned_abs();
    let magnitude = micros.unsigned_abs();
    let whole = magnitude / PER_UNIT;
    let fraction = magnitude % PER_UNIT;

    let digits = format!("{fraction:06}");
    let needed = digits.trim_end_matches('0').len();
    let shown = needed.max(min_decimals.min(MAX_DECIMALS) as usize);

    let sign = if micros < 0 { "-" } else { "" };
    match digits.get(..shown) {
        Some(decimals) if !decimals.is_empty() => format!("{sign}{whole}.{decimals}"),
        _ => format!("{sign}{whole}"),
    }
}

/// An exact amount of money in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in millionths of a currency unit.
    pub micros: i64,
    /// The currency of the amount.
    pub currency: Currency,
}

impl Money {
    /// Makes an amount from micro-units and a currency.
    pub fn new(micros: i64, currency: Currency) -> Money {
        Money { micros, currency }
    }

    /// Reads an amount such as `"0.80"` in a currency such as `"KES"`.
    pub fn parse(amount: &str, currency: &str) -> Result<Money, MoneyError> {
        let currency = currency.parse()?;
        let micros = parse_decimal_micros(amount)?;
        Ok(Money { micros, currency })
    }

    /// The amount as an exact decimal with at least the currency's usual
    /// number of decimals, such as `"0.80"` for KES or `"25"` for UGX.
    pub fn to_decimal_string(&self) -> String {
        format_micros(self.micros, self.currency.minor_units())
    }

    /// Adds two amounts in the same currency.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            });
        }
        let micros = self
            .micros
            .checked_add(other.micros)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(micros, self.currency))
    }

    /// Multiplies the amount by a count, such as a price per SMS segment by
    /// the number of segments.
    pub fn checked_mul(&self, n: u32) -> Result<Money, MoneyError> {
        let micros = self
            .micros
            .checked_mul(i64::from(n))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(micros, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency, self.to_decimal_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        code.parse().expect("valid currency")
    }

    #[test]
    fn currency_reads_any_case_and_stores_upper_case() {
        for input in ["KES", "kes", "Kes", "kEs"] {
            assert_eq!(cur(input).as_str(), "KES", "{input:?}");
        }
        assert_eq!(cur("kes"), cur("KES"));
        assert_eq!(cur("usd").to_string(), "USD");
        assert_eq!(format!("{:?}", cur("kes")), "Currency(\"KES\")");
    }

    #[test]
    fn currency_refuses_anything_but_three_ascii_letters() {
        for input in [
            "", "KE", "KESS", "K3S", "KE ", " KES", "KÉS", "€", "123", "K-S", "ÄÖÜ",
        ] {
            assert_eq!(
                input.parse::<Currency>(),
                Err(MoneyError::InvalidCurrency(input.to_owned())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn currency_error_names_the_input_and_what_is_expected() {
        let err = "KE".parse::<Currency>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"KE\" is not a currency code: expected three letters such as KES"
        );
    }

    #[test]
    fn currency_minor_units_follow_iso_4217() {
        for code in [
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
            "VND", "VUV", "XAF", "XOF", "XPF",
        ] {
            assert_eq!(cur(code).minor_units(), 0, "{code}");
        }
        for code in ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"] {
            assert_eq!(cur(code).minor_units(), 3, "{code}");
        }
        for code in ["KES", "TZS", "USD", "EUR", "GBP", "NGN", "ZAR", "ugx"] {
            let expected = if code == "ugx" { 0 } else { 2 };
            assert_eq!(cur(code).minor_units(), expected, "{code}");
        }
    }

    #[test]
    fn currencies_order_alphabetically() {
        let mut codes = [cur("USD"), cur("KES"), cur("EUR")];
        codes.sort();
        let names: Vec<&str> = codes.iter().map(Currency::as_str).collect();
        assert_eq!(names, ["EUR", "KES", "USD"]);
    }

    #[test]
    fn currency_serializes_as_its_code_and_deserializing_validates() {
        assert_eq!(
            serde_json::to_string(&cur("kes")).expect("serializes"),
            "\"KES\""
        );
        let back: Currency = serde_json::from_str("\"usd\"").expect("valid");
        assert_eq!(back, cur("USD"));
        let err = serde_json::from_str::<Currency>("\"US\"").unwrap_err();
        assert!(err.to_string().contains("is not a currency code"), "{err}");
    }

    #[test]
    fn decimals_become_exact_micros() {
        let cases = [
            ("0.8000", 800_000),
            ("-0.00750", -7_500),
            ("0.0079", 7_900),
            ("12", 12_000_000),
            (".5", 500_000),
            ("1.", 1_000_000),
            ("+1.5", 1_500_000),
            ("-.5", -500_000),
            ("0", 0),
            ("-0", 0),
            ("0.000001", 1),
            ("-0.000001", -1),
            ("0.1234560000", 123_456),
            ("007.10", 7_100_000),
            ("  0.80  ", 800_000),
            ("9223372036854.775807", i64::MAX),
            ("-9223372036854.775808", i64::MIN),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_decimal_micros(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn bad_decimals_are_refused_with_the_reason() {
        let owned = |s: &str| s.to_owned();
        let cases = [
            ("", MoneyError::Empty),
            ("   ", MoneyError::Empty),
            ("-", MoneyError::NoDigits(owned("-"))),
            ("+", MoneyError::NoDigits(owned("+"))),
            (".", MoneyError::NoDigits(owned("."))),
            ("-.", MoneyError::NoDigits(owned("-."))),
            ("1e3", MoneyError::Exponent(owned("1e3"))),
            ("1.5E-2", MoneyError::Exponent(owned("1.5E-2"))),
            ("1 000", MoneyError::Whitespace(owned("1 000"))),
            ("- 1", MoneyError::Whitespace(owned("- 1"))),
            ("1.2.3", MoneyError::SeveralPoints(owned("1.2.3"))),
            ("--1", MoneyError::MisplacedSign(owned("--1"))),
            ("+-1", MoneyError::MisplacedSign(owned("+-1"))),
            ("1-", MoneyError::MisplacedSign(owned("1-"))),
            (
                "1,000",
                MoneyError::InvalidCharacter {
                    input: owned("1,000"),
                    found: ',',
                },
            ),
            (
                "KES 1",
                MoneyError::InvalidCharacter {
                    input: owned("KES 1"),
                    found: 'K',
                },
            ),
            (
                "NaN",
                MoneyError::InvalidCharacter {
                    input: owned("NaN"),
                    found: 'N',
                },
            ),
            (
                "١٢",
                MoneyError::InvalidCharacter {
                    input: owned("١٢"),
                    found: '١',
                },
            ),
            ("0.0000001", MoneyError::TooPrecise(owned("0.0000001"))),
            ("1.12345678", MoneyError::TooPrecise(owned("1.12345678"))),
            ("9223372036854.775808", MoneyError::Overflow),
            ("-9223372036854.775809", MoneyError::Overflow),
            (
                "99999999999999999999999999999999999999999999",
                MoneyError::Overflow,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_decimal_micros(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn decimal_error_messages_read_as_plain_words() {
        let cases = [
            ("", "an amount must not be empty"),
            (
                "1e3",
                "the amount \"1e3\" uses an exponent; write it as a plain decimal such as 1000",
            ),
            (
                "0.0000001",
                "the amount \"0.0000001\" is more precise than a millionth of a unit",
            ),
            (
                "1,5",
                "the amount \"1,5\" has ',', but may contain only digits, one leading sign and one decimal point",
            ),
            ("99999999999999999999", "the amount is too large to hold"),
        ];
        for (input, expected) in cases {
            let err = parse_decimal_micros(input).unwrap_err();
            assert_eq!(err.to_string(), expected, "{input:?}");
        }
    }

    #[test]
    fn micros_format_exactly_without_rounding() {
        let cases = [
            (800_000, 2, "0.80"),
            (7_900, 2, "0.0079"),
            (-7_500, 2, "-0.0075"),
            (12_000_000, 0, "12"),
            (0, 2, "0.00"),
            (0, 0, "0"),
            (25_000_000, 0, "25"),
            (25_500_000, 0, "25.5"),
            (1, 2, "0.000001"),
            (-1, 0, "-0.000001"),
            (1_234_567, 3, "1.234567"),
            (1_200_000, 3, "1.200"),
            (1_200_000, 6, "1.200000"),
            (1_200_000, 9, "1.200000"),
            (-12_000_000, 2, "-12.00"),
            (i64::MAX, 2, "9223372036854.775807"),
            (i64::MIN, 2, "-9223372036854.775808"),
            (i64::MIN, 0, "-9223372036854.775808"),
        ];
        for (micros, min_decimals, expected) in cases {
            assert_eq!(
                format_micros(micros, min_decimals),
                expected,
                "({micros}, {min_decimals})"
            );
        }
    }

    #[test]
    fn formatting_then_parsing_gives_back_the_same_micros() {
        for micros in [
            0,
            1,
            -1,
            7_500,
            -7_500,
            999_999,
            1_000_000,
            123_456_789,
            i64::MAX,
            i64::MIN,
        ] {
            for min_decimals in [0, 2, 3, 6] {
                let text = format_micros(micros, min_decimals);
                assert_eq!(parse_decimal_micros(&text), Ok(micros), "{text}");
            }
        }
    }

    #[test]
    fn money_parses_amount_and_currency() {
        let price = Money::parse("0.8000", "kes").expect("valid");
        assert_eq!(price, Money::new(800_000, cur("KES")));
        assert_eq!(
            Money::parse("0.80", "KE"),
            Err(MoneyError::InvalidCurrency("KE".to_owned()))
        );
        assert_eq!(
            Money::parse("1e2", "KES"),
            Err(MoneyError::Exponent("1e2".to_owned()))
        );
    }

    #[test]
    fn money_shows_its_currency_and_usual_decimals() {
        let cases = [
            (800_000, "KES", "0.80", "KES 0.80"),
            (7_900, "USD", "0.0079", "USD 0.0079"),
            (25_000_000, "UGX", "25", "UGX 25"),
            (1_500_000, "KWD", "1.500", "KWD 1.500"),
            (-7_500, "EUR", "-0.0075", "EUR -0.0075"),
        ];
        for (micros, code, decimal, shown) in cases {
            let money = Money::new(micros, cur(code));
            assert_eq!(money.to_decimal_string(), decimal);
            assert_eq!(money.to_string(), shown);
        }
    }

    #[test]
    fn adding_money_in_one_currency_sums_the_micros() {
        let a = Money::new(800_000, cur("KES"));
        let b = Money::new(7_900, cur("KES"));
        assert_eq!(a.checked_add(&b), Ok(Money::new(807_900, cur("KES"))));
    }

    #[test]
    fn adding_money_in_different_currencies_is_refused() {
        let kes = Money::new(800_000, cur("KES"));
        let usd = Money::new(7_900, cur("USD"));
        let err = kes.checked_add(&usd).unwrap_err();
        assert_eq!(
            err,
            MoneyError::CurrencyMismatch {
                left: cur("KES"),
                right: cur("USD")
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot add an amount in USD to an amount in KES"
        );
    }

    #[test]
    fn adding_past_the_largest_amount_is_refused() {
        let big = Money::new(i64::MAX, cur("KES"));
        let one = Money::new(1, cur("KES"));
        assert_eq!(big.checked_add(&one), Err(MoneyError::Overflow));
        let low = Money::new(i64::MIN, cur("KES"));
        assert_eq!(
            low.checked_add(&Money::new(-1, cur("KES"))),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn multiplying_money_scales_the_micros() {
        let price = Money::new(800_000, cur("KES"));
        assert_eq!(price.checked_mul(3), Ok(Money::new(2_400_000, cur("KES"))));
        assert_eq!(price.checked_mul(0), Ok(Money::new(0, cur("KES"))));
        let refund = Money::new(-7_500, cur("KES"));
        assert_eq!(refund.checked_mul(2), Ok(Money::new(-15_000, cur("KES"))));
    }

    #[test]
    fn multiplying_past_the_largest_amount_is_refused() {
        let big = Money::new(i64::MAX / 2 + 1, cur("KES"));
        assert_eq!(big.checked_mul(2), Err(MoneyError::Overflow));
        let low = Money::new(i64::MIN, cur("KES"));
        assert_eq!(low.checked_mul(u32::MAX), Err(MoneyError::Overflow));
    }

    #[test]
    fn money_round_trips_through_json() {
        let money = Money::new(800_000, cur("KES"));
        let json = serde_json::to_string(&money).expect("serializes");
        assert_eq!(json, r#"{"micros":800000,"currency":"KES"}"#);
        let back: Money = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, money);
        assert!(serde_json::from_str::<Money>(r#"{"micros":1,"currency":"K"}"#).is_err());
    }
}
