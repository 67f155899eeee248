//! The settings table of docs/configuration.md, generated from [`Settings`] so the two cannot
//! drift: a test compares it with the file (and rewrites it with `AGENT_AUTH_BLESS=1`).

use super::settings::Settings;

/// A Markdown table of every setting: flag and value, env var, default, meaning.
pub fn settings_table() -> String {
    let mut table = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    for arg in Settings::command().get_arguments() {
        let id = arg.get_id().as_str();
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| format!(" {name}"))
            .unwrap_or_default();
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|help| help.to_string())
            .unwrap_or_default();
        let (meaning, documented_default) = split_default(&help);
        let default = match arg.get_default_values() {
            [] => documented_default.unwrap_or("none").to_owned(),
            values => values
                .iter()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let env = if id == "insecure_verify_time" {
            "(flag only)".to_owned()
        } else {
            format!("`AGENT_AUTH_{}`", id.to_ascii_uppercase())
        };
        table.push_str(&format!(
            "| `{}` | {env} | {} | {} |\n",
            escape(&format!("--{}{value}", id.replace('_', "-"))),
            escape(&default),
            escape(&meaning)
        ));
    }
    table
}

/// The help without its `[default: …]`, and what that said.
fn split_default(help: &str) -> (String, Option<&str>) {
    let joined = help.split_whitespace().collect::<Vec<_>>().join(" ");
    match help.split_once("[default: ") {
        Some((_, rest)) => {
            let default = rest.split_once(']').map(|(d, _)| d);
            let cut = joined
                .split_once(" [default: ")
                .map(|(before, rest)| {
                    let after = rest.split_once(']').map(|(_, a)| a).unwrap_or_default();
                    format!("{before}{after}")
                })
                .unwrap_or(joined);
            (cut, default)
        }
        None => (joined, None),
    }
}

/// Table cells cannot hold a bare `|`.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- settings:begin (generated from src/config/settings/) -->\n";
    const END: &str = "<!-- settings:end -->";

    /// CI fails when a setting changed without docs/configuration.md; `AGENT_AUTH_BLESS=1 cargo test
    /// readme` rewrites the table.
    #[test]
    fn the_readme_settings_table_is_generated_from_the_settings() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let readme = std::fs::read_to_string(path).unwrap_or_default();
        let (Some((head, rest)), true) = (readme.split_once(BEGIN), readme.contains(END)) else {
            panic!("docs/configuration.md lacks the settings markers");
        };
        let tail = rest.split_once(END).map(|(_, t)| t).unwrap_or_default();
        let generated = format!("{head}{BEGIN}{}{END}{tail}", settings_table());
        if std::env::var_os("AGENT_AUTH_BLESS").is_some() {
            assert!(std::fs::write(path, &generated).is_ok());
            return;
        }
        assert!(
            readme == generated,
            "docs/configuration.md's settings table differs from src/config/settings/; run \
             AGENT_AUTH_BLESS=1 cargo test readme"
        );
    }

    #[test]
    fn every_setting_reads_its_agent_auth_env_var() {
        use clap::Args;
        for arg in Settings::augment_args(clap::Command::new("x")).get_arguments() {
            let id = arg.get_id().as_str();
            let expected = format!("AGENT_AUTH_{}", id.to_ascii_uppercase());
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            if id == "insecure_verify_time" {
                assert_eq!(env, None, "{id} must never read an env var");
            } else {
                assert_eq!(env, Some(expected), "{id}");
            }
        }
    }

    #[test]
    fn a_documented_default_leaves_the_meaning() {
        assert_eq!(
            split_default("Embedded\n directory [default: $HOME/x].\n\nMore."),
            ("Embedded directory. More.".to_owned(), Some("$HOME/x"))
        );
    }
}
