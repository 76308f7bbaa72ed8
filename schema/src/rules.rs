//! Field rules: pure checks of single values, each returning what is wrong and how to fix it.

/// What is wrong with a value, and optionally how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// Project names that would collide with Kubernetes' or Meshploy's own namespaces.
pub const RESERVED_PROJECTS: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "meshploy-system",
];

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace or object name.
pub fn dns_label(name: &str) -> Result<(), Problem> {
    if name.is_empty() {
        return Err(Problem::new("name is empty"));
    }
    if name.len() > 63 {
        return Err(Problem::new(format!(
            "`{name}` is {} characters long; names are at most 63",
            name.len()
        )));
    }
    let well_formed =
        name.bytes().all(is_label_char) && !name.starts_with('-') && !name.ends_with('-');
    if well_formed {
        return Ok(());
    }
    let fixed: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let fixed = fixed.trim_matches('-');
    let problem = Problem::new(format!(
        "`{name}` is not a valid name: use lowercase letters, digits and `-`, starting and ending with a letter or digit"
    ));
    Err(if fixed.is_empty() {
        problem
    } else {
        problem.hint(format!("did you mean `{fixed}`?"))
    })
}

pub fn project_name(name: &str) -> Result<(), Problem> {
    dns_label(name)?;
    if RESERVED_PROJECTS.contains(&name) {
        return Err(
            Problem::new(format!("project name `{name}` is reserved")).hint(format!(
                "choose another name; reserved: {}",
                RESERVED_PROJECTS.join(", ")
            )),
        );
    }
    Ok(())
}

/// An RFC 1123 host name, optionally with `*` as its whole leftmost label. Returns the
/// lowercase form, which is how hosts are compared.
///
/// `localhost` and address literals are not names a route may claim: the API and console
/// answer there, and a browser sends the console's session cookie to every port of the host
/// it was set for, so a service served under that name would receive it.
pub fn host(host: &str) -> Result<String, Problem> {
    if host.is_empty() {
        return Err(Problem::new("host is empty"));
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        return Err(
            Problem::new(format!("host `{host}` includes a port")).hint(format!(
                "write `host: {name}`; the proxy matches hosts without port `{port}`"
            )),
        );
    }
    if host.contains("://") || host.contains('/') {
        return Err(Problem::new(format!("`{host}` is not a host name"))
            .hint("write only the host, such as `shop.example.com`; put paths in `path`"));
    }
    let lower = host.to_ascii_lowercase();
    if lower.len() > 253 {
        return Err(Problem::new(format!(
            "host is {} characters long; host names are at most 253",
            lower.len()
        )));
    }
    let labels: Vec<&str> = lower.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" {
            if i == 0 && labels.len() > 1 {
                continue;
            }
            return Err(Problem::new(format!(
                "wildcard in `{host}` must be the whole leftmost label of a longer name"
            ))
            .hint("write wildcards as `*.example.com`"));
        }
        if label.contains('*') {
            return Err(Problem::new(format!(
                "`{label}` in `{host}` is a partial wildcard; only `*` as the whole leftmost label is supported"
            ))
            .hint("write wildcards as `*.example.com`"));
        }
        if label.is_empty() {
            return Err(Problem::new(format!("host `{host}` has an empty label")));
        }
        let ok = label.len() <= 63
            && label.bytes().all(is_label_char)
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(Problem::new(format!(
                "label `{label}` of host `{host}` is not valid: use letters, digits and `-` (at most 63), not starting or ending with `-`"
            )));
        }
    }
    let address = labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if lower == "localhost" || address {
        return Err(Problem::new(format!(
            "`{host}` is where Meshploy's API and console answer, not a name for a route"
        ))
        .hint("give the route a name of its own, such as `app.localhost` or `shop.example.com`"));
    }
    Ok(lower)
}

/// A route's path prefix. Returns the normal form (no trailing `/` except for the root), so
/// `/api` and `/api/` are the same prefix.
pub fn route_path(path: &str) -> Result<String, Problem> {
    if !path.starts_with('/') {
        return Err(
            Problem::new(format!("path `{path}` does not start with `/`"))
                .hint(format!("write `/{}`", path.trim_start_matches('/'))),
        );
    }
    if path.contains("//") {
        return Err(Problem::new(format!(
            "path `{path}` contains an empty segment (`//`)"
        )));
    }
    if path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(Problem::new(format!(
            "path `{path}` contains a `.` or `..` segment"
        )));
    }
    if let Some(bad) = path.chars().find(|c| !is_path_char(*c)) {
        let hint = match bad {
            '?' | '#' => "routes match paths only; remove the query or fragment",
            _ => "percent-encode the character, or remove it",
        };
        return Err(Problem::new(format!("path `{path}` contains {bad:?}")).hint(hint));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// RFC 3986 `pchar` plus `/`.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%/".contains(c)
}

/// A health-check path is requested as written, so it may carry a query.
pub fn request_path(path: &str) -> Result<(), Problem> {
    if !path.starts_with('/') {
        return Err(Problem::new(format!(
            "path `{path}` does not start with `/`"
        )));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::new(format!("path `{path}` contains white space")));
    }
    Ok(())
}

pub fn port(value: i64) -> Result<u16, Problem> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Problem::new(format!("port {value} is out of range (1 to 65535)")))
}

/// A whole number within an inclusive range, described by `what` in messages.
pub fn in_range(what: &str, value: i64, min: u32, max: u32) -> Result<u32, Problem> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| Problem::new(format!("{what} {value} is out of range ({min} to {max})")))
}

/// What a quantity measures: memory quantities have one extra classic mistake to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Cpu,
    Memory,
}

/// A Kubernetes resource quantity (`500m`, `1.5`, `256Mi`, `1e3`), non-negative.
pub fn quantity(text: &str, of: Quantity) -> Result<(), Problem> {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let example = match of {
        Quantity::Cpu => "such as `500m`, `1` or `2.5`",
        Quantity::Memory => "such as `256Mi`, `1Gi` or `512M`",
    };
    let invalid = || Problem::new(format!("`{text}` is not a Kubernetes quantity ({example})"));
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    if text.starts_with('-') {
        return Err(Problem::new(format!("quantity `{text}` is negative")));
    }
    if !number_ok {
        return Err(invalid());
    }
    let exponent_ok = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if !SUFFIXES.contains(&suffix) && !exponent_ok {
        let near = match suffix {
            "KB" | "kB" | "Kb" => Some(("k", "Ki")),
            "MB" | "Mb" => Some(("M", "Mi")),
            "GB" | "Gb" => Some(("G", "Gi")),
            "TB" | "Tb" => Some(("T", "Ti")),
            _ => None,
        };
        let problem = invalid();
        return Err(match near {
            Some((decimal, binary)) => problem.hint(format!(
                "did you mean `{number}{decimal}` or `{number}{binary}`?"
            )),
            None => problem,
        });
    }
    if of == Quantity::Memory && suffix == "m" {
        return Err(Problem::new(format!(
            "memory `{text}` means {number} thousandths of a byte (`m` is milli)"
        ))
        .hint(format!("did you mean `{number}Mi` or `{number}M`?")));
    }
    Ok(())
}

/// A POSIX-style environment variable name.
pub fn env_name(name: &str) -> Result<(), Problem> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        return Ok(());
    }
    let fixed: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let problem = Problem::new(format!(
        "`{name}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit"
    ));
    Err(
        if fixed.is_empty() || fixed.starts_with(|c: char| c.is_ascii_digit()) {
            problem
        } else {
            problem.hint(format!("did you mean `{fixed}`?"))
        },
    )
}

/// An external upstream: an absolute `http://` or `https://` URL with a host.
pub fn upstream_url(url: &str) -> Result<(), Problem> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            Problem::new(format!(
                "upstream `{url}` is not an http:// or https:// URL"
            ))
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(Problem::new(format!("upstream `{url}` has no host")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::new(format!(
            "upstream `{url}` contains white space"
        )));
    }
    Ok(())
}

/// A git repository location: non-empty and free of white space. The transport is checked
/// when the repository is fetched.
pub fn git_url(url: &str) -> Result<(), Problem> {
    if url.is_empty() {
        return Err(Problem::new("git URL is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::new(format!(
            "git URL `{url}` contains white space"
        )));
    }
    Ok(())
}

/// The `user:password` part of `scheme://user:password@host/...`, if any. A password may hold
/// an unencoded `/`, so the user information runs to the last `@` before the query, unless
/// what comes before that `@` is plainly a host and path (`host/a@b`, `host:8080/a@b`).
pub fn url_userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let rest = rest.split(['?', '#']).next()?;
    let (info, _) = rest.rsplit_once('@')?;
    let Some((first, _)) = info.split_once('/') else {
        return Some(info);
    };
    // `user:secret/more` is user information; `host`, `host:8080` are a path's beginning.
    let secret_like = first
        .split_once(':')
        .is_some_and(|(_, after)| !after.bytes().all(|b| b.is_ascii_digit()));
    secret_like.then_some(info)
}

/// A git repository location in a manifest holds no credentials: no password in its user
/// information, no user information at all over http(s) (where a token is often given as
/// the user name), and no query over http(s). A manifest lives in git, readable by everyone
/// who can read the repository. The problem's text names the part, never the URL.
pub fn git_url_credentials(url: &str) -> Result<(), Problem> {
    let web = url.starts_with("https://") || url.starts_with("http://");
    let part = match url_userinfo(url) {
        Some(info) if info.contains(':') || web => "user information",
        _ if web
            && url
                .split_once("://")
                .is_some_and(|(_, r)| r.contains(['?', '#'])) =>
        {
            "query"
        }
        _ => return Ok(()),
    };
    Err(Problem::new(format!(
        "the git URL carries credentials in its {part}; a manifest lives in git, where everyone who can read the repository can read them"
    ))
    .hint(
        "write the URL without them, and give them to git on the machines that fetch: a git credential helper (for example `git config --global credential.helper store`, then `git credential approve`), as the README's Repositories section shows",
    ))
}

/// A relative path inside a repository: no absolute paths and no escaping upwards.
pub fn repo_path(path: &str) -> Result<(), Problem> {
    if path.starts_with('/') || path.split('/').any(|s| s == "..") {
        return Err(Problem::new(format!(
            "`{path}` must be a path inside the repository (relative, without `..`)"
        )));
    }
    Ok(())
}

/// The candidate closest to `input`, if it is close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and transpositions of
/// neighbours (optimal string alignment), so `wbe` is one edit from `web`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for good in ["a", "web", "web-2", "0abc", &"a".repeat(63)] {
            assert_eq!(dns_label(good), Ok(()), "{good}");
        }
        for bad in ["", "Web", "web_2", "-web", "web-", "we.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dns_label("My_Web")
                .expect_err("should be rejected")
                .hint
                .as_deref(),
            Some("did you mean `my-web`?")
        );
    }

    #[test]
    fn reserved_projects() {
        assert!(project_name("kube-system").is_err());
        assert!(project_name("shop").is_ok());
    }

    #[test]
    fn hosts() {
        assert_eq!(host("Shop.Example.COM").as_deref(), Ok("shop.example.com"));
        assert_eq!(host("*.example.com").as_deref(), Ok("*.example.com"));
        assert_eq!(host("app.localhost").as_deref(), Ok("app.localhost"));
        assert_eq!(host("1.example.com").as_deref(), Ok("1.example.com"));
        for bad in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "10.1.2.3",
            "",
            "*",
            "a.*.com",
            "*a.example.com",
            "example.com:80",
            "https://x.com",
            "a..b",
            "-a.com",
            "a_b.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(route_path("/").as_deref(), Ok("/"));
        assert_eq!(route_path("/api/").as_deref(), Ok("/api"));
        assert_eq!(route_path("/api/v1").as_deref(), Ok("/api/v1"));
        for bad in [
            "", "api", "/a//b", "/a/../b", "/./a", "/a?b=1", "/a b", "/a#x",
        ] {
            assert!(route_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        for good in ["500m", "1", "2.5", "0.5", "1e3", "1E-2", ".5"] {
            assert_eq!(quantity(good, Quantity::Cpu), Ok(()), "{good}");
        }
        for good in ["256Mi", "1Gi", "512M", "1000", "1.5Gi"] {
            assert_eq!(quantity(good, Quantity::Memory), Ok(()), "{good}");
        }
        for bad in ["", "-1", "abc", "1..2", "1 Gi", "1Xi", "e3", "."] {
            assert!(quantity(bad, Quantity::Cpu).is_err(), "{bad}");
        }
        let mb = quantity("512MB", Quantity::Memory).expect_err("should be rejected");
        assert_eq!(mb.hint.as_deref(), Some("did you mean `512M` or `512Mi`?"));
        let milli = quantity("512m", Quantity::Memory).expect_err("should be rejected");
        assert!(milli.message.contains("thousandths of a byte"), "{milli:?}");
    }

    #[test]
    fn env_names() {
        for good in ["A", "_X", "DATABASE_URL", "a1"] {
            assert_eq!(env_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(env_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            env_name("api-key")
                .expect_err("should be rejected")
                .hint
                .as_deref(),
            Some("did you mean `API_KEY`?")
        );
    }

    #[test]
    fn urls_and_repo_paths() {
        assert!(upstream_url("https://api.example.com/v1").is_ok());
        for bad in ["ftp://x", "https://", "http://a b", "example.com"] {
            assert!(upstream_url(bad).is_err(), "{bad}");
        }
        assert!(git_url("https://github.com/acme/shop.git").is_ok());
        assert!(git_url("").is_err());
        assert!(repo_path("services/web").is_ok());
        assert!(repo_path("../etc").is_err());
        assert!(repo_path("/etc").is_err());
    }

    #[test]
    fn git_urls_carry_no_credentials() {
        for good in [
            "https://github.com/acme/shop.git",
            "ssh://git@github.com/acme/shop.git",
            "git@github.com:acme/shop.git",
            "git://git.example.com/shop.git",
            "file:///srv/git/shop.git",
            "../..",
            "https://host:8080/a/b@c",
        ] {
            assert!(git_url_credentials(good).is_ok(), "{good}");
        }
        for (bad, part) in [
            ("https://bot:t0k@github.com/a/b", "user information"),
            ("https://t0k@github.com/a/b", "user information"),
            ("http://bot:pa/ss@host/x.git", "user information"),
            ("ssh://git:t0k@host/x.git", "user information"),
            ("https://host/x.git?private_token=t0k", "query"),
            ("https://host/x.git#t0k", "query"),
        ] {
            let problem = git_url_credentials(bad).expect_err(bad);
            assert!(problem.message.contains(part), "{bad}: {}", problem.message);
            assert!(!problem.message.contains("t0k") && !problem.message.contains("pa/ss"));
        }
    }

    #[test]
    fn suggestions() {
        let fields = ["replicas", "image", "port", "env"];
        assert_eq!(closest("replica", fields), Some("replicas"));
        assert_eq!(closest("Image", fields), Some("image"));
        assert_eq!(closest("colour", fields), None);
        assert_eq!(closest("wbe", ["web", "api"]), Some("web"));
    }
}
