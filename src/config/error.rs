//! The configuration error: the key and what is wrong with it.

/// A configuration error: the key and what is wrong with it. Shown with all three names an
/// operator may have used for a real setting: `--flag`, `AGENT_AUTH_FLAG` and the TOML key; a
/// key that is no setting (a file's unknown key) is shown as written, with no invented names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// False for a key that is no setting ([`ConfigError::unknown`]).
    setting: bool,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = &self.key;
        let message = &self.message;
        if self.setting {
            write!(
                f,
                "invalid configuration: --{} (env AGENT_AUTH_{}, key {key}): {message}",
                key.replace('_', "-"),
                key.to_ascii_uppercase()
            )
        } else {
            write!(f, "invalid configuration: {message}")
        }
    }
}

impl ConfigError {
    /// What is wrong with the setting `key` (or `config`, the file itself).
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
            setting: true,
        }
    }

    /// A key the --config file holds that is no setting.
    pub fn unknown(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
            setting: false,
        }
    }
}
