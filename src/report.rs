//! An error said whole: its message, then each cause it has (`source()`) that the message does
//! not already say, joined by `: `. What logs and the command line print; callers of the
//! service still see only `AuthError::message`.

use std::error::Error;

/// `error` and its causes on one line, each said once.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("loading the set")]
        Load(#[source] std::io::Error),
        #[error("reading {0}")]
        Said(#[source] std::io::Error),
    }

    #[test]
    fn causes_follow_the_message_each_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(chain(&Outer::Load(io())), "loading the set: no such file");
        // A message that already says its cause does not say it twice.
        let said = Outer::Said(io());
        assert_eq!(chain(&said), "reading no such file");
    }
}
