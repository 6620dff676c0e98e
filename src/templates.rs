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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::config::TemplatesConfig;
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

impl Templates {
    /// Loads and compiles every template under the configured folder.
    pub fn load(config: &TemplatesConfig) -> Result<Templates, TemplateError> {
        let folder_err = |reason: String| TemplateError::Folder {
            dir: config.dir.clone(),
            reason,
        };
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
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
                    let source =
                        std::fs::read_to_string(&file).map_err(|e| TemplateError::Invalid {
                            file: key.clone(),
                            reason: e.to_string(),
                        })?;
                    env.add_template_owned(key.clone(), source).map_err(|e| {
                        TemplateError::Invalid {
                            file: key.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    index
                        .entry(name.clone())
                        .or_default()
                        .entry(locale.clone())
                        .or_default()
                        .insert(part.to_owned());
                }
            }
        }
        Ok(Templates {
            env,
            index,
            globals: config.vars.clone(),
            default_locale: config.default_locale.clone(),
        })
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
