//! Vonage's request signature (`sig`), for signed sends and signed
//! delivery receipts ("Signing Messages" in Vonage's developer docs, as its
//! client libraries compute it): every parameter but `sig`, sorted by name,
//! written `&name=value` with `&` and `=` in values replaced by `_`; then
//! with `md5hash` the MD5 of that text followed by the secret, else the HMAC
//! (MD5, SHA-1, SHA-256 or SHA-512) of that text keyed with the secret; as
//! lower-case hex.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::config::SignatureMethod;

/// The text Vonage signs.
fn signed_text(params: &[(String, String)]) -> String {
    // A name sent twice counts once, with its last value.
    let sorted: BTreeMap<&str, &str> = params
        .iter()
        .filter(|(k, _)| k != "sig")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut text = String::new();
    for (name, value) in sorted {
        text.push('&');
        text.push_str(name);
        text.push('=');
        text.push_str(&value.replace(['&', '='], "_"));
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_hex<M: Mac + KeyInit>(secret: &str, text: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <M as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(text.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The `sig` of `params` (any `sig` among them is left out).
pub fn sign(params: &[(String, String)], secret: &str, method: SignatureMethod) -> String {
    let text = signed_text(params);
    match method {
        SignatureMethod::Md5Hash => {
            let mut md5 = md5::Md5::new();
            md5.update(text.as_bytes());
            md5.update(secret.as_bytes());
            hex(&md5.finalize())
        }
        SignatureMethod::Md5 => hmac_hex::<hmac::Hmac<md5::Md5>>(secret, &text),
        SignatureMethod::Sha1 => hmac_hex::<hmac::Hmac<sha1::Sha1>>(secret, &text),
        SignatureMethod::Sha256 => hmac_hex::<hmac::Hmac<sha2::Sha256>>(secret, &text),
        SignatureMethod::Sha512 => hmac_hex::<hmac::Hmac<sha2::Sha512>>(secret, &text),
    }
}

/// Whether `params` carry a `sig` that is theirs, in constant time (Vonage
/// may send it in upper case).
pub fn verify(params: &[(String, String)], secret: &str, method: SignatureMethod) -> bool {
    let Some(given) = params
        .iter()
        .rev()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v)
    else {
        return false;
    };
    let expected = sign(params, secret, method);
    let given = given.trim().to_ascii_lowercase();
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_signed_text_is_sorted_and_cleaned_of_separators() {
        let params = pairs(&[
            ("to", "447700900000"),
            ("text", "a&b=c"),
            ("api_key", "abc123"),
            ("sig", "ignored"),
            ("timestamp", "1700000000"),
        ]);
        assert_eq!(
            signed_text(&params),
            "&api_key=abc123&text=a_b_c&timestamp=1700000000&to=447700900000"
        );
    }

    /// Known answers for "&a=1" with the secret "secret", computed with
    /// Python's hashlib and hmac (as Vonage's Python client signs).
    #[test]
    fn every_method_gives_its_known_answer() {
        let params = pairs(&[("a", "1"), ("sig", "not part of it")]);
        for (method, expected) in [
            (SignatureMethod::Md5Hash, "6d2262b394f77e62f0034b681bf96b33"),
            (SignatureMethod::Md5, "8e92c65ea2dfeef6605b97bedd49cb5e"),
            (
                SignatureMethod::Sha1,
                "52c10ae24dfb636c132c8fce795baeef055521bd",
            ),
            (
                SignatureMethod::Sha256,
                "18db149d82c8b97e3f07ce68e31701af508d418fd94ae3040fb56f2f94edb2cb",
            ),
            (
                SignatureMethod::Sha512,
                "a2a2db2dcf7b1bc2821281d5622169ddb78bf17941c5956b704e647ef70011cf\
                 a5ac56922353589db28aed86564e1358faad46a7cc61c26eb47243da8f8d4ebc",
            ),
        ] {
            assert_eq!(sign(&params, "secret", method), expected, "{method:?}");
        }
    }

    #[test]
    fn a_signature_verifies_in_any_case_and_a_changed_field_does_not() {
        for method in [
            SignatureMethod::Md5Hash,
            SignatureMethod::Md5,
            SignatureMethod::Sha1,
            SignatureMethod::Sha256,
            SignatureMethod::Sha512,
        ] {
            let mut params = pairs(&[("messageId", "0A01"), ("status", "delivered")]);
            let sig = sign(&params, "s3cret", method);
            params.push(("sig".into(), sig.to_ascii_uppercase()));
            assert!(verify(&params, "s3cret", method), "{method:?}");
            assert!(!verify(&params, "other", method), "{method:?}");
            params[1].1 = "failed".into();
            assert!(!verify(&params, "s3cret", method), "{method:?}");
        }
        assert!(!verify(
            &pairs(&[("a", "1")]),
            "s3cret",
            SignatureMethod::Md5Hash
        ));
    }
}
