//! One declaration per setting: [`settings!`] makes the clap flags (each with its environment
//! variable), the file's table (`deny_unknown_fields`) and the merge (flag, else environment
//! variable, else file, else default) that keeps each value's [`Origin`] for the errors
//! (`--data-dir`, `environment variable KV_DATA_DIR`, ``/etc/kv.toml key `data_dir` (line 3)``).
//! Why a macro and not a crate (figment): docs/kv-server.md.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::ConfigError;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The flag, by its field name (`data_dir` is `--data-dir`).
    Flag(&'static str),
    Env(&'static str),
    /// A key of the configuration file, dotted (`v2.key_grace_secs`), with its line when known.
    File {
        path: String,
        key: &'static str,
        line: Option<usize>,
    },
    /// Given nowhere: the default, named by its flag (as `Flag`).
    Default(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(field) | Origin::Default(field) => write!(f, "--{}", field.replace('_', "-")),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, key, line: Some(line) } => write!(f, "{path} key `{key}` (line {line})"),
            Origin::File { path, key, line: None } => write!(f, "{path} key `{key}`"),
        }
    }
}

impl Origin {
    /// Whether a flag, an environment variable or the file gave the value.
    pub fn given(&self) -> bool {
        !matches!(self, Origin::Default(_))
    }

    /// An error about the setting from here.
    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { setting: self.to_string(), reason: reason.into() }
    }
}

/// The configuration file as errors name it: its path and the line of each (dotted) key.
#[derive(Debug, Clone, Default)]
pub struct FileAt {
    path: String,
    lines: BTreeMap<String, usize>,
}

impl FileAt {
    /// A file whose lines are not known (`None`: values given as a file table in tests).
    pub fn new(path: Option<&Path>) -> FileAt {
        let path = path.map_or_else(|| "config file".to_string(), |p| p.display().to_string());
        FileAt { path, lines: BTreeMap::new() }
    }

    /// `text` is the file's content, already deserialized without error.
    pub fn with_lines(path: &Path, text: &str) -> FileAt {
        let mut at = FileAt::new(Some(path));
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            at.collect("", doc.get_ref(), text);
        }
        at
    }

    fn collect(&mut self, prefix: &str, table: &toml::de::DeTable<'_>, text: &str) {
        for (key, value) in table.iter() {
            let name = format!("{prefix}{}", key.get_ref());
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                self.collect(&format!("{name}."), inner, text);
            }
            let line = 1 + text.as_bytes()[..key.span().start].iter().filter(|&&b| b == b'\n').count();
            self.lines.insert(name, line);
        }
    }
}

/// A setting's value and its origin; `Setting<Option<T>>` for a setting without a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<Option<T>> {
    /// The flag's value (`from_env`: clap read it from the environment variable), else the file's.
    pub fn pick(
        given: Option<T>,
        from_env: bool,
        (field, env): (&'static str, &'static str),
        file: Option<T>,
        at: &FileAt,
        key: &'static str,
    ) -> Self {
        let (value, origin) = match (given, file) {
            (Some(v), _) => (Some(v), if from_env { Origin::Env(env) } else { Origin::Flag(field) }),
            (None, Some(v)) => {
                let line = at.lines.get(key).copied();
                (Some(v), Origin::File { path: at.path.clone(), key, line })
            }
            (None, None) => (None, Origin::Default(field)),
        };
        Setting { value, origin }
    }

    pub fn or(self, default: T) -> Setting<T> {
        Setting { value: self.value.unwrap_or(default), origin: self.origin }
    }

    /// The value, if any, or `check`'s reason as an error naming the origin.
    pub fn check_some(self, check: impl FnOnce(&T) -> Result<(), String>) -> Result<Option<T>, ConfigError> {
        self.check(|value| value.as_ref().map_or(Ok(()), check))
    }
}

impl<T> Setting<T> {
    /// Whether a flag, an environment variable or the file gave the value.
    pub fn given(&self) -> bool {
        self.origin.given()
    }

    /// An error about this setting, naming where its value came from.
    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        self.origin.invalid(reason)
    }

    /// The value, or `check`'s reason as an error naming the origin.
    pub fn check(self, check: impl FnOnce(&T) -> Result<(), String>) -> Result<T, ConfigError> {
        match check(&self.value) {
            Ok(()) => Ok(self.value),
            Err(reason) => Err(self.invalid(reason)),
        }
    }
}

impl<T: PartialOrd + fmt::Display> Setting<T> {
    /// The value if it is in `range`; `unit` (` seconds`) follows the range in the error.
    pub fn within(self, range: RangeInclusive<T>, unit: &str) -> Result<T, ConfigError> {
        if range.contains(&self.value) {
            return Ok(self.value);
        }
        Err(self.invalid(format!("{} is outside {}..={}{unit}", self.value, range.start(), range.end())))
    }
}

/// The flag `--field-name`, with a value (`--listen ENDPOINT`) or without (`--sample-data`, whose
/// environment variable is `true` or `false`); its help is the doc comment, the default and the
/// file key.
pub fn arg(
    id: &'static str,
    [env, key]: [&'static str; 2],
    value: Option<&'static str>,
    doc: &[&str],
    default: Option<String>,
) -> Arg {
    let mut help = doc.iter().map(|line| line.trim()).collect::<Vec<_>>().join(" ");
    if help.ends_with('.') && !help[..help.len() - 1].contains(". ") {
        help.pop(); // one sentence, as clap's derive shows it
    }
    let default = default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
    let arg = Arg::new(id).long(id.replace('_', "-")).env(env).action(ArgAction::Set);
    let arg = arg.help(format!("{help}{default} [file: {key}]"));
    match value {
        Some(name) => arg.value_name(name),
        None => arg.num_args(0).default_missing_value("true"),
    }
}

/// The value clap found for `id`, and whether it came from the environment. Parsed here rather
/// than by clap so that a bad value from the environment names the variable.
pub fn get<T: FromStr<Err: fmt::Display>>(
    matches: &ArgMatches,
    id: &'static str,
    env: &'static str,
) -> Result<Option<(T, bool)>, clap::Error> {
    let Some(text) = matches.get_one::<String>(id) else { return Ok(None) };
    let from_env = matches.value_source(id) == Some(ValueSource::EnvVariable);
    let value = text.parse().map_err(|e| {
        let origin = if from_env { Origin::Env(env) } else { Origin::Flag(id) };
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{origin}: {text:?}: {e}"))
    })?;
    Ok(Some((value, from_env)))
}

/// Declares a table of settings once; generates
/// - `$args`: the flags (clap `Args`, for `#[command(flatten)]`), one `Option` per setting;
/// - `$file`: the file's table (`deny_unknown_fields`), keyed by `key`, plus the sub-tables;
/// - `$merged` and `$args::settings(file, at)`: each setting as a [`Setting`], flag over
///   environment over file over default.
///
/// A setting is its doc comment (the flag's help), then `field: Type [= default], [value NAME,]
/// env VAR, key file_key;`: the flag is `--field` with `-` for `_`, and takes a value when the
/// setting names one (`--listen ENDPOINT`), none otherwise (a switch, `--sample-data`).
macro_rules! settings {
    (
        $(#[doc = $args_doc:literal])*
        pub struct $args:ident, file $file:ident in $table:literal, merged $merged:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty $(= $default:expr)?,
                $(value $value_name:ident,)? env $env:ident, key $key:ident;
            )*
        }
        $(tables { $($sub:ident: $subty:ty),* $(,)? })?
    ) => {
        $(#[doc = $args_doc])*
        #[derive(Debug, Default, Clone)]
        pub struct $args {
            $($(#[doc = $doc])* pub $field: Option<$ty>,)*
            /// The fields whose value clap read from the environment variable, not the flag.
            pub(crate) from_env: Vec<&'static str>,
        }

        #[doc = concat!("The table `", $table, "` of the configuration file; unknown keys are an error.")]
        #[derive(Debug, Default, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $file {
            $(pub $key: Option<$ty>,)*
            $($(pub $sub: Option<$subty>,)*)?
        }

        #[doc = concat!("Every setting of [`", stringify!($args), "`] with where it came from.")]
        #[derive(Debug)]
        pub struct $merged {
            $(pub $field: $crate::config::setting::settings!(@type $ty $(, $default)?),)*
        }

        impl $args {
            /// Each setting from its flag or environment variable, else `file`, else its default.
            pub fn settings(&self, file: Option<&$file>, at: &$crate::config::setting::FileAt) -> $merged {
                let empty = <$file>::default();
                let file = file.unwrap_or(&empty);
                $merged {
                    $($field: $crate::config::setting::Setting::pick(
                        self.$field.clone(),
                        self.from_env.contains(&stringify!($field)),
                        (stringify!($field), stringify!($env)),
                        file.$key.clone(),
                        at,
                        concat!($table, stringify!($key)),
                    ) $(.or($default))?,)*
                }
            }
        }

        impl clap::FromArgMatches for $args {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                let mut args = Self::default();
                args.update_from_arg_matches(matches)?;
                Ok(args)
            }

            fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
                $(
                    let id = stringify!($field);
                    if let Some((value, from_env)) =
                        $crate::config::setting::get::<$ty>(matches, id, stringify!($env))?
                    {
                        self.$field = Some(value);
                        if from_env {
                            self.from_env.push(id);
                        }
                    }
                )*
                Ok(())
            }
        }

        impl clap::Args for $args {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd $(.arg($crate::config::setting::arg(
                    stringify!($field),
                    [stringify!($env), concat!($table, stringify!($key))],
                    None $(.or(Some(stringify!($value_name))))?,
                    &[$($doc),*],
                    None $(.or(Some({ let default: $ty = $default; default.to_string() })))?,
                )))*
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
    (@type $ty:ty) => { $crate::config::setting::Setting<Option<$ty>> };
    (@type $ty:ty, $default:expr) => { $crate::config::setting::Setting<$ty> };
}

pub(crate) use settings;
