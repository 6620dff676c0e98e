//! Message templates (minijinja), loaded once from `templates/`:
//!
//! ```text
//! templates/<name>/<locale>/sms.txt            SMS text
//! templates/<name>/<locale>/email.subject.txt  email subject
//! templates/<name>/<locale>/email.txt          email text part
//! templates/<name>/<locale>/email.html         email HTML part (optional, auto-escaped)
//! ```
//!
//! Undefined variables are errors, and every variable a template uses is
//! checked before rendering, so a missing one is reported by name at enqueue.
//!
//! [`Templates::load`] is the one check of a template set, made by `tuma
//! check` and by every command that sends alike: a set with a problem no
//! request could get past (a part that does not parse, an email without its
//! subject or text, a template without the default locale, a locale that
//! lacks a channel another locale of the template has, a filter, test or
//! function that does not exist) is refused whole, naming every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::config::{ConfigError, TemplatesConfig};
use crate::domain::Channel;

/// A template problem, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The templates folder cannot be read.
    #[error("cannot read templates folder {dir}: {reason}")]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// No template by that name.
    #[error("unknown template `{name}` (known: {known})")]
    UnknownTemplate {
        /// Asked for.
        name: String,
        /// Those that exist.
        known: String,
    },
    /// The template exists, not in that locale.
    #[error("template `{name}` has no locale `{locale}` (it has: {known})")]
    UnknownLocale {
        /// Template.
        name: String,
        /// Asked for.
        locale: String,
        /// Those that exist.
        known: String,
    },
    /// The template lacks the part a channel needs.
    #[error("template `{name}` ({locale}) cannot be sent by {channel}: {file} is missing")]
    MissingPart {
        /// Template.
        name: String,
        /// Locale.
        locale: String,
        /// Channel asked for.
        channel: Channel,
        /// File that would be needed.
        file: String,
    },
    /// A variable the template uses was not given.
    #[error("template `{name}` ({locale}) needs variable `{variable}`, which was not given")]
    MissingVariable {
        /// Template.
        name: String,
        /// Locale.
        locale: String,
        /// The variable.
        variable: String,
    },
    /// The template does not parse or fails to render.
    #[error("template {file}: {reason}")]
    Invalid {
        /// Which file.
        file: String,
        /// The engine's message.
        reason: String,
    },
    /// The set has problems no request could get past (see [`Templates::load`]).
    #[error("{} in {}:\n  {}", count(problems.len()), dir.display(), problems.join("\n  "))]
    Problems {
        /// The folder.
        dir: PathBuf,
        /// Each problem, naming its template, locale or file.
        problems: Vec<String>,
    },
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 problem".into()
    } else {
        format!("{n} problems")
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Email subject.
    pub subject: Option<String>,
    /// SMS text or email text part.
    pub text: String,
    /// Email HTML part.
    pub html: Option<String>,
}

/// All templates, parsed.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// template name → locale → files present.
    index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    globals: BTreeMap<String, String>,
    default_locale: String,
}

const PARTS: [&str; 4] = ["sms.txt", "email.subject.txt", "email.txt", "email.html"];

/// The parts an email needs, in every locale that has any email part.
const EMAIL_PARTS: [&str; 2] = ["email.subject.txt", "email.txt"];

/// Sample values for rendering a template at load (and in `tuma check`):
/// the OTP template's variables and the shipped `welcome`'s.
pub fn sample_vars() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::from_iter([
        ("code".to_owned(), serde_json::json!("123456")),
        ("ttl_minutes".to_owned(), serde_json::json!(5)),
        ("name".to_owned(), serde_json::json!("Amina Wanjiru")),
    ])
}

impl Templates {
    /// Loads and compiles every template under the configured folder, and
    /// checks the set: every problem no request could get past is listed
    /// in one [`TemplateError::Problems`] (see the module's doc). `tuma
    /// check` and the sending commands call this alike, so what one refuses
    /// the other does.
    pub fn load(config: &TemplatesConfig) -> Result<Templates, TemplateError> {
        let folder_err = |reason: String| TemplateError::Folder {
            dir: config.dir.clone(),
            reason,
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        let mut problems = Vec::new();
        let names = read_dir_names(&config.dir).map_err(folder_err)?;
        for name in names {
            let dir = config.dir.join(&name);
            if !dir.is_dir() {
                continue;
            }
            for locale in read_dir_names(&dir).map_err(folder_err)? {
                let ldir = dir.join(&locale);
                if !ldir.is_dir() {
                    continue;
                }
                for part in PARTS {
                    let file = ldir.join(part);
                    if !file.is_file() {
                        continue;
                    }
                    let key = format!("{name}/{locale}/{part}");
                    let added = std::fs::read_to_string(&file)
                        .map_err(|e| e.to_string())
                        .and_then(|source| {
                            env.add_template_owned(key.clone(), source)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(reason) = added {
                        problems.push(format!("{key}: {reason}"));
                        continue;
                    }
                    index
                        .entry(name.clone())
                        .or_default()
                        .entry(locale.clone())
                        .or_default()
                        .insert(part.to_owned());
                }
                if !index.get(&name).is_some_and(|l| l.contains_key(&locale)) {
                    problems.push(format!(
                        "{name}/{locale}: holds none of {}",
                        PARTS.join(", ")
                    ));
                }
            }
        }
        let templates = Templates {
            env,
            index,
            globals: config.vars.clone(),
            default_locale: config.default_locale.clone(),
        };
        problems.extend(templates.problems());
        if problems.is_empty() {
            Ok(templates)
        } else {
            Err(TemplateError::Problems {
                dir: config.dir.clone(),
                problems,
            })
        }
    }

    /// [`Templates::load`] for a configuration, its error as a
    /// configuration error of `templates.dir` (the file, the key, every
    /// problem), as `tuma check` and the sending commands report it.
    pub fn load_configured(config: &crate::config::Config) -> Result<Templates, ConfigError> {
        Templates::load(&config.templates).map_err(|e| ConfigError {
            file: config.file.clone(),
            key: "templates.dir".into(),
            reason: e.to_string(),
        })
    }

    /// What makes the loaded set unusable whatever a request gives.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, locales) in &self.index {
            if !locales.contains_key(&self.default_locale) {
                problems.push(format!(
                    "{name}: has no locale `{}` (templates.default_locale), which a send \
                     without a locale uses (it has: {})",
                    self.default_locale,
                    join(locales.keys())
                ));
            }
            for (locale, parts) in locales {
                let email = EMAIL_PARTS.iter().filter(|p| parts.contains(**p)).count();
                if (email > 0 || parts.contains("email.html")) && email < EMAIL_PARTS.len() {
                    let missing: Vec<&str> = EMAIL_PARTS
                        .iter()
                        .copied()
                        .filter(|p| !parts.contains(*p))
                        .collect();
                    problems.push(format!(
                        "{name}/{locale}: an email needs {}, and {} is missing",
                        EMAIL_PARTS.join(" and "),
                        missing.join(" and ")
                    ));
                }
            }
            for channel in [Channel::Sms, Channel::Email] {
                let (with, without): (Vec<_>, Vec<_>) = locales
                    .iter()
                    .partition(|(_, parts)| sends_by(parts, channel));
                let with: Vec<&String> = with.into_iter().map(|(l, _)| l).collect();
                let without: Vec<&String> = without.into_iter().map(|(l, _)| l).collect();
                if !with.is_empty() && !without.is_empty() {
                    let lacks = match channel {
                        Channel::Sms => "sms.txt".to_owned(),
                        Channel::Email => EMAIL_PARTS.join(" and "),
                    };
                    problems.push(format!(
                        "{name}: is sent by {channel} in {} but not in {} (which lack{} {lacks}), \
                         so a send by {channel} in {} would be refused",
                        join(with.into_iter()),
                        join(without.iter().copied()),
                        if without.len() == 1 { "s" } else { "" },
                        join(without.iter().copied()),
                    ));
                }
            }
            for (locale, parts) in locales {
                for part in parts {
                    if let Some(reason) = self.fails_whatever_the_values(name, locale, part) {
                        problems.push(format!("{name}/{locale}/{part}: {reason}"));
                    }
                }
            }
        }
        problems
    }

    /// Renders a part with a sample value for every variable it uses and
    /// tells an error no values could avoid: a filter, test, function or
    /// included template that does not exist. (Errors that depend on the
    /// values, such as arithmetic on a text sample, are left to the request
    /// that brings real ones.)
    fn fails_whatever_the_values(&self, name: &str, locale: &str, part: &str) -> Option<String> {
        let tmpl = self
            .env
            .get_template(&format!("{name}/{locale}/{part}"))
            .ok()?;
        let samples = sample_vars();
        let mut ctx: BTreeMap<String, Value> = self
            .globals
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        for variable in tmpl.undeclared_variables(false) {
            let sample = samples
                .get(&variable)
                .map(|v| Value::from(minijinja::value::Serde(v)))
                .unwrap_or_else(|| Value::from("sample"));
            ctx.entry(variable).or_insert(sample);
        }
        match tmpl.render(Value::from(ctx)) {
            Err(e)
                if matches!(
                    e.kind(),
                    minijinja::ErrorKind::UnknownFilter
                        | minijinja::ErrorKind::UnknownTest
                        | minijinja::ErrorKind::UnknownFunction
                        | minijinja::ErrorKind::TemplateNotFound
                ) =>
            {
                Some(e.to_string())
            }
            _ => None,
        }
    }

    /// Whether the configuration sets variable `name` (`[templates] vars`):
    /// a request may not.
    pub fn is_configured(&self, name: &str) -> bool {
        self.globals.contains_key(name)
    }

    /// The locale used when none is asked for.
    pub fn default_locale(&self) -> &str {
        &self.default_locale
    }

    /// Template names and their locales, for `tuma check`.
    pub fn catalogue(&self) -> impl Iterator<Item = (&str, &str, &BTreeSet<String>)> {
        self.index.iter().flat_map(|(name, locales)| {
            locales
                .iter()
                .map(move |(locale, parts)| (name.as_str(), locale.as_str(), parts))
        })
    }

    /// Renders `name` in `locale` for `channel` with `vars` (plus the
    /// configured globals).
    pub fn render(
        &self,
        name: &str,
        locale: &str,
        channel: Channel,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Rendered, TemplateError> {
        let locales = self
            .index
            .get(name)
            .ok_or_else(|| TemplateError::UnknownTemplate {
                name: name.to_owned(),
                known: join(self.index.keys()),
            })?;
        let parts = locales
            .get(locale)
            .ok_or_else(|| TemplateError::UnknownLocale {
                name: name.to_owned(),
                locale: locale.to_owned(),
                known: join(locales.keys()),
            })?;
        let needed: &[&str] = match channel {
            Channel::Sms => &["sms.txt"],
            Channel::Email => &["email.subject.txt", "email.txt"],
        };
        for part in needed {
            if !parts.contains(*part) {
                return Err(TemplateError::MissingPart {
                    name: name.to_owned(),
                    locale: locale.to_owned(),
                    channel,
                    file: format!("{name}/{locale}/{part}"),
                });
            }
        }
        let mut ctx: BTreeMap<String, Value> = self
            .globals
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        for (k, v) in vars {
            ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
        }
        let ctx = Value::from(ctx);
        let render = |part: &str| -> Result<String, TemplateError> {
            let key = format!("{name}/{locale}/{part}");
            let invalid = |e: minijinja::Error| TemplateError::Invalid {
                file: key.clone(),
                reason: e.to_string(),
            };
            let tmpl = self.env.get_template(&key).map_err(invalid)?;
            let mut wanted: Vec<String> = tmpl.undeclared_variables(false).into_iter().collect();
            wanted.sort();
            for variable in wanted {
                if ctx
                    .get_attr(&variable)
                    .map(|v| v.is_undefined())
                    .unwrap_or(true)
                {
                    return Err(TemplateError::MissingVariable {
                        name: name.to_owned(),
                        locale: locale.to_owned(),
                        variable,
                    });
                }
            }
            tmpl.render(&ctx)
                .map(|s| s.trim().to_owned())
                .map_err(invalid)
        };
        Ok(match channel {
            Channel::Sms => Rendered {
                subject: None,
                text: render("sms.txt")?,
                html: None,
            },
            Channel::Email => Rendered {
                subject: Some(render("email.subject.txt")?.replace(['\r', '\n'], " ")),
                text: render("email.txt")?,
                html: if parts.contains("email.html") {
                    Some(render("email.html")?)
                } else {
                    None
                },
            },
        })
    }
}

/// Whether a locale with these parts can be sent by `channel`.
fn sends_by(parts: &BTreeSet<String>, channel: Channel) -> bool {
    match channel {
        Channel::Sms => parts.contains("sms.txt"),
        Channel::Email => EMAIL_PARTS.iter().all(|p| parts.contains(*p)),
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
