//! Repository locations: URLs told apart from paths, and credentials kept out of anything
//! shown.

use std::path::PathBuf;

use schema::rules::url_userinfo as userinfo;

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

/// `url` without its secrets: the user information (user names, passwords, tokens) and the
/// query and fragment (where some hosts take a token) become `***`.
pub fn redact(url: &str) -> String {
    let mut shown = match userinfo(url) {
        Some(info) => url.replacen(&format!("{info}@"), "***@", 1),
        None => url.to_owned(),
    };
    if let Some(query) = query(&shown) {
        let at = shown.len() - query.len();
        shown.replace_range(at.., "***");
    }
    shown
}

/// Everything from the first `?` or `#` after the scheme, if any.
fn query(url: &str) -> Option<&str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].find(['?', '#'])? + start;
    Some(&url[at + 1..])
}

/// An error text with the URL's secrets (user information, query) removed.
pub(crate) fn scrub(url: &str, text: impl std::fmt::Display) -> String {
    let mut text = text.to_string();
    for secret in [userinfo(url), query(url)].into_iter().flatten() {
        if !secret.is_empty() {
            text = text.replace(secret, "***");
        }
    }
    text
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
        assert_eq!(redact("https://host:8080/a/b@c"), "https://host:8080/a/b@c");
        assert_eq!(
            redact("https://host/x.git?token=SECRET"),
            "https://host/x.git?***"
        );
        assert_eq!(
            redact("https://bot:pa/ss-SECRET@host/x.git"),
            "https://***@host/x.git"
        );
        assert_eq!(
            redact("https://bot:t@k@host/x.git#frag"),
            "https://***@host/x.git#***"
        );
        assert_eq!(
            scrub(
                "https://bot:pa/ss-SECRET@host/x.git?token=T0KEN",
                "fetch https://bot:pa/ss-SECRET@host/x.git?token=T0KEN: refused"
            ),
            "fetch https://***@host/x.git?***: refused"
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
