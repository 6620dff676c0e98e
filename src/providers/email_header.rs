//! The `Subject` header of tuma's emails, encoded so no line of it is long.
//!
//! lettre folds a header only between words and encodes only words that are
//! not ASCII: a long unbroken ASCII word (a URL, a reference number) goes out
//! on one line, and a subject of 1,200 such characters makes a header line
//! that RFC 5322 forbids (998 octets at most, 78 recommended) and servers
//! refuse. A subject with such a word is written instead as RFC 2047
//! encoded-words (UTF-8, base64), one per folded line, every line at most
//! 78 octets; a reader shows the subject unchanged.

use base64::Engine;
use lettre::message::header::{Header, HeaderName, HeaderValue, Subject};

/// Longest word lettre is left to write as it is: with `Subject: ` before
/// it, its line stays within 78 octets.
const LONGEST_PLAIN_WORD: usize = 78 - "Subject: ".len();

/// Bytes of text per encoded-word: 39 bytes are 52 base64 characters, so
/// `=?utf-8?b?…?=` is 64 octets, and with `Subject: ` (or the folding space)
/// before it a line is at most 73 octets, within the 75 of RFC 2047 and the
/// 78 of RFC 5322.
const BYTES_PER_WORD: usize = 39;

/// The subject header; see the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedSubject(String);

impl FoldedSubject {
    pub fn new(subject: &str) -> FoldedSubject {
        FoldedSubject(subject.to_owned())
    }
}

impl Header for FoldedSubject {
    fn name() -> HeaderName {
        Subject::name()
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(FoldedSubject(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        let text = &self.0;
        let fits = text
            .split([' ', '\t'])
            .all(|word| word.len() <= LONGEST_PLAIN_WORD)
            && !text.contains(['\r', '\n']);
        if fits {
            return Subject::from(text.clone()).display();
        }
        HeaderValue::dangerous_new_pre_encoded(Self::name(), text.clone(), encoded_words(text))
    }
}

/// `text` as base64 encoded-words of at most [`BYTES_PER_WORD`] bytes each
/// (split between characters, never inside one), joined by CRLF and a space.
fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (at, c) in text.char_indices() {
        if at + c.len_utf8() - start > BYTES_PER_WORD {
            words.push(&text[start..end]);
            start = at;
        }
        end = at + c.len_utf8();
    }
    if start < text.len() || words.is_empty() {
        words.push(&text[start..]);
    }
    words
        .iter()
        .map(|word| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(word)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(encoded: &str) -> String {
        let bytes: Vec<u8> = encoded
            .split("\r\n ")
            .flat_map(|word| {
                let inner = word
                    .strip_prefix("=?utf-8?b?")
                    .and_then(|w| w.strip_suffix("?="))
                    .expect("an encoded-word");
                base64::engine::general_purpose::STANDARD
                    .decode(inner)
                    .expect("base64")
            })
            .collect();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn a_long_word_of_multibyte_characters_is_split_between_characters() {
        let subject = "ñ".repeat(100) + &"€".repeat(50);
        let encoded = encoded_words(&subject);
        for line in encoded.split("\r\n") {
            assert!(line.len() + "Subject: ".len() <= 78, "{line}");
        }
        assert_eq!(decode(&encoded), subject);
    }

    #[test]
    fn a_subject_of_ordinary_words_is_left_to_lettre() {
        let value = FoldedSubject::new("Your MtaaDAO statement").display();
        assert_eq!(
            value,
            Subject::from("Your MtaaDAO statement".to_owned()).display()
        );
    }
}
