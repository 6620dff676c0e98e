//! Provider answers are untrusted text. Whatever a provider says (an error
//! message, a quoted body, a message id, a status word) passes through here
//! before it is stored, logged or returned: the OTP code and the message text
//! the provider was sent are replaced, control and invisible formatting
//! characters are dropped, and the length is capped.
//!
//! A leaf helper: it knows nothing of providers, the database or logging.

use super::otp::{OtpCode, REDACTED};

/// The longest provider text (error message, quoted body) kept, in characters.
pub const MAX_TEXT_CHARS: usize = 500;

/// The longest provider message id kept, in characters (ids seen are 34 to
/// about 40).
pub const MAX_ID_CHARS: usize = 128;

/// The longest provider status word kept, in characters.
pub const MAX_STATUS_CHARS: usize = 64;

/// What replaces the message text where a provider echoes it.
pub const MESSAGE_TEXT: &str = "[message text]";

/// A message text shorter than this is not searched for: redacting a short
/// word such as "OK" would mangle the provider's own words. The code is
/// always searched for.
const MIN_TEXT_CHARS: usize = 8;

/// What must never come back out of a provider's answer.
#[derive(Clone, Default)]
pub struct Secrets {
    /// The OTP code's digits.
    code: Option<String>,
    /// The message texts, in the forms a provider may echo them (as sent, JSON
    /// escaped, form encoded), longest first.
    texts: Vec<String>,
    /// The code is not known (it was wiped) but the answer may carry it: mask
    /// every free-standing run of 4 to 10 digits.
    any_code: bool,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("code", &self.code.as_ref().map(|_| REDACTED))
            .field("texts", &self.texts.len())
            .field("any_code", &self.any_code)
            .finish()
    }
}

impl Secrets {
    /// Nothing known to hide: only control characters and length are handled.
    pub fn none() -> Secrets {
        Secrets::default()
    }

    /// The code (when an OTP) and the texts of the message sent.
    pub fn new<'a>(code: Option<&OtpCode>, texts: impl IntoIterator<Item = &'a str>) -> Secrets {
        let mut forms = Vec::new();
        for text in texts {
            let plain = strip_controls(text).trim().to_owned();
            let text = text.trim();
            if plain.chars().count() < MIN_TEXT_CHARS {
                continue;
            }
            let json = serde_json::to_string(text).unwrap_or_default();
            let json = json
                .strip_prefix('"')
                .and_then(|j| j.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned();
            let form: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
            for form in [plain, text.to_owned(), json, form] {
                if !form.is_empty() && !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Secrets {
            code: code.map(|c| c.expose().to_owned()),
            texts: forms,
            any_code: false,
        }
    }

    /// An answer about a message whose code is no longer known (a later
    /// fetch): every free-standing run of 4 to 10 digits is masked.
    pub fn unknown_code() -> Secrets {
        Secrets {
            any_code: true,
            ..Secrets::default()
        }
    }
}

/// Provider text made safe to store, log and show: control and invisible
/// formatting characters dropped (line breaks and tabs become spaces),
/// the message text and every occurrence of the code replaced, cut to
/// [`MAX_TEXT_CHARS`].
pub fn clean(text: &str, secrets: &Secrets) -> String {
    clean_to(text, secrets, MAX_TEXT_CHARS)
}

/// [`clean`] with another length cap (status words, error codes).
pub fn clean_to(text: &str, secrets: &Secrets, max_chars: usize) -> String {
    truncate(redact(text, secrets, true).trim(), max_chars)
}

/// A provider's message id made safe: like [`clean`], but the code is
/// replaced only where it stands alone (not joined to a letter or digit), so
/// an id whose hex digits happen to contain it keeps matching its receipts;
/// cut to [`MAX_ID_CHARS`].
pub fn clean_id(text: &str, secrets: &Secrets) -> String {
    truncate(redact(text, secrets, false).trim(), MAX_ID_CHARS)
}

/// A whole answer made safe before an adapter reads it, so nothing it logs or
/// quotes can carry a secret: as [`clean_id`] (ids inside stay intact) and
/// without a length cap. Line breaks become spaces, which leaves JSON
/// readable.
pub fn scrub(text: &str, secrets: &Secrets) -> String {
    redact(text, secrets, false)
}

/// Drops controls, then replaces the message text, then the code: everywhere
/// when `strict`, else only where it stands alone (and an unknown code's
/// digit runs only when `strict`).
fn redact(text: &str, secrets: &Secrets, strict: bool) -> String {
    let mut out = strip_controls(text);
    for form in &secrets.texts {
        if out.contains(form.as_str()) {
            out = out.replace(form.as_str(), MESSAGE_TEXT);
        }
    }
    if let Some(code) = secrets.code.as_deref().filter(|c| !c.is_empty()) {
        out = if strict {
            out.replace(code, REDACTED)
        } else {
            replace_standalone(&out, code)
        };
    }
    if secrets.any_code && strict {
        out = mask_digit_runs(&out);
    }
    out
}

/// Replaces `needle` where neither neighbour is an ASCII letter or digit.
fn replace_standalone(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(at) = rest.find(needle) {
        let before = rest[..at].chars().next_back().or(previous);
        let after = rest[at + needle.len()..].chars().next();
        let joined = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..at]);
        if joined(before) || joined(after) {
            out.push_str(needle);
        } else {
            out.push_str(REDACTED);
        }
        previous = needle.chars().next_back();
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

/// Drops control characters and invisible formatting characters (zero-width
/// spaces, bidirectional overrides, byte-order marks); whitespace controls
/// become one space.
fn strip_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\n' | '\r' | '\t') {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else if !(c.is_control() || is_invisible_format(c)) {
            out.push(c);
        }
    }
    out
}

fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}')
}

/// Masks every run of 4 to 10 ASCII digits not joined to a letter or another
/// digit (an OTP code's shape).
fn mask_digit_runs(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let len = i - start;
            let joined = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric());
            let before = start.checked_sub(1).and_then(|b| chars.get(b));
            if (4..=10).contains(&len) && !joined(before) && !joined(chars.get(i)) {
                out.push_str(REDACTED);
            } else {
                out.extend(&chars[start..i]);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// At most `max_chars` characters, marked with `…` when cut.
fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> OtpCode {
        OtpCode::parse("482913").expect("valid code")
    }

    const TEXT: &str = "Your Mtaa DAO code is 482913. It expires in 5 minutes.";

    #[test]
    fn the_code_is_replaced_wherever_it_appears() {
        let s = Secrets::new(Some(&code()), []);
        assert_eq!(
            clean("blocked: code 482913 (again 482913)", &s),
            "blocked: code ****** (again ******)"
        );
    }

    #[test]
    fn an_echoed_message_text_is_replaced_as_sent_json_escaped_and_form_encoded() {
        let text = "Habari \"Amina\"\nyour code is 482913\n";
        let s = Secrets::new(Some(&code()), [text]);
        let json = serde_json::to_string(text).unwrap();
        let form: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
        for echoed in [format!("body: {json}"), format!("message={form}&to=%2B254")] {
            let cleaned = clean(&echoed, &s);
            assert!(cleaned.contains(MESSAGE_TEXT), "{cleaned}");
            assert!(!cleaned.contains("482913"), "{cleaned}");
            assert!(!cleaned.contains("Amina"), "{cleaned}");
        }
        let cleaned = clean(&format!("[{TEXT}]"), &Secrets::new(Some(&code()), [TEXT]));
        assert_eq!(cleaned, "[[message text]]");
    }

    #[test]
    fn control_and_invisible_characters_are_dropped_before_the_code_is_searched() {
        let s = Secrets::new(Some(&code()), []);
        assert_eq!(clean("48\u{0}29\u{200B}13", &s), "******");
        assert_eq!(clean("a\r\nb\tc\u{1b}[31m\u{202E}d", &s), "a b c[31md");
    }

    #[test]
    fn long_text_is_cut_to_the_cap_and_marked() {
        let long = "x".repeat(200_000);
        let cleaned = clean(&long, &Secrets::none());
        assert_eq!(cleaned.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(cleaned.ends_with('…'));
        assert_eq!(clean_to("SM123", &Secrets::none(), MAX_ID_CHARS), "SM123");
        assert_eq!(
            clean_id(&long, &Secrets::none()).chars().count(),
            MAX_ID_CHARS + 1
        );
    }

    #[test]
    fn an_id_keeps_the_code_s_digits_joined_to_its_own_but_not_a_free_standing_code() {
        let s = Secrets::new(Some(&code()), []);
        assert_eq!(clean_id("SMa482913f01", &s), "SMa482913f01");
        assert_eq!(clean_id("id 482913", &s), "id ******");
        assert_eq!(
            scrub("{\"sid\":\"SM0482913\",\"m\":\"482913\"}", &s),
            "{\"sid\":\"SM0482913\",\"m\":\"******\"}"
        );
        assert_eq!(clean("SM0482913", &s), "SM0******", "error text is strict");
    }

    #[test]
    fn short_message_texts_are_not_searched_but_the_code_always_is() {
        let s = Secrets::new(Some(&OtpCode::parse("1234").unwrap()), ["OK 1234"]);
        assert_eq!(clean("OK: sent 1234", &s), "OK: sent ******");
    }

    #[test]
    fn an_unknown_code_masks_free_standing_runs_of_four_to_ten_digits_only() {
        let s = Secrets::unknown_code();
        assert_eq!(
            clean("code 482913, +254711000001, SM3f1c2a, 21211 x 123", &s),
            "code ******, +254711000001, SM3f1c2a, ****** x 123"
        );
    }

    #[test]
    fn debug_never_shows_the_code() {
        let s = Secrets::new(Some(&code()), [TEXT]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("482913"), "{shown}");
    }
}
