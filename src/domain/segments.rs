//! Counting how many SMS segments a message takes (GSM 03.38 / 3GPP TS 23.038).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Septets in a single GSM-7 message.
const GSM7_SINGLE: u32 = 160;
/// Septets in each part of a multi-part GSM-7 message.
const GSM7_PART: u32 = 153;
/// UTF-16 code units in a single UCS-2 message.
const UCS2_SINGLE: u32 = 70;
/// UTF-16 code units in each part of a multi-part UCS-2 message.
const UCS2_PART: u32 = 67;

/// How an SMS is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsEncoding {
    /// The GSM 7-bit default alphabet with its extension table.
    Gsm7,
    /// UCS-2 (UTF-16), used when any character is outside GSM-7.
    Ucs2,
}

impl SmsEncoding {
    /// The lower-case name, `"gsm7"` or `"ucs2"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SmsEncoding::Gsm7 => "gsm7",
            SmsEncoding::Ucs2 => "ucs2",
        }
    }
}

impl fmt::Display for SmsEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a message text is encoded and how many segments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SegmentInfo {
    /// The encoding the text needs.
    pub encoding: SmsEncoding,
    /// Septets for GSM-7 (extension characters count 2), or UTF-16 code
    /// units for UCS-2 (characters beyond the Basic Multilingual Plane, such
    /// as emoji, count 2).
    pub units: u32,
    /// How many SMS segments the text is sent as; at least 1.
    pub segments: u32,
}

/// Septets needed for `c` in GSM-7: 1 for the default alphabet, 2 for the
/// extension table (escape + character), `None` when GSM-7 cannot carry it.
fn gsm7_septets(c: char) -> Option<u32> {
    match c {
        // Default alphabet, 0x00-0x1F (0x1B is the escape, not a character).
        '@' | '£' | '$' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | '\n' | 'Ø' | 'ø' | '\r'
        | 'Å' | 'å' | 'Δ' | '_' | 'Φ' | 'Γ' | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ'
        | 'æ' | 'ß' | 'É' => Some(1),
        // Default alphabet, 0x20-0x3F.
        ' '
        | '!'
        | '"'
        | '#'
        | '¤'
        | '%'
        | '&'
        | '\''
        | '('
        | ')'
        | '*'
        | '+'
        | ','
        | '-'
        | '.'
        | '/'
        | '0'..='9'
        | ':'
        | ';'
        | '<'
        | '='
        | '>'
        | '?' => Some(1),
        // Default alphabet, 0x40-0x7F.
        '¡'
        | 'A'..='Z'
        | 'Ä'
        | 'Ö'
        | 'Ñ'
        | 'Ü'
        | '§'
        | '¿'
        | 'a'..='z'
        | 'ä'
        | 'ö'
        | 'ñ'
        | 'ü'
        | 'à' => Some(1),
        // Extension table, sent as escape + character.
        '\u{0C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' => Some(2),
        _ => None,
    }
}

/// Counts how many parts are needed when each item (a character's width in
/// units) must sit whole in one part of `capacity` units.
fn count_parts(widths: impl Iterator<Item = u32>, capacity: u32) -> u32 {
    let mut parts: u32 = 1;
    let mut used: u32 = 0;
    for width in widths {
        if used.saturating_add(width) > capacity {
            parts = parts.saturating_add(1);
            used = 0;
        }
        used = used.saturating_add(width);
    }
    parts
}

/// Works out the encoding, length in units and number of SMS segments for
/// `text`.
///
/// Text made only of GSM 03.38 characters is GSM-7: up to 160 septets is one
/// segment, longer text is split into parts of 153 septets. Anything else is
/// UCS-2: up to 70 code units is one segment, longer text is split into parts
/// of 67. A character is never split across two parts (an escape pair or an
/// emoji moves whole to the next part, as phones do), so a long text can take
/// one more segment than `units / 153` (or `/ 67`) rounded up. An empty text
/// is one segment of 0 units.
pub fn count_segments(text: &str) -> SegmentInfo {
    let gsm: Option<Vec<u32>> = text.chars().map(gsm7_septets).collect();
    let (encoding, widths, single, part) = match gsm {
        Some(widths) => (SmsEncoding::Gsm7, widths, GSM7_SINGLE, GSM7_PART),
        None => (
            SmsEncoding::Ucs2,
            text.chars()
                .map(|c| if u32::from(c) > 0xFFFF { 2 } else { 1 })
                .collect(),
            UCS2_SINGLE,
            UCS2_PART,
        ),
    };
    let units = widths
        .iter()
        .fold(0u32, |sum, width| sum.saturating_add(*width));
    let segments = if units <= single {
        1
    } else {
        count_parts(widths.into_iter(), part)
    };
    SegmentInfo {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole GSM 03.38 default alphabet, without the escape (0x1B).
    const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                              ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

    /// The GSM 03.38 extension table characters.
    const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

    fn info(encoding: SmsEncoding, units: u32, segments: u32) -> SegmentInfo {
        SegmentInfo {
            encoding,
            units,
            segments,
        }
    }

    #[test]
    fn the_default_alphabet_has_127_characters_of_one_septet_each() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        for c in GSM7_BASIC.chars() {
            assert_eq!(gsm7_septets(c), Some(1), "{c:?}");
        }
        assert_eq!(count_segments(GSM7_BASIC), info(SmsEncoding::Gsm7, 127, 1));
    }

    #[test]
    fn extension_characters_take_two_septets_each() {
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
        for c in GSM7_EXTENSION.chars() {
            assert_eq!(gsm7_septets(c), Some(2), "{c:?}");
        }
        assert_eq!(
            count_segments(GSM7_EXTENSION),
            info(SmsEncoding::Gsm7, 20, 1)
        );
    }

    #[test]
    fn characters_outside_gsm7_need_ucs2() {
        for c in [
            '’', '‘', '“', '”', '`', '\u{1B}', '\t', '\u{0B}', 'á', 'í', 'ó', 'ú', 'ç', 'ê', 'ş',
            'ğ', 'ı', '₹', 'ア', '中', '😀', '\u{A0}', '–', '—', '…', 'ω', '\u{2126}', '＠',
        ] {
            assert_eq!(gsm7_septets(c), None, "{c:?}");
            assert_eq!(
                count_segments(&c.to_string()).encoding,
                SmsEncoding::Ucs2,
                "{c:?}"
            );
        }
    }

    #[test]
    fn an_empty_text_is_one_segment_of_no_units() {
        assert_eq!(count_segments(""), info(SmsEncoding::Gsm7, 0, 1));
    }

    #[test]
    fn gsm7_lengths_around_segment_limits() {
        let cases = [
            (1, 1),
            (153, 1),
            (160, 1),
            (161, 2),
            (306, 2),
            (307, 3),
            (459, 3),
            (460, 4),
        ];
        for (len, segments) in cases {
            let text = "a".repeat(len);
            assert_eq!(
                count_segments(&text),
                info(SmsEncoding::Gsm7, len as u32, segments),
                "{len} characters"
            );
        }
    }

    #[test]
    fn eighty_braces_fill_exactly_one_segment() {
        let text = "{".repeat(80);
        assert_eq!(count_segments(&text), info(SmsEncoding::Gsm7, 160, 1));
    }

    #[test]
    fn eighty_one_braces_take_two_segments() {
        let text = "{".repeat(81);
        assert_eq!(count_segments(&text), info(SmsEncoding::Gsm7, 162, 2));
    }

    #[test]
    fn an_escape_pair_is_never_split_across_segments() {
        // 152 + 2 + 152 = 306 septets, but the brace cannot straddle the end
        // of the first part, so it starts the second and the last 'a' spills
        // into a third.
        let text = format!("{}{{{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(count_segments(&text), info(SmsEncoding::Gsm7, 306, 3));
    }

    #[test]
    fn one_curly_quote_turns_a_100_character_text_into_two_ucs2_segments() {
        let text = format!("{}’", "a".repeat(99));
        assert_eq!(text.chars().count(), 100);
        assert_eq!(count_segments(&text), info(SmsEncoding::Ucs2, 100, 2));
    }

    #[test]
    fn ucs2_lengths_around_segment_limits() {
        let cases = [
            (1, 1),
            (67, 1),
            (70, 1),
            (71, 2),
            (134, 2),
            (135, 3),
            (201, 3),
            (202, 4),
        ];
        for (len, segments) in cases {
            let text = "’".repeat(len);
            assert_eq!(
                count_segments(&text),
                info(SmsEncoding::Ucs2, len as u32, segments),
                "{len} characters"
            );
        }
    }

    #[test]
    fn an_emoji_counts_two_units() {
        assert_eq!(count_segments("😀"), info(SmsEncoding::Ucs2, 2, 1));
        assert_eq!(count_segments("Hi 😀"), info(SmsEncoding::Ucs2, 5, 1));
        let text = "😀".repeat(35);
        assert_eq!(count_segments(&text), info(SmsEncoding::Ucs2, 70, 1));
        let text = "😀".repeat(36);
        assert_eq!(count_segments(&text), info(SmsEncoding::Ucs2, 72, 2));
    }

    #[test]
    fn an_emoji_is_never_split_across_segments() {
        // 66 + 2 + 66 = 134 units, but the emoji moves whole to the second
        // part and the last quote spills into a third.
        let text = format!("{}😀{}", "’".repeat(66), "’".repeat(66));
        assert_eq!(count_segments(&text), info(SmsEncoding::Ucs2, 134, 3));
    }

    #[test]
    fn a_typical_otp_message_is_one_gsm7_segment() {
        assert_eq!(
            count_segments("Your tuma code is 123456"),
            info(SmsEncoding::Gsm7, 24, 1)
        );
    }

    #[test]
    fn swahili_text_is_gsm7() {
        let text = "Nambari yako ya kuthibitisha ni 123456";
        assert_eq!(count_segments(text), info(SmsEncoding::Gsm7, 38, 1));
    }

    #[test]
    fn mixed_texts_get_the_right_encoding() {
        let cases = [
            ("Price: €5 [promo]", SmsEncoding::Gsm7, 20),
            ("Ksh 100 paid @ 10:00\r\n", SmsEncoding::Gsm7, 22),
            ("Karibu! Namba yako ni 4821.", SmsEncoding::Gsm7, 27),
            ("Don’t share this code", SmsEncoding::Ucs2, 21),
            ("“Hello”", SmsEncoding::Ucs2, 7),
            ("Ваш код 1234", SmsEncoding::Ucs2, 12),
        ];
        for (text, encoding, units) in cases {
            let got = count_segments(text);
            assert_eq!(got, info(encoding, units, 1), "{text:?}");
        }
    }

    #[test]
    fn encoding_serializes_and_displays_in_lower_case() {
        assert_eq!(
            serde_json::to_string(&SmsEncoding::Gsm7).expect("serializes"),
            "\"gsm7\""
        );
        assert_eq!(
            serde_json::to_string(&SmsEncoding::Ucs2).expect("serializes"),
            "\"ucs2\""
        );
        assert_eq!(SmsEncoding::Gsm7.to_string(), "gsm7");
        assert_eq!(SmsEncoding::Ucs2.to_string(), "ucs2");
        let back: SmsEncoding = serde_json::from_str("\"ucs2\"").expect("deserializes");
        assert_eq!(back, SmsEncoding::Ucs2);
    }

    #[test]
    fn segment_info_serializes_with_named_fields() {
        let json = serde_json::to_string(&count_segments("hi")).expect("serializes");
        assert_eq!(json, r#"{"encoding":"gsm7","units":2,"segments":1}"#);
    }
}
