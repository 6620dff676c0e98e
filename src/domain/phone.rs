//! Phone numbers that tuma can send an SMS to, always held in E.164 form.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use phonenumber::country::Id;
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, ParseError, Type};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most characters a phone number may have before it is read.
///
/// E.164 allows 15 digits; this leaves room for spaces, dashes and
/// parentheses while keeping absurd input away from the parser.
const MAX_INPUT_CHARS: usize = 40;

/// A country or region whose national numbering plan tuma knows, such as `KE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(Id);

impl Region {
    /// The two-letter region code in upper case, such as `"KE"`.
    pub fn as_str(&self) -> &'static str {
        // Every `Region` is made by `from_str`, which only accepts ids that
        // have numbering metadata, so the lookup always succeeds. "ZZ" is the
        // CLDR code for an unknown region and is only a safe fallback.
        DATABASE
            .by_id(self.0.as_ref())
            .map(|meta| meta.id())
            .unwrap_or("ZZ")
    }

    /// Wraps a region id from the numbering metadata, if tuma can parse
    /// numbers for it.
    fn from_id(id: Id) -> Option<Region> {
        DATABASE.by_id(id.as_ref()).map(|_| Region(id))
    }
}

impl FromStr for Region {
    type Err = PhoneError;

    /// Reads a two-letter region code such as `KE` or `ke`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || PhoneError::UnknownRegion(s.to_owned());
        let trimmed = s.trim();
        if trimmed.len() != 2 || !trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(unknown());
        }
        let id = Id::from_str(&trimmed.to_ascii_uppercase()).map_err(|_| unknown())?;
        Region::from_id(id).ok_or_else(unknown)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every kind of number the numbering metadata describes by pattern.
const NUMBER_KINDS: [Type; 10] = [
    Type::FixedLine,
    Type::Mobile,
    Type::TollFree,
    Type::PremiumRate,
    Type::SharedCost,
    Type::PersonalNumber,
    Type::Voip,
    Type::Pager,
    Type::Uan,
    Type::Voicemail,
];

/// What kind of line a number belongs to, as its region's numbering plan
/// says (libphonenumber's number types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineType {
    /// A mobile number.
    Mobile,
    /// A number the plan cannot tell apart from a mobile one (North America).
    FixedLineOrMobile,
    /// A fixed (land) line.
    FixedLine,
    /// A freephone number.
    TollFree,
    /// A premium-rate number: its owner is paid for what reaches it.
    PremiumRate,
    /// A shared-cost number.
    SharedCost,
    /// A personal number, forwarded anywhere.
    PersonalNumber,
    /// A voice-over-IP number.
    Voip,
    /// A pager number.
    Pager,
    /// A universal access (company) number.
    Uan,
    /// A voicemail access number.
    Voicemail,
    /// A valid number of no type the plan names.
    Unknown,
}

impl LineType {
    /// Whether an SMS to this line reaches a handset: mobile numbers, and
    /// those the plan cannot tell from mobile ones.
    pub fn is_mobile(self) -> bool {
        matches!(self, LineType::Mobile | LineType::FixedLineOrMobile)
    }
}

impl fmt::Display for LineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineType::Mobile => "mobile",
            LineType::FixedLineOrMobile => "fixed-line or mobile",
            LineType::FixedLine => "fixed-line",
            LineType::TollFree => "toll-free",
            LineType::PremiumRate => "premium-rate",
            LineType::SharedCost => "shared-cost",
            LineType::PersonalNumber => "personal (forwarding)",
            LineType::Voip => "VoIP",
            LineType::Pager => "pager",
            LineType::Uan => "company (UAN)",
            LineType::Voicemail => "voicemail",
            LineType::Unknown => "unknown-type",
        })
    }
}

/// Country codes that belong to no country: satellite and international
/// networks, whose calls and texts cost the sender dearly and whose operators
/// share that revenue (the favourite destinations of SMS pumping).
const INTERNATIONAL_NETWORKS: [(u16, &str); 4] = [
    (870, "Inmarsat satellite"),
    (881, "satellite (Global Mobile Satellite System)"),
    (882, "international network"),
    (883, "international network"),
];

/// The kinds checked before fixed and mobile lines, in libphonenumber's order
/// (a premium-rate range wins over a general fixed-line pattern).
const SPECIAL_KINDS: [(Type, LineType); 8] = [
    (Type::PremiumRate, LineType::PremiumRate),
    (Type::TollFree, LineType::TollFree),
    (Type::SharedCost, LineType::SharedCost),
    (Type::Voip, LineType::Voip),
    (Type::PersonalNumber, LineType::PersonalNumber),
    (Type::Pager, LineType::Pager),
    (Type::Uan, LineType::Uan),
    (Type::Voicemail, LineType::Voicemail),
];

/// Why a number that could be read is still not a valid phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// It has fewer digits than any number in its region.
    TooShort,
    /// It has more digits than any number in its region.
    TooLong,
    /// Its length is possible but no number in its region looks like it.
    NotValid,
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidReason::TooShort => "too short",
            InvalidReason::TooLong => "too long",
            InvalidReason::NotValid => "not a valid number",
        })
    }
}

/// Why a phone number or region was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The input was empty or only whitespace.
    #[error("a phone number must not be empty")]
    Empty,
    /// The input was longer than any phone number could be written.
    #[error("a phone number may be at most {max} characters long, got {got}")]
    TooManyCharacters {
        /// How many characters the input had.
        got: usize,
        /// The most characters allowed.
        max: usize,
    },
    /// The input had a character other than digits, spaces, dashes,
    /// parentheses and a leading `+`.
    #[error(
        "a phone number may contain only digits, spaces, dashes, parentheses and a leading +, found {found:?}"
    )]
    InvalidCharacter {
        /// The first character that is not allowed.
        found: char,
    },
    /// A `+` appeared somewhere other than at the start.
    #[error("a + may only appear at the start of a phone number")]
    MisplacedPlus,
    /// An international number was required but the input had no leading `+`.
    #[error(
        "the phone number {input} must be in international form, starting with + and the country code"
    )]
    NotInternational {
        /// The input as given, trimmed.
        input: String,
    },
    /// The input could not be read as a phone number at all.
    #[error("{input} could not be read as a phone number: {reason}")]
    Unreadable {
        /// The input as given, trimmed.
        input: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The input was read, but is not a valid number for its region.
    #[error("{number} is not a valid phone number for {region}: {reason}")]
    Invalid {
        /// The number in E.164 form.
        number: String,
        /// The region the number belongs to (such as `KE`), or its country
        /// code (such as `+999`) when no region is known.
        region: String,
        /// Why the number is not valid.
        reason: InvalidReason,
    },
    /// The region code is not one tuma knows.
    #[error("{0:?} is not a known region: expected a two-letter country code such as KE")]
    UnknownRegion(String),
}

/// A valid phone number in E.164 form, such as `+254711000001`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Reads a phone number written in international form (`+1 415 555 2671`)
    /// or in the national form of `default_region` (`0711 000 001` for KE).
    ///
    /// Spaces, dashes, parentheses and a leading `+` are allowed.
    pub fn parse(input: &str, default_region: Region) -> Result<PhoneNumber, PhoneError> {
        let trimmed = check_characters(input)?;
        if trimmed.starts_with('+') {
            parse_international(trimmed)
        } else {
            parse_national(trimmed, default_region)
        }
    }

    /// Reads a phone number that must be in international form, starting with
    /// `+` and the country code. National forms are refused.
    pub fn parse_e164(input: &str) -> Result<PhoneNumber, PhoneError> {
        let trimmed = check_characters(input)?;
        if !trimmed.starts_with('+') {
            return Err(PhoneError::NotInternational {
                input: trimmed.to_owned(),
            });
        }
        parse_international(trimmed)
    }

    /// The number in E.164 form, such as `+254711000001`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The country calling code, such as `254` for Kenya.
    pub fn country_code(&self) -> u16 {
        country_code_of(&self.0).map_or(0, |(code, _)| code)
    }

    /// The region the number belongs to, such as `KE`, when it belongs to one
    /// (numbers such as `+800` freephone numbers belong to none).
    pub fn region(&self) -> Option<Region> {
        region_of(&self.0)
    }

    /// The satellite or international network the number belongs to
    /// (`+870`, `+881`, `+882`, `+883`), named, if it belongs to one.
    pub fn international_network(&self) -> Option<&'static str> {
        let code = self.country_code();
        if code == 881 {
            // +8816 and +8817 are Iridium's; the rest of +881 other systems'.
            let digit = self.as_str().as_bytes().get(4).copied();
            if matches!(digit, Some(b'6' | b'7')) {
                return Some("Iridium satellite");
            }
        }
        INTERNATIONAL_NETWORKS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, name)| *name)
    }

    /// The kind of line the number is, read from the metadata of its region
    /// (or of its country code, for numbers such as `+800` that belong to no
    /// region), with its national digits as written.
    ///
    /// Done here rather than by the `phonenumber` crate for the reason
    /// [`region_of`] is: the crate drops the national number's leading zeros.
    pub fn line_type(&self) -> LineType {
        let Some((code, national)) = country_code_of(&self.0) else {
            return LineType::Unknown;
        };
        let meta = match self.region() {
            Some(region) => DATABASE.by_id(region.as_str()),
            None => DATABASE
                .by_code(&code)
                .and_then(|metas| metas.into_iter().next()),
        };
        let Some(meta) = meta else {
            return LineType::Unknown;
        };
        let descriptors = meta.descriptors();
        if !descriptors.general().is_match(national) {
            return LineType::Unknown;
        }
        let matches = |kind: Type| descriptors.get(kind).is_some_and(|d| d.is_match(national));
        if let Some((_, line)) = SPECIAL_KINDS.iter().find(|(kind, _)| matches(*kind)) {
            return *line;
        }
        let same_pattern = match (descriptors.fixed_line(), descriptors.mobile()) {
            (Some(fixed), Some(mobile)) => {
                fixed.national_number().as_str() == mobile.national_number().as_str()
            }
            _ => false,
        };
        match (matches(Type::FixedLine), matches(Type::Mobile)) {
            (true, true) => LineType::FixedLineOrMobile,
            (true, false) if same_pattern => LineType::FixedLineOrMobile,
            (true, false) => LineType::FixedLine,
            (false, true) => LineType::Mobile,
            (false, false) => LineType::Unknown,
        }
    }
}

/// Splits E.164 text into its country calling code and the national digits
/// that follow it.
fn country_code_of(e164: &str) -> Option<(u16, &str)> {
    let digits = e164.strip_prefix('+')?;
    // Country calling codes are one to three digits and no code is the start
    // of another, so the first prefix the metadata knows is the code.
    (1..=3).find_map(|len| {
        let code = digits.get(..len)?.parse::<u16>().ok()?;
        DATABASE.region(&code)?;
        Some((code, digits.get(len..)?))
    })
}

/// Finds the region an E.164 number belongs to, the way libphonenumber does:
/// the only region for its country code, or else the first region sharing
/// the code whose leading digits (or, without those, whose number patterns)
/// fit the national digits.
///
/// This is done here rather than through the `phonenumber` crate because the
/// crate drops the leading zeros of the national number first, and so finds
/// no region for numbers such as Italian landlines (`+39 02 ...`).
/// The ISO code of the region an E.164 number belongs to, such as `"KE"`;
/// empty when it does not parse or belongs to no region. This is the
/// country a delivery keeps (`deliveries.country`) and the cost report
/// groups by.
pub fn region_code_of(e164: &str) -> &'static str {
    PhoneNumber::parse_e164(e164)
        .ok()
        .and_then(|p| p.region())
        .map_or("", |r| r.as_str())
}

fn region_of(e164: &str) -> Option<Region> {
    let (code, national) = country_code_of(e164)?;
    let ids = DATABASE.region(&code)?;
    if let [only] = ids.as_slice() {
        return only.parse().ok();
    }
    ids.iter()
        .filter_map(|id| DATABASE.by_id(*id))
        .find(|meta| match meta.leading_digits() {
            Some(pattern) => pattern.find(national).is_some_and(|m| m.start() == 0),
            None => {
                meta.descriptors().general().is_match(national)
                    && NUMBER_KINDS
                        .iter()
                        .filter_map(|kind| meta.descriptors().get(*kind))
                        .any(|desc| desc.is_match(national))
            }
        })
        .and_then(|meta| meta.id().parse().ok())
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PhoneNumber::parse_e164(&text).map_err(serde::de::Error::custom)
    }
}

/// Trims the input and refuses it unless it is short and made only of digits,
/// spaces, dashes, parentheses and a leading `+`.
fn check_characters(input: &str) -> Result<&str, PhoneError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    let got = trimmed.chars().count();
    if got > MAX_INPUT_CHARS {
        return Err(PhoneError::TooManyCharacters {
            got,
            max: MAX_INPUT_CHARS,
        });
    }
    for (index, c) in trimmed.char_indices() {
        match c {
            '0'..='9' | ' ' | '-' | '(' | ')' => {}
            '+' if index == 0 => {}
            '+' => return Err(PhoneError::MisplacedPlus),
            other => return Err(PhoneError::InvalidCharacter { found: other }),
        }
    }
    Ok(trimmed)
}

/// A region with no trunk prefix (such as the `0` of `0711 000 001`) and
/// whose international prefix starts with `0`, so that parsing a `+` number
/// "from" it takes the digits after the country code exactly as written.
///
/// The `phonenumber` crate strips the trunk prefix of the *default* region,
/// or of the number's own region when none is given, even from numbers
/// written with `+`. That would read `+7 800 555 3535` (a Russian toll-free
/// number) as `+7 005553535`, and would make some E.164 strings it produced
/// itself read back as a different number.
const AS_WRITTEN: Id = Id::DK;

/// Reads a number written with a leading `+`.
///
/// The digits after the country code are first taken as written, which is
/// always right for E.164 text. Only if that is not a valid number is a
/// trunk prefix stripped, for human input such as `+254 (0) 711 000 001` or
/// `+44 (0)20 7946 0000`: first by the `phonenumber` crate, then by
/// [`without_trunk_prefix`].
fn parse_international(trimmed: &str) -> Result<PhoneNumber, PhoneError> {
    let as_written = parse_with_region(trimmed, Some(AS_WRITTEN));
    if as_written.is_ok() {
        return as_written;
    }
    let stripped = parse_with_region(trimmed, None).and_then(round_trips);
    if stripped.is_ok() {
        return stripped;
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if let Some(Ok(number)) = country_code_of(&format!("+{digits}"))
        .and_then(|(code, national)| without_trunk_prefix(code, national))
    {
        return Ok(number);
    }
    match (as_written, stripped) {
        // Prefer saying why the number is not valid over saying it could not
        // be read at all.
        (Err(first @ PhoneError::Invalid { .. }), Err(PhoneError::Unreadable { .. })) => Err(first),
        (_, result) => result,
    }
}

/// Reads a number written without `+`, in the national form of `region`.
///
/// If the `phonenumber` crate does not read it as a valid number, the plain
/// reading is tried too (see [`without_trunk_prefix`]).
fn parse_national(trimmed: &str, region: Region) -> Result<PhoneNumber, PhoneError> {
    let first = parse_with_region(trimmed, Some(region.0)).and_then(round_trips);
    if first.is_ok() {
        return first;
    }
    let Some(meta) = DATABASE.by_id(region.as_str()) else {
        return first;
    };
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    match without_trunk_prefix(meta.country_code(), &digits) {
        Some(Ok(number)) => Ok(number),
        Some(Err(err @ PhoneError::Invalid { .. })) => Err(err),
        _ => first,
    }
}

/// The plain reading of national digits that start with a trunk prefix
/// (such as the `0` of `0711 000 001` or the `8` of `8 800 555 3535`): drop
/// the prefix once and put the country code in front.
///
/// This backs up the `phonenumber` crate, which strips the trunk prefix twice
/// when the national number itself starts with the same digit, as Russian
/// `8 800` numbers do. Gives `None` when no region using `code` has a trunk
/// prefix that `digits` starts with.
fn without_trunk_prefix(code: u16, digits: &str) -> Option<Result<PhoneNumber, PhoneError>> {
    let mut last = None;
    for meta in DATABASE.by_code(&code).unwrap_or_default() {
        let Some(national) = meta
            .national_prefix()
            .and_then(|prefix| digits.strip_prefix(prefix))
        else {
            continue;
        };
        let result = parse_with_region(&format!("+{code}{national}"), Some(AS_WRITTEN));
        if result.is_ok() {
            return Some(result);
        }
        last = Some(result);
    }
    last
}

/// Makes sure a number's E.164 text reads back as the same number, so that a
/// stored or queued number can always be deserialized again.
fn round_trips(number: PhoneNumber) -> Result<PhoneNumber, PhoneError> {
    match parse_with_region(&number.0, Some(AS_WRITTEN)) {
        Ok(again) if again == number => Ok(number),
        _ => Err(PhoneError::Invalid {
            region: number
                .region()
                .map_or_else(|| format!("+{}", number.country_code()), |r| r.to_string()),
            number: number.0,
            reason: InvalidReason::NotValid,
        }),
    }
}

/// Parses input that passed `check_characters` with the given default
/// region, validates it and formats it as E.164.
fn parse_with_region(trimmed: &str, region: Option<Id>) -> Result<PhoneNumber, PhoneError> {
    let unreadable = |reason| PhoneError::Unreadable {
        input: trimmed.to_owned(),
        reason,
    };
    if !trimmed.bytes().any(|b| b.is_ascii_digit()) {
        return Err(unreadable("it has no digits"));
    }
    let number =
        phonenumber::parse(region, trimmed).map_err(|err| unreadable(parse_reason(&err)))?;

    let mut e164 = String::new();
    write!(e164, "{}", number.format().mode(Mode::E164))
        .map_err(|_| unreadable("its country code is not known"))?;

    if !phonenumber::is_valid(&number) {
        let code = number.country().code();
        let national_len = number.national().to_string().len();
        let region = region_of(&e164)
            .map(|r| r.as_str().to_owned())
            .or_else(|| {
                DATABASE
                    .region(&code)
                    .and_then(|ids| ids.first().map(|id| (*id).to_owned()))
                    .filter(|id| id != "001")
            })
            .unwrap_or_else(|| format!("+{code}"));
        return Err(PhoneError::Invalid {
            number: e164,
            region,
            reason: length_reason(code, national_len),
        });
    }
    Ok(PhoneNumber(e164))
}

/// Puts a parser error from the `phonenumber` crate into plain words.
fn parse_reason(err: &ParseError) -> &'static str {
    match err {
        ParseError::NoNumber => "it does not look like a phone number",
        ParseError::InvalidCountryCode => "its country code is not known",
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn => "it is too short",
        ParseError::TooLong => "it is too long",
        ParseError::MalformedInteger(_) => "it has too many digits",
    }
}

/// Tells whether a national number of `len` digits is too short or too long
/// for every region using country code `code`, or neither.
fn length_reason(code: u16, len: usize) -> InvalidReason {
    // The general description often leaves its lengths empty, so gather the
    // lengths of every kind of number in every region sharing the code.
    let lengths: Vec<u16> = DATABASE
        .by_code(&code)
        .unwrap_or_default()
        .iter()
        .flat_map(|meta| {
            NUMBER_KINDS
                .iter()
                .filter_map(|kind| meta.descriptors().get(*kind))
                .flat_map(|desc| desc.possible_length().iter().copied())
        })
        .collect();
    let (Some(min), Some(max)) = (lengths.iter().min(), lengths.iter().max()) else {
        return InvalidReason::NotValid;
    };
    if len < usize::from(*min) {
        InvalidReason::TooShort
    } else if len > usize::from(*max) {
        InvalidReason::TooLong
    } else {
        InvalidReason::NotValid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ke() -> Region {
        "KE".parse().expect("KE is a known region")
    }

    fn us() -> Region {
        "US".parse().expect("US is a known region")
    }

    #[test]
    fn line_types_come_from_the_numbering_plan_of_the_region() {
        let cases = [
            ("+254711000001", LineType::Mobile),
            ("+254110000001", LineType::Mobile),
            ("+254202012345", LineType::FixedLine),
            ("+254900000000", LineType::PremiumRate),
            ("+254800223456", LineType::TollFree),
            ("+14155552671", LineType::FixedLineOrMobile),
            ("+18005551212", LineType::TollFree),
            ("+447400123456", LineType::Mobile),
            ("+442079460000", LineType::FixedLine),
            ("+390212345678", LineType::FixedLine),
            ("+80012345678", LineType::TollFree),
            ("+78005553535", LineType::TollFree),
        ];
        for (input, expected) in cases {
            let number = PhoneNumber::parse_e164(input).expect(input);
            assert_eq!(number.line_type(), expected, "{input}");
            assert_eq!(
                number.line_type().is_mobile(),
                expected == LineType::Mobile || expected == LineType::FixedLineOrMobile
            );
        }
    }

    #[test]
    fn satellite_and_international_network_numbers_are_named_though_the_plan_calls_them_mobile() {
        let cases = [
            ("+881631234567", Some("Iridium satellite")),
            ("+881712345678", Some("Iridium satellite")),
            (
                "+881212345678",
                Some("satellite (Global Mobile Satellite System)"),
            ),
            ("+870773111632", Some("Inmarsat satellite")),
            ("+883510012345", Some("international network")),
            ("+254711000001", None),
            ("+447400123456", None),
        ];
        for (input, expected) in cases {
            let number = PhoneNumber::parse_e164(input).expect(input);
            assert_eq!(number.international_network(), expected, "{input}");
        }
        // The plan alone would let a code through to these.
        assert!(
            PhoneNumber::parse_e164("+881631234567")
                .expect("iridium")
                .line_type()
                .is_mobile()
        );
    }

    #[test]
    fn region_reads_upper_and_lower_case_codes() {
        assert_eq!("KE".parse::<Region>(), Ok(ke()));
        assert_eq!("ke".parse::<Region>(), Ok(ke()));
        assert_eq!("Ke".parse::<Region>(), Ok(ke()));
        assert_eq!(ke().as_str(), "KE");
        assert_eq!(ke().to_string(), "KE");
    }

    #[test]
    fn region_refuses_unknown_codes() {
        for input in ["", "K", "KEN", "XX", "1A", "K3", "ÄÖ", "001", " ", "ZZ"] {
            assert_eq!(
                input.parse::<Region>(),
                Err(PhoneError::UnknownRegion(input.to_owned())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn unknown_region_error_names_the_input_and_what_is_expected() {
        let err = "XX".parse::<Region>().unwrap_err().to_string();
        assert_eq!(
            err,
            "\"XX\" is not a known region: expected a two-letter country code such as KE"
        );
    }

    #[test]
    fn every_region_the_metadata_knows_can_be_read_and_printed_back() {
        let mut count = 0;
        for meta in DATABASE.iter().filter(|m| m.id() != "001") {
            let region: Region = meta.id().parse().expect("metadata region parses");
            assert_eq!(region.as_str(), meta.id());
            count += 1;
        }
        assert!(count > 200, "only {count} regions");
    }

    #[test]
    fn kenyan_national_form_becomes_e164() {
        let cases = [
            "0711 000 001",
            "0711000001",
            "0711-000-001",
            "(0711) 000 001",
            "711000001",
            "+254 711 000 001",
            "+254711000001",
            "  +254-711-000-001  ",
            "+254 (0) 711 000 001",
        ];
        for input in cases {
            let number = PhoneNumber::parse(input, ke()).expect(input);
            assert_eq!(number.as_str(), "+254711000001", "{input:?}");
        }
    }

    #[test]
    fn international_form_wins_over_the_default_region() {
        let number = PhoneNumber::parse("+1 415 555 2671", ke()).expect("valid US number");
        assert_eq!(number.as_str(), "+14155552671");
        assert_eq!(number.country_code(), 1);
        assert_eq!(number.region(), Some(us()));
    }

    #[test]
    fn us_national_form_with_parentheses_becomes_e164() {
        let number = PhoneNumber::parse("(415) 555-2671", us()).expect("valid US number");
        assert_eq!(number.as_str(), "+14155552671");
    }

    #[test]
    fn parsed_number_knows_its_country_code_and_region() {
        let number = PhoneNumber::parse("0711 000 001", ke()).expect("valid");
        assert_eq!(number.country_code(), 254);
        assert_eq!(number.region(), Some(ke()));

        let uk = PhoneNumber::parse_e164("+44 7400 123456").expect("valid UK mobile");
        assert_eq!(uk.country_code(), 44);
        assert_eq!(uk.region().map(|r| r.as_str()), Some("GB"));

        let tz = PhoneNumber::parse_e164("+255 754 123 456").expect("valid TZ mobile");
        assert_eq!(tz.country_code(), 255);
        assert_eq!(tz.region().map(|r| r.as_str()), Some("TZ"));
    }

    #[test]
    fn the_region_used_for_international_input_has_no_trunk_prefix() {
        let meta = DATABASE.by_id(AS_WRITTEN.as_ref()).expect("metadata");
        assert_eq!(meta.national_prefix(), None);
        assert!(meta.national_prefix_for_parsing().is_none());
        let idd = meta.international_prefix().map(|re| re.as_str().to_owned());
        assert!(idd.is_some_and(|idd| idd.starts_with('0')));
    }

    #[test]
    fn international_digits_are_taken_as_written() {
        // The crate on its own would strip the Russian trunk prefix 8 here.
        let cases = [
            ("+7 800 555 3535", "+78005553535", Some("RU")),
            ("+7 866 141 9509", "+78661419509", Some("RU")),
            ("+7 701 123 4567", "+77011234567", Some("KZ")),
            ("+39 02 1234 5678", "+390212345678", Some("IT")),
            ("+39 06 698 12345", "+390669812345", Some("VA")),
            ("+1 604 555 0123", "+16045550123", Some("CA")),
            ("+256 772 123456", "+256772123456", Some("UG")),
            ("+800 1234 5678", "+80012345678", None),
        ];
        for (input, e164, region) in cases {
            for parsed in [
                PhoneNumber::parse(input, ke()),
                PhoneNumber::parse_e164(input),
            ] {
                let number = parsed.expect(input);
                assert_eq!(number.as_str(), e164, "{input:?}");
                assert_eq!(number.region().map(|r| r.as_str()), region, "{input:?}");
            }
        }
    }

    #[test]
    fn a_trunk_prefix_written_after_the_country_code_is_dropped() {
        let cases = [
            ("+254 0711 000 001", "+254711000001"),
            ("+254 (0) 711 000 001", "+254711000001"),
            ("+44 (0)20 7946 0000", "+442079460000"),
            ("+7 8 800 555 3535", "+78005553535"),
        ];
        for (input, e164) in cases {
            let number = PhoneNumber::parse_e164(input).expect(input);
            assert_eq!(number.as_str(), e164, "{input:?}");
        }
    }

    #[test]
    fn national_forms_of_other_regions_are_read() {
        let cases = [
            ("8 800 555 3535", "RU", "+78005553535"),
            ("8 (866) 141-95-09", "RU", "+78661419509"),
            ("(11) 98765-4321", "BR", "+5511987654321"),
            ("0 21 11 98765 4321", "BR", "+5511987654321"),
            ("02 1234 5678", "IT", "+390212345678"),
            ("020 7946 0000", "GB", "+442079460000"),
            ("0754 123 456", "TZ", "+255754123456"),
            ("0772 123456", "UG", "+256772123456"),
        ];
        for (input, region, e164) in cases {
            let region: Region = region.parse().expect("known region");
            let number = PhoneNumber::parse(input, region).expect(input);
            assert_eq!(number.as_str(), e164, "{input:?}");
        }
    }

    #[test]
    fn display_prints_e164() {
        let number = PhoneNumber::parse("0711 000 001", ke()).expect("valid");
        assert_eq!(number.to_string(), "+254711000001");
        assert_eq!(format!("{number}"), number.as_str());
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let cases: &[(&str, PhoneError)] = &[
            ("", PhoneError::Empty),
            ("   ", PhoneError::Empty),
            ("\t\n", PhoneError::Empty),
            ("0711 OOO 001", PhoneError::InvalidCharacter { found: 'O' }),
            (
                "call 0711000001",
                PhoneError::InvalidCharacter { found: 'c' },
            ),
            ("0711.000.001", PhoneError::InvalidCharacter { found: '.' }),
            ("0711/000001", PhoneError::InvalidCharacter { found: '/' }),
            (
                "0711000001 ext 5",
                PhoneError::InvalidCharacter { found: 'e' },
            ),
            ("0711\t000001", PhoneError::InvalidCharacter { found: '\t' }),
            ("٠٧١١٠٠٠٠٠١", PhoneError::InvalidCharacter { found: '٠' }),
            ("254+711000001", PhoneError::MisplacedPlus),
            ("++254711000001", PhoneError::MisplacedPlus),
            (
                "0711 000 001 0711 000 001 0711 000 001 00",
                PhoneError::TooManyCharacters { got: 41, max: 40 },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                PhoneNumber::parse(input, ke()).as_ref(),
                Err(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn input_without_digits_is_unreadable() {
        for input in ["+", "()", "- -", "+()"] {
            let err = PhoneNumber::parse(input, ke()).unwrap_err();
            assert_eq!(
                err,
                PhoneError::Unreadable {
                    input: input.to_owned(),
                    reason: "it has no digits"
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn unreadable_numbers_say_why() {
        let cases = [
            ("1", "it does not look like a phone number"),
            ("+999 711 000 001", "its country code is not known"),
            ("+254 1", "it is too short"),
        ];
        for (input, reason) in cases {
            match PhoneNumber::parse(input, ke()) {
                Err(PhoneError::Unreadable { reason: got, .. }) => {
                    assert_eq!(got, reason, "{input:?}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn too_short_number_names_its_region_and_the_reason() {
        let err = PhoneNumber::parse("+25471100", ke()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "+25471100 is not a valid phone number for KE: too short"
        );
    }

    #[test]
    fn too_long_number_names_its_region_and_the_reason() {
        let err = PhoneNumber::parse("+254 711 000 001 234", ke()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "+254711000001234 is not a valid phone number for KE: too long"
        );
    }

    #[test]
    fn number_of_possible_length_that_matches_no_pattern_is_not_valid() {
        // No Kenyan number of nine digits starts with 9.
        let err = PhoneNumber::parse_e164("+254 911 000 001").unwrap_err();
        match err {
            PhoneError::Invalid {
                reason: InvalidReason::NotValid,
                ref region,
                ..
            } => assert_eq!(region, "KE"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_numbers_are_refused_for_their_region() {
        let cases = [
            ("+1 415 555 267", ke()),
            ("0711 000", ke()),
            ("+44 7911 12345", ke()),
            ("555 2671", us()),
        ];
        for (input, region) in cases {
            let result = PhoneNumber::parse(input, region);
            assert!(
                matches!(
                    result,
                    Err(PhoneError::Invalid { .. } | PhoneError::Unreadable { .. })
                ),
                "{input:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn parse_e164_refuses_national_forms() {
        let err = PhoneNumber::parse_e164("0711 000 001").unwrap_err();
        assert_eq!(
            err,
            PhoneError::NotInternational {
                input: "0711 000 001".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "the phone number 0711 000 001 must be in international form, starting with + and the country code"
        );
        assert_eq!(
            PhoneNumber::parse_e164("254711000001"),
            Err(PhoneError::NotInternational {
                input: "254711000001".to_owned()
            })
        );
    }

    #[test]
    fn parse_e164_accepts_formatted_international_numbers() {
        let number = PhoneNumber::parse_e164(" +254 711-000-001 ").expect("valid");
        assert_eq!(number.as_str(), "+254711000001");
    }

    #[test]
    fn parse_e164_refuses_the_same_bad_input_as_parse() {
        assert_eq!(PhoneNumber::parse_e164(""), Err(PhoneError::Empty));
        assert_eq!(
            PhoneNumber::parse_e164("+254 7II 000 001"),
            Err(PhoneError::InvalidCharacter { found: 'I' })
        );
        assert!(matches!(
            PhoneNumber::parse_e164("+25471100"),
            Err(PhoneError::Invalid {
                reason: InvalidReason::TooShort,
                ..
            })
        ));
    }

    #[test]
    fn serializes_as_a_plain_e164_string() {
        let number = PhoneNumber::parse("0711 000 001", ke()).expect("valid");
        let json = serde_json::to_string(&number).expect("serializes");
        assert_eq!(json, "\"+254711000001\"");
    }

    #[test]
    fn deserializing_validates_and_normalises() {
        let number: PhoneNumber =
            serde_json::from_str("\"+254 711 000 001\"").expect("valid number");
        assert_eq!(number.as_str(), "+254711000001");

        let round: PhoneNumber =
            serde_json::from_str(&serde_json::to_string(&number).expect("serializes"))
                .expect("round trip");
        assert_eq!(round, number);
    }

    #[test]
    fn deserializing_refuses_bad_numbers_with_the_reason() {
        let cases = [
            ("\"0711000001\"", "must be in international form"),
            ("\"+25471100\"", "too short"),
            ("\"hello\"", "may contain only digits"),
            ("\"\"", "must not be empty"),
            ("254711000001", "invalid type"),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<PhoneNumber>(json).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{json}: {err} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn error_messages_read_as_plain_words() {
        let cases = [
            (PhoneError::Empty, "a phone number must not be empty"),
            (
                PhoneError::InvalidCharacter { found: 'x' },
                "a phone number may contain only digits, spaces, dashes, parentheses and a leading +, found 'x'",
            ),
            (
                PhoneError::MisplacedPlus,
                "a + may only appear at the start of a phone number",
            ),
            (
                PhoneError::TooManyCharacters { got: 50, max: 40 },
                "a phone number may be at most 40 characters long, got 50",
            ),
            (
                PhoneError::Unreadable {
                    input: "1".to_owned(),
                    reason: "it does not look like a phone number",
                },
                "1 could not be read as a phone number: it does not look like a phone number",
            ),
            (
                PhoneError::Invalid {
                    number: "+254711".to_owned(),
                    region: "KE".to_owned(),
                    reason: InvalidReason::NotValid,
                },
                "+254711 is not a valid phone number for KE: not a valid number",
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(err.to_string(), expected);
        }
    }

    /// A small deterministic generator so the sweep below needs no extra crate.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn no_input_made_of_allowed_characters_panics() {
        const ALPHABET: &[u8] = b"0123456789 +-()0000111";
        let regions = [
            ke(),
            us(),
            "GB".parse().expect("GB"),
            "IT".parse().expect("IT"),
        ];
        let mut rng = Lcg(42);
        for round in 0..2_000 {
            let len = (rng.next() % 24) as usize;
            let mut input = String::new();
            for _ in 0..len {
                let pick = (rng.next() as usize) % ALPHABET.len();
                input.push(char::from(ALPHABET[pick]));
            }
            if round % 2 == 0 {
                input.insert(0, '+');
            }
            let region = regions[round % regions.len()];
            if let Ok(number) = PhoneNumber::parse(&input, region) {
                assert!(number.as_str().starts_with('+'), "{input:?}");
                assert!(number.country_code() > 0, "{input:?}");
                let again = PhoneNumber::parse_e164(number.as_str()).expect("E.164 re-parses");
                assert_eq!(again, number, "{input:?}");
            }
            let _ = PhoneNumber::parse_e164(&input);
        }
    }
}
