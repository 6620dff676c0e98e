//! Email addresses that tuma can send a notification to.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most characters an email address may have (RFC 5321 path limit).
const MAX_ADDRESS_LEN: usize = 254;

/// The most characters the part before `@` may have (RFC 5321).
const MAX_LOCAL_PART_LEN: usize = 64;

/// A checked email address, trimmed and in lower case.
///
/// The part before `@` is lower-cased too: RFC 5321 lets a server treat it as
/// case-sensitive, but mail systems in use do not, and one mailbox must have
/// one spelling, or the per-recipient OTP limit (which counts recipients by
/// their stored text) is bypassed by writing `Victim@` as `VICTIM@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);

/// Why an email address was refused.
///
/// The messages never repeat the address itself, so they are safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// The input was empty or only whitespace.
    #[error("an email address must not be empty")]
    Empty,
    /// The input was longer than an email address may be.
    #[error("an email address may be at most {max} characters long, got {got}")]
    TooLong {
        /// How many characters the trimmed input had.
        got: usize,
        /// The most characters allowed.
        max: usize,
    },
    /// The input had a space, tab or other whitespace inside it.
    #[error("an email address must not contain spaces or other whitespace")]
    ContainsWhitespace,
    /// The input had an invisible control character inside it.
    #[error("an email address must not contain control characters")]
    ContainsControlCharacter,
    /// The input had no `@`.
    #[error("an email address must contain an @")]
    MissingAt,
    /// Nothing came before the `@`.
    #[error("an email address must have a name before the @")]
    EmptyLocalPart,
    /// The part before the `@` was too long.
    #[error(
        "the part of an email address before the @ may be at most {max} characters long, got {got}"
    )]
    LocalPartTooLong {
        /// How many characters the part before `@` had.
        got: usize,
        /// The most characters allowed.
        max: usize,
    },
    /// Nothing came after the `@`.
    #[error("an email address must have a domain after the @")]
    EmptyDomain,
    /// The domain had no dot, such as `localhost`.
    #[error("the domain of an email address must contain a dot, such as example.com")]
    DomainWithoutDot,
    /// The domain started or ended with a dot, or had two dots in a row.
    #[error(
        "the domain of an email address must not start or end with a dot or have two dots in a row"
    )]
    EmptyDomainLabel,
    /// The part before the `@` used characters that are not allowed there.
    #[error("the part of an email address before the @ has characters that are not allowed there")]
    InvalidLocalPart,
    /// The domain used characters that are not allowed in a domain name.
    #[error("the domain of an email address is not a valid domain name")]
    InvalidDomain,
}

impl EmailAddress {
    /// Checks and normalises an email address: trims surrounding whitespace
    /// and lower-cases it.
    pub fn parse(input: &str) -> Result<EmailAddress, EmailError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        let got = trimmed.chars().count();
        if got > MAX_ADDRESS_LEN {
            return Err(EmailError::TooLong {
                got,
                max: MAX_ADDRESS_LEN,
            });
        }
        if trimmed.chars().any(char::is_whitespace) {
            return Err(EmailError::ContainsWhitespace);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(EmailError::ContainsControlCharacter);
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or(EmailError::MissingAt)?;
        if local.is_empty() {
            return Err(EmailError::EmptyLocalPart);
        }
        let local_len = local.chars().count();
        if local_len > MAX_LOCAL_PART_LEN {
            return Err(EmailError::LocalPartTooLong {
                got: local_len,
                max: MAX_LOCAL_PART_LEN,
            });
        }
        if domain.is_empty() {
            return Err(EmailError::EmptyDomain);
        }
        if !domain.contains('.') {
            return Err(EmailError::DomainWithoutDot);
        }
        if domain.split('.').any(str::is_empty) {
            return Err(EmailError::EmptyDomainLabel);
        }
        if !domain.split('.').all(is_host_label) {
            return Err(EmailError::InvalidDomain);
        }
        let (local, domain) = (local.to_lowercase(), domain.to_lowercase());
        lettre::Address::new(&local, &domain).map_err(|err| match err {
            lettre::address::AddressError::InvalidUser => EmailError::InvalidLocalPart,
            _ => EmailError::InvalidDomain,
        })?;
        Ok(EmailAddress(format!("{local}@{domain}")))
    }

    /// The address as text, such as `amina@example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The mailbox the address reaches, for counting: without a `+tag`
    /// (`amina+1@example.com` is `amina@example.com`), and for Gmail without
    /// dots in the local part and with `googlemail.com` read as `gmail.com`
    /// (`a.mina@googlemail.com` is `amina@gmail.com`). Mail still goes to the
    /// address as given. The migration `*_otp_quota_key.sql` does the same
    /// in SQL for rows written before.
    pub fn mailbox(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or((self.0.as_str(), ""));
        let local = local.split_once('+').map_or(local, |(base, _)| base);
        match domain {
            "gmail.com" | "googlemail.com" => format!("{}@gmail.com", local.replace('.', "")),
            _ => format!("{local}@{domain}"),
        }
    }
}

/// Whether `label` may be one dot-separated part of a host name: ASCII
/// letters, digits and inner hyphens (other scripts are left to the IDNA
/// check), at most 63 characters.
fn is_host_label(label: &str) -> bool {
    label.chars().count() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EmailAddress::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mailbox_is_the_address_without_its_tag_and_for_gmail_without_dots() {
        let cases = [
            ("amina+1@example.com", "amina@example.com"),
            ("Amina+shop+2@Example.com", "amina@example.com"),
            ("a.mina@example.com", "a.mina@example.com"),
            ("a.mina+x@gmail.com", "amina@gmail.com"),
            ("A.Mina@googlemail.com", "amina@gmail.com"),
            ("amina@example.com", "amina@example.com"),
        ];
        for (input, mailbox) in cases {
            let address = super::EmailAddress::parse(input).expect(input);
            assert_eq!(address.mailbox(), mailbox, "{input}");
        }
    }

    use super::*;

    #[test]
    fn plain_addresses_are_accepted_as_given() {
        for input in [
            "amina@example.com",
            "amina.wanjiru@mail.example.co.ke",
            "amina+otp@example.com",
            "a@b.co",
            "user_name-1@sub-domain.example.org",
            "o'neil@example.ie",
        ] {
            let address = EmailAddress::parse(input).expect(input);
            assert_eq!(address.as_str(), input);
        }
    }

    #[test]
    fn internationalised_domains_are_accepted_and_lowercased() {
        let address = EmailAddress::parse("amina@BÜCHER.example").expect("valid");
        assert_eq!(address.as_str(), "amina@bücher.example");
    }

    #[test]
    fn a_label_longer_than_63_characters_is_refused() {
        let input = format!("amina@{}.com", "a".repeat(64));
        assert_eq!(EmailAddress::parse(&input), Err(EmailError::InvalidDomain));
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let address = EmailAddress::parse("  amina@example.com\n").expect("valid");
        assert_eq!(address.as_str(), "amina@example.com");
    }

    #[test]
    fn the_whole_address_is_lowercased_so_one_mailbox_has_one_spelling() {
        for input in [
            "Amina.W@Example.CO.KE",
            "AMINA.W@example.co.ke",
            "amina.w@EXAMPLE.co.ke",
        ] {
            let address = EmailAddress::parse(input).expect("valid");
            assert_eq!(address.as_str(), "amina.w@example.co.ke", "{input}");
        }
        let address = EmailAddress::parse("ÅSA@Bücher.example").expect("valid");
        assert_eq!(address.as_str(), "åsa@bücher.example");
    }

    #[test]
    fn display_prints_the_address() {
        let address = EmailAddress::parse("amina@Example.com").expect("valid");
        assert_eq!(address.to_string(), "amina@example.com");
    }

    #[test]
    fn an_address_of_exactly_254_characters_is_accepted() {
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(57)
        );
        let input = format!("{}@{domain}", "d".repeat(64));
        assert_eq!(input.len(), 254);
        assert!(EmailAddress::parse(&input).is_ok(), "{input}");
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        let too_long = format!("{}@example.com", "a".repeat(243));
        let long_local = format!("{}@example.com", "a".repeat(65));
        let cases: Vec<(&str, EmailError)> = vec![
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            (&too_long, EmailError::TooLong { got: 255, max: 254 }),
            ("amina @example.com", EmailError::ContainsWhitespace),
            ("amina@exa mple.com", EmailError::ContainsWhitespace),
            ("amina\t@example.com", EmailError::ContainsWhitespace),
            ("amina@example.com\u{a0}x", EmailError::ContainsWhitespace),
            (
                "amina\u{0}@example.com",
                EmailError::ContainsControlCharacter,
            ),
            (
                "amina\u{7f}@example.com",
                EmailError::ContainsControlCharacter,
            ),
            ("amina.example.com", EmailError::MissingAt),
            ("@example.com", EmailError::EmptyLocalPart),
            (
                &long_local,
                EmailError::LocalPartTooLong { got: 65, max: 64 },
            ),
            ("amina@", EmailError::EmptyDomain),
            ("amina@localhost", EmailError::DomainWithoutDot),
            ("amina@.example.com", EmailError::EmptyDomainLabel),
            ("amina@example.com.", EmailError::EmptyDomainLabel),
            ("amina@example..com", EmailError::EmptyDomainLabel),
            ("ami..na@example.com", EmailError::InvalidLocalPart),
            (".amina@example.com", EmailError::InvalidLocalPart),
            ("ami(na)@example.com", EmailError::InvalidLocalPart),
            ("amina@exa@mple.com", EmailError::InvalidLocalPart),
            ("amina@exam_ple.com", EmailError::InvalidDomain),
            ("amina@-example.com", EmailError::InvalidDomain),
            ("amina@example!.com", EmailError::InvalidDomain),
            ("amina@example-.com", EmailError::InvalidDomain),
            ("amina@[192.168.0.1]", EmailError::InvalidDomain),
            (
                "amina@ex\u{2603}\u{fe0f}\u{200d}.com",
                EmailError::InvalidDomain,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(EmailAddress::parse(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn error_messages_name_the_reason_without_the_address() {
        let cases = [
            ("", "an email address must not be empty"),
            ("amina.example.com", "an email address must contain an @"),
            (
                "@example.com",
                "an email address must have a name before the @",
            ),
            ("amina@", "an email address must have a domain after the @"),
            (
                "amina@localhost",
                "the domain of an email address must contain a dot, such as example.com",
            ),
            (
                "amina@example..com",
                "the domain of an email address must not start or end with a dot or have two dots in a row",
            ),
            (
                "amina @example.com",
                "an email address must not contain spaces or other whitespace",
            ),
        ];
        for (input, expected) in cases {
            let message = EmailAddress::parse(input).unwrap_err().to_string();
            assert_eq!(message, expected, "{input:?}");
            if !input.is_empty() {
                assert!(!message.contains(input), "{message} repeats the address");
            }
        }
    }

    #[test]
    fn serializes_as_a_plain_string() {
        let address = EmailAddress::parse("amina@Example.com").expect("valid");
        let json = serde_json::to_string(&address).expect("serializes");
        assert_eq!(json, "\"amina@example.com\"");
    }

    #[test]
    fn deserializing_validates_and_normalises() {
        let address: EmailAddress = serde_json::from_str("\" amina@EXAMPLE.com \"").expect("valid");
        assert_eq!(address.as_str(), "amina@example.com");
    }

    #[test]
    fn deserializing_refuses_bad_addresses_with_the_reason() {
        let cases = [
            ("\"amina\"", "must contain an @"),
            ("\"amina@localhost\"", "must contain a dot"),
            ("\"\"", "must not be empty"),
            ("42", "invalid type"),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<EmailAddress>(json).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{json}: {err} lacks {expected:?}"
            );
        }
    }
}
