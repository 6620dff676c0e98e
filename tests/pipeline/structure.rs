//! The house's structural rules, read from the source (ARCHITECTURE.md,
//! "Invariants"):
//!
//! - nothing outside `src/providers/` names a provider kind: no Rust
//!   identifier or path segment there contains `twilio`, `africastalking`,
//!   `africas_talking`, `vonage`, `smtp` or `outbox` (case-insensitive).
//!   Comments (doc comments too) and string and character literals do not
//!   count: they describe or configure, they do not depend on a kind;
//! - the configuration and the provider folders do not import each other's
//!   way round: nothing in `src/providers/` or `src/settings.rs` names
//!   `crate::config`, and `src/settings.rs` imports nothing of tuma's;
//! - no two top-level modules import each other but the pairs
//!   ARCHITECTURE.md names, and its leaves import nothing of tuma's.

use std::path::{Path, PathBuf};

/// The words that name a provider kind.
const KIND_WORDS: &[&str] = &[
    "twilio",
    "africastalking",
    "africas_talking",
    "vonage",
    "smtp",
    "outbox",
];

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source with every comment and every string, byte-string, raw-string
/// and character literal replaced by a space; what is left is code.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| b.get(i + k) == Some(&c));
    while i < b.len() {
        if at(i, "//") {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < b.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(&b, i) {
            // r"…", r#"…"#, br#"…"#: skip to the quote and as many hashes.
            let open = b[i..]
                .iter()
                .position(|&c| c == '"')
                .map_or(b.len(), |p| i + p);
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i = open + 1;
            while i < b.len() && !at(i, &close) {
                i += 1;
            }
            i += close.chars().count();
            out.push(' ');
        } else if b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if b[i] == '\'' {
            // A character literal ('a', '\n', '\u{1b}'), else a lifetime.
            let end = if b.get(i + 1) == Some(&'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    i = end + 1;
                    out.push(' ');
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `Some(number of #)` when a raw (byte) string starts at `i`.
fn raw_string_start(b: &[char], i: usize) -> Option<usize> {
    let prev_is_ident = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
    if prev_is_ident {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&'b') {
        j += 1;
    }
    if b.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while b.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (b.get(j) == Some(&'"')).then_some(hashes)
}

/// Every identifier in `code`, with its line.
fn identifiers(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut word = String::new();
        for c in line.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
            } else if !word.is_empty() {
                if !word.starts_with(|c: char| c.is_ascii_digit()) {
                    found.push((n + 1, std::mem::take(&mut word)));
                }
                word.clear();
            }
        }
    }
    found
}

#[test]
fn the_code_reader_skips_comments_strings_and_characters_only() {
    let text = "let twilio_a = 1; // twilio_b\n/* twilio_c /* nested */ twilio_d */ \
                let s = \"twilio_e \\\" twilio_f\"; let r = r#\"twilio_g\"#; \
                let c = '\\''; fn f<'a>(x: &'a Smtp) {}";
    let words: Vec<String> = identifiers(&code_only(text))
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert!(words.contains(&"twilio_a".to_owned()));
    assert!(words.contains(&"Smtp".to_owned()), "{words:?}");
    for hidden in [
        "twilio_b", "twilio_c", "twilio_d", "twilio_e", "twilio_f", "twilio_g",
    ] {
        assert!(!words.contains(&hidden.to_owned()), "{hidden} in {words:?}");
    }
}

#[test]
fn nothing_outside_the_provider_folders_names_a_provider_kind() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let providers = src().join("providers");
    let mut offences = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&providers)) {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (line, word) in identifiers(&code_only(&text)) {
            let lower = word.to_ascii_lowercase();
            if KIND_WORDS.iter().any(|k| lower.contains(k)) {
                offences.push(format!(
                    "{}:{line}: `{word}`",
                    file.strip_prefix(src()).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "provider kinds are named only in src/providers/ (the registry lists them):\n{}",
        offences.join("\n")
    );
}

#[test]
fn configuration_and_providers_import_each_other_one_way_only() {
    let mut files = Vec::new();
    rust_files(&src().join("providers"), &mut files);
    files.push(src().join("settings.rs"));
    for file in &files {
        let code = code_only(&std::fs::read_to_string(file).expect("read a source file"));
        assert!(
            !code.contains("crate::config") && !code.contains("super::config::Config"),
            "{} imports the configuration; providers use crate::settings",
            file.display()
        );
    }
    let settings = code_only(&std::fs::read_to_string(src().join("settings.rs")).unwrap());
    assert!(
        !settings.contains("crate::"),
        "src/settings.rs is a leaf: it imports nothing of tuma's"
    );
}

/// The top-level module `file` belongs to (`store` for `src/store/spend.rs`).
fn top_module(file: &Path) -> String {
    let relative = file.strip_prefix(src()).unwrap_or(file);
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn modules_import_each_other_only_where_architecture_says() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges = std::collections::BTreeSet::new();
    for file in &files {
        let text = code_only(&std::fs::read_to_string(file).expect("read a source file"));
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let from = top_module(file);
        for (at, _) in code.match_indices("crate::") {
            let to: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                edges.insert((from.clone(), to));
            }
        }
    }
    // The leaves import nothing of tuma's; `queue` only `domain`.
    for leaf in ["domain", "settings", "clock", "digest", "egress"] {
        let out: Vec<_> = edges.iter().filter(|(a, _)| a == leaf).collect();
        assert!(out.is_empty(), "{leaf} is a leaf but imports {out:?}");
    }
    let queue: Vec<_> = edges.iter().filter(|(a, _)| a == "queue").collect();
    assert_eq!(queue, [&("queue".to_owned(), "domain".to_owned())]);
    // The import circles left, each named in ARCHITECTURE.md; no new one.
    let circles: Vec<String> = edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{a} <-> {b}"))
        .collect();
    assert_eq!(
        circles,
        [
            "api <-> console",
            "app <-> global_rate",
            "app <-> housekeeping",
            "app <-> shared_circuits"
        ],
        "two modules import each other: break the circle (move what both need into a leaf) \
         rather than add one"
    );
}
