//! Repository locations: URLs told apart from paths, and credentials kept out of anything
//! shown.

use std::path::PathBuf;

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A repository on this machine, read in place.
    Local(PathBuf),
    /// A URL fetched into a cache.
    Remote(String),
}

impl Location {
    /// A URL with a scheme (or scp-like `user@host:path`) is remote; anything else is a path.
    pub fn parse(url: &str) -> Location {
        let scp_like = url
            .split_once(':')
            .is_some_and(|(before, _)| before.contains('@') && !before.contains('/'));
        if url.contains("://") || scp_like {
            Location::Remote(url.to_owned())
        } else {
            Location::Local(PathBuf::from(url))
        }
    }
}

/// `url` without its user information (user names, passwords and tokens).
pub fn redact(url: &str) -> String {
    match userinfo(url) {
        Some(info) => url.replacen(&format!("{info}@"), "***@", 1),
        None => url.to_owned(),
    }
}

/// The `user:password` part of `scheme://user:password@host/...`, if any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (info, _) = authority.rsplit_once('@')?;
    Some(info)
}

/// An error text with the URL's credentials removed.
pub(crate) fn scrub(url: &str, text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    match userinfo(url) {
        Some(info) if !info.is_empty() => text.replace(info, "***"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart_from_paths() {
        for remote in [
            "https://github.com/acme/deploy.git",
            "file:///srv/git/deploy.git",
            "git://localhost:9418/deploy.git",
            "git@github.com:acme/deploy.git",
        ] {
            assert_eq!(
                Location::parse(remote),
                Location::Remote(remote.into()),
                "{remote}"
            );
        }
        for local in ["/srv/git/deploy.git", "deploy", "./a:b/repo", "C"] {
            assert_eq!(
                Location::parse(local),
                Location::Local(local.into()),
                "{local}"
            );
        }
    }

    #[test]
    fn credentials_never_leave_a_url() {
        assert_eq!(
            redact("https://bot:s3cr3t-t0ken@github.com/acme/deploy.git"),
            "https://***@github.com/acme/deploy.git"
        );
        assert_eq!(
            redact("https://ghp_abcdef@github.com/a/b"),
            "https://***@github.com/a/b"
        );
        assert_eq!(
            redact("https://github.com/a/b@c"),
            "https://github.com/a/b@c"
        );
        assert_eq!(
            scrub(
                "https://bot:s3cr3t@host/r",
                "failed for https://bot:s3cr3t@host/r"
            ),
            "failed for https://***@host/r"
        );
    }
}
