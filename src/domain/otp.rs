//! One-time passcodes that tuma delivers, kept out of logs and payloads.
//!
//! An [`OtpCode`] prints as [`REDACTED`] with both `{}` and `{:?}` and has no
//! `Serialize` impl, so it cannot leak through logging or serialization by
//! accident; [`OtpCode::expose`] is the only way to read the digits.

use std::fmt;

/// What an OTP code is shown as wherever it must not be seen.
pub const REDACTED: &str = "******";

/// The fewest digits an OTP code may have.
const MIN_DIGITS: usize = 4;

/// The most digits an OTP code may have.
const MAX_DIGITS: usize = 10;

/// Why an OTP code was refused. The messages never include the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    /// The code had something other than ASCII digits in it.
    #[error("an OTP code must contain digits only")]
    NotDigits,
    /// The code had too few or too many digits.
    #[error("an OTP code must be {MIN_DIGITS} to {MAX_DIGITS} digits, got {got}")]
    WrongLength {
        /// How many digits the code had.
        got: usize,
    },
}

/// A one-time passcode of 4 to 10 ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl OtpCode {
    /// Reads a code of 4 to 10 ASCII digits; surrounding whitespace is
    /// trimmed first.
    pub fn parse(input: &str) -> Result<OtpCode, OtpError> {
        let trimmed = input.trim();
        if !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OtpError::NotDigits);
        }
        let got = trimmed.len();
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&got) {
            return Err(OtpError::WrongLength { got });
        }
        Ok(OtpCode(trimmed.to_owned()))
    }

    /// The digits of the code. Use only where the code must really be sent,
    /// such as when rendering the message for the recipient.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Replaces every occurrence of `code` in `text` with [`REDACTED`], so a
/// rendered message can be logged or stored.
pub fn redact(text: &str, code: &OtpCode) -> String {
    text.replace(code.expose(), REDACTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(digits: &str) -> OtpCode {
        OtpCode::parse(digits).expect("valid code")
    }

    #[test]
    fn codes_of_4_to_10_digits_are_accepted() {
        for input in ["1234", "123456", "0000", "0123456789", "987654321"] {
            assert_eq!(code(input).expose(), input);
        }
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(code(" 123456\n").expose(), "123456");
        assert_eq!(code("\t4321 ").expose(), "4321");
    }

    #[test]
    fn bad_codes_are_refused_with_the_reason() {
        let cases = [
            ("", OtpError::WrongLength { got: 0 }),
            ("   ", OtpError::WrongLength { got: 0 }),
            ("123", OtpError::WrongLength { got: 3 }),
            ("12345678901", OtpError::WrongLength { got: 11 }),
            ("12 34", OtpError::NotDigits),
            ("12a456", OtpError::NotDigits),
            ("-1234", OtpError::NotDigits),
            ("+1234", OtpError::NotDigits),
            ("12.34", OtpError::NotDigits),
            ("١٢٣٤", OtpError::NotDigits),
            ("１２３４", OtpError::NotDigits),
            ("abcd", OtpError::NotDigits),
        ];
        for (input, expected) in cases {
            assert_eq!(OtpCode::parse(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            OtpCode::parse("123").unwrap_err().to_string(),
            "an OTP code must be 4 to 10 digits, got 3"
        );
        assert_eq!(
            OtpCode::parse("12a456").unwrap_err().to_string(),
            "an OTP code must contain digits only"
        );
    }

    #[test]
    fn error_messages_never_contain_the_code() {
        for input in ["987", "98765432101", "9876x", "98 76"] {
            let err = OtpCode::parse(input).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("987"), "{shown} leaks {input:?}");
        }
    }

    #[test]
    fn debug_and_display_hide_the_digits() {
        let otp = code("483920");
        for shown in [
            format!("{otp:?}"),
            format!("{otp}"),
            format!("{otp:#?}"),
            format!("{:?}", Some(&otp)),
            format!("{:?}", vec![otp.clone()]),
        ] {
            assert!(!shown.contains("483920"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(format!("{otp:?}"), "******");
        assert_eq!(otp.to_string(), "******");
    }

    #[test]
    fn a_struct_holding_a_code_does_not_leak_it_through_debug() {
        #[derive(Debug)]
        #[allow(dead_code, reason = "the fields exist only to be printed by Debug")]
        struct Send {
            to: &'static str,
            code: OtpCode,
        }
        let shown = format!(
            "{:?}",
            Send {
                to: "+254711000001",
                code: code("558811"),
            }
        );
        assert!(!shown.contains("558811"), "{shown}");
    }

    #[test]
    fn redact_replaces_every_occurrence_of_the_code() {
        let otp = code("123456");
        let cases = [
            ("Your tuma code is 123456", "Your tuma code is ******"),
            (
                "123456 is your code. Again: 123456.",
                "****** is your code. Again: ******.",
            ),
            ("No code here", "No code here"),
            ("", ""),
            ("Code:123456123456", "Code:************"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text, &otp), expected, "{text:?}");
        }
    }

    /// Tells whether `T` implements `Serialize`: the inherent method is only
    /// there when it does, otherwise the blanket trait method answers.
    struct SerializeProbe<T>(std::marker::PhantomData<T>);

    impl<T: serde::Serialize> SerializeProbe<T> {
        fn is_serialize(&self) -> bool {
            true
        }
    }

    trait NotSerialize {
        fn is_serialize(&self) -> bool {
            false
        }
    }

    impl<T> NotSerialize for SerializeProbe<T> {}

    #[test]
    fn a_code_cannot_be_serialized() {
        let string_probe = SerializeProbe::<String>(std::marker::PhantomData);
        assert!(
            string_probe.is_serialize(),
            "the probe must detect Serialize"
        );
        let code_probe = SerializeProbe::<OtpCode>(std::marker::PhantomData);
        assert!(!code_probe.is_serialize());
    }

    #[test]
    fn redacted_placeholder_is_six_stars() {
        assert_eq!(REDACTED, "******");
    }
}
