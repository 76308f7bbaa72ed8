//! The forge's REST API, as much of it as plan comments, statuses and previews need, behind
//! one small trait: GitHub (and GitHub Enterprise, by its API base) and Gitea/Forgejo. The
//! token is sent as a header and appears in no error, log line or debug output.
//!
//! The forge is the truth about a pull request: its head, state, author and labels are read
//! here ([`Forge::pull`]), never taken from a webhook, and the user the token belongs to
//! ([`Forge::me`]) is the only author whose comments Meshploy takes for its own.

use std::fmt;
use std::future::Future;

use serde::Deserialize;
use serde_json::json;

/// A pull request: `owner/name` and its number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PullRef {
    pub repo: String,
    pub number: u64,
}

impl fmt::Display for PullRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

impl std::str::FromStr for PullRef {
    type Err = String;

    /// `owner/name#N`, as `meshploy plan --comment` takes it.
    fn from_str(text: &str) -> Result<PullRef, String> {
        let bad = || format!("`{text}` is not a pull request: write it as owner/name#NUMBER");
        let (repo, number) = text.split_once('#').ok_or_else(bad)?;
        let (owner, name) = repo.split_once('/').ok_or_else(bad)?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !plain(owner) || !plain(name) {
            return Err(bad());
        }
        let number = number.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        Ok(PullRef {
            repo: repo.to_owned(),
            number,
        })
    }
}

/// A comment on a pull request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub body: String,
    /// Who wrote it (absent for a deleted account).
    #[serde(default)]
    pub user: Option<User>,
}

impl Comment {
    /// Whether `login` wrote it (logins compare without case, as forges treat them).
    pub fn by(&self, login: &str) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.login.eq_ignore_ascii_case(login))
    }
}

/// A forge's user, as its login.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct User {
    pub login: String,
}

/// A pull request as the forge has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// The head commit.
    pub head: String,
    /// Neither closed nor merged.
    pub open: bool,
    /// The head is in another repository than the base (or in one that was deleted).
    pub fork: bool,
    /// The author's login.
    pub author: String,
    /// The author's association with the base repository, in GitHub's terms (`OWNER`,
    /// `MEMBER`, `COLLABORATOR`, `CONTRIBUTOR`, `NONE`, ...). Gitea has none: its
    /// equivalent comes from the author's permission on the repository (owner: `OWNER`,
    /// admin or write: `COLLABORATOR`, anything less: `NONE`).
    pub association: String,
    pub labels: Vec<String>,
}

/// A commit status's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Success,
    Failure,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
        }
    }
}

/// A commit status: `context` names it (`meshploy/plan/<source>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub context: String,
    /// At most [`DESCRIPTION_LIMIT`] characters; longer ones are cut with an ellipsis.
    pub description: String,
    pub target_url: Option<String>,
}

/// GitHub refuses a status description over 140 characters.
pub const DESCRIPTION_LIMIT: usize = 140;

/// A description cut to fit, at a character boundary.
pub fn fit_description(text: &str) -> String {
    if text.chars().count() <= DESCRIPTION_LIMIT {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(DESCRIPTION_LIMIT - 1).collect();
    cut.push('…');
    cut
}

/// Why a forge call failed. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{what}: the forge answered {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: cannot reach the forge: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("{what}: the forge's answer cannot be read: {detail}")]
    Unreadable { what: String, detail: String },
}

/// What Meshploy asks of a forge.
pub trait Forge: Send + Sync {
    /// Every comment on the pull request, oldest first.
    fn comments(
        &self,
        pr: &PullRef,
    ) -> impl Future<Output = Result<Vec<Comment>, ForgeError>> + Send;
    fn create_comment(
        &self,
        pr: &PullRef,
        body: &str,
    ) -> impl Future<Output = Result<Comment, ForgeError>> + Send;
    fn edit_comment(
        &self,
        pr: &PullRef,
        id: u64,
        body: &str,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;
    fn set_status(
        &self,
        repo: &str,
        commit: &str,
        status: &Status,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;
    /// The pull request as the forge has it now.
    fn pull(&self, pr: &PullRef) -> impl Future<Output = Result<PullRequest, ForgeError>> + Send;
    /// The login of the user the token belongs to: only that user's comments are ours.
    fn me(&self) -> impl Future<Output = Result<String, ForgeError>> + Send;
}

/// The parts of a pull request that [`Forge::pull`] reads (GitHub's, which Gitea follows).
#[derive(Deserialize)]
struct RawPull {
    state: String,
    head: RawHead,
    user: Option<User>,
    author_association: Option<String>,
    #[serde(default)]
    labels: Vec<RawLabel>,
}

#[derive(Deserialize)]
struct RawHead {
    sha: String,
    repo: Option<RawRepository>,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct RawLabel {
    name: String,
}

/// A user's permission on a Gitea repository.
#[derive(Deserialize)]
struct Permission {
    permission: String,
}

/// Which API a forge speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// GitHub and GitHub Enterprise: `Link` pagination, bearer tokens.
    GitHub,
    /// Gitea and Forgejo (`/api/v1`): issue comments come in one answer.
    Gitea,
}

/// A forge client of either kind, over HTTP.
#[derive(Clone)]
pub struct Client {
    kind: Kind,
    /// The API's base URL, without a trailing slash: `https://api.github.com`,
    /// `https://github.example.com/api/v3`, `https://gitea.example.com/api/v1`.
    base: String,
    token: String,
    http: reqwest::Client,
    /// The token's user: configured, or learnt from the forge on first use.
    user: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .field("user", &self.user.get())
            .field("token", &"(hidden)")
            .finish()
    }
}

/// How long one call to the forge may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Pages of comments read at most (100 each on GitHub).
const MAX_PAGES: usize = 50;

impl Client {
    pub fn new(kind: Kind, base: &str, token: &str) -> Result<Client, ForgeError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("meshploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ForgeError::Unreachable {
                what: "making the forge client".into(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            kind,
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
            user: std::sync::Arc::default(),
        })
    }

    /// The client of a token whose user is `login`, if given: for tokens that may not ask the
    /// forge who they are (GitHub Actions' `GITHUB_TOKEN` and GitHub Apps' tokens are refused
    /// `GET /user`; their comments are written by `github-actions[bot]` or `APP[bot]`).
    pub fn with_user(self, login: Option<&str>) -> Client {
        let Some(login) = login else {
            return self;
        };
        let user = tokio::sync::OnceCell::new();
        let _ = user.set(login.to_owned());
        Client {
            user: std::sync::Arc::new(user),
            ..self
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match self.kind {
            Kind::GitHub => request
                .bearer_auth(&self.token)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28"),
            Kind::Gitea => request
                .header("authorization", format!("token {}", self.token))
                .header("accept", "application/json"),
        }
    }

    /// Sends `request`; a non-2xx answer is [`ForgeError::Refused`] with the forge's message.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ForgeError> {
        let response = request.send().await.map_err(|e| ForgeError::Unreachable {
            what: what.to_owned(),
            detail: e.without_url().to_string(),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(ForgeError::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        what: &str,
        response: reqwest::Response,
    ) -> Result<T, ForgeError> {
        response.json().await.map_err(|e| ForgeError::Unreadable {
            what: what.to_owned(),
            detail: e.without_url().to_string(),
        })
    }
}

/// The URL of the `next` page in a `Link` header, if any.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

impl Forge for Client {
    async fn comments(&self, pr: &PullRef) -> Result<Vec<Comment>, ForgeError> {
        let what = format!("reading the comments of {pr}");
        let mut url = format!(
            "{}/repos/{}/issues/{}/comments",
            self.base, pr.repo, pr.number
        );
        if self.kind == Kind::GitHub {
            url.push_str("?per_page=100");
        }
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self
                .send(&what, self.request(reqwest::Method::GET, &url))
                .await?;
            let next = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let page: Vec<Comment> = Client::json(&what, response).await?;
            all.extend(page);
            // Gitea answers every issue comment at once and sends no `Link` for them.
            match next {
                Some(next) if self.kind == Kind::GitHub => url = next,
                _ => break,
            }
        }
        Ok(all)
    }

    async fn create_comment(&self, pr: &PullRef, body: &str) -> Result<Comment, ForgeError> {
        let what = format!("commenting on {pr}");
        let url = format!(
            "{}/repos/{}/issues/{}/comments",
            self.base, pr.repo, pr.number
        );
        let response = self
            .send(
                &what,
                self.request(reqwest::Method::POST, &url)
                    .json(&json!({ "body": body })),
            )
            .await?;
        Client::json(&what, response).await
    }

    async fn edit_comment(&self, pr: &PullRef, id: u64, body: &str) -> Result<(), ForgeError> {
        let what = format!("editing comment {id} on {pr}");
        let url = format!("{}/repos/{}/issues/comments/{id}", self.base, pr.repo);
        self.send(
            &what,
            self.request(reqwest::Method::PATCH, &url)
                .json(&json!({ "body": body })),
        )
        .await?;
        Ok(())
    }

    async fn set_status(
        &self,
        repo: &str,
        commit: &str,
        status: &Status,
    ) -> Result<(), ForgeError> {
        let what = format!("setting the status {} of {repo}@{commit}", status.context);
        let url = format!("{}/repos/{repo}/statuses/{commit}", self.base);
        let mut body = json!({
            "state": status.state.as_str(),
            "context": status.context,
            "description": fit_description(&status.description),
        });
        if let Some(target) = &status.target_url {
            body["target_url"] = target.clone().into();
        }
        self.send(&what, self.request(reqwest::Method::POST, &url).json(&body))
            .await?;
        Ok(())
    }

    async fn pull(&self, pr: &PullRef) -> Result<PullRequest, ForgeError> {
        let what = format!("reading {pr}");
        let url = format!("{}/repos/{}/pulls/{}", self.base, pr.repo, pr.number);
        let response = self
            .send(&what, self.request(reqwest::Method::GET, &url))
            .await?;
        let raw: RawPull = Client::json(&what, response).await?;
        let author = raw.user.map(|u| u.login).unwrap_or_default();
        let association = match raw.author_association {
            Some(association) => association,
            None => self.association(pr, &author).await?,
        };
        Ok(PullRequest {
            head: raw.head.sha,
            open: raw.state == "open",
            fork: raw
                .head
                .repo
                .is_none_or(|r| !r.full_name.eq_ignore_ascii_case(&pr.repo)),
            author,
            association,
            labels: raw.labels.into_iter().map(|l| l.name).collect(),
        })
    }

    async fn me(&self) -> Result<String, ForgeError> {
        let what = "learning which user the forge token belongs to";
        let login = self
            .user
            .get_or_try_init(|| async {
                let url = format!("{}/user", self.base);
                let response = self
                    .send(what, self.request(reqwest::Method::GET, &url))
                    .await
                    .map_err(|error| match error {
                        ForgeError::Refused {
                            what,
                            status,
                            message,
                        } => ForgeError::Refused {
                            what,
                            status,
                            message: format!(
                                "{message} (name the token's user with `forge.user`, or --forge-user, for example `github-actions[bot]` for GitHub Actions' GITHUB_TOKEN)"
                            ),
                        },
                        other => other,
                    })?;
                let user: User = Client::json(what, response).await?;
                Ok::<_, ForgeError>(user.login)
            })
            .await?;
        Ok(login.clone())
    }
}

impl Client {
    /// Gitea's equivalent of GitHub's author association: the author's permission on the
    /// repository. Reading another user's permission needs admin rights on it; a token
    /// without them learns nothing, and the author counts as `NONE`.
    async fn association(&self, pr: &PullRef, author: &str) -> Result<String, ForgeError> {
        let what = format!("reading the permission of `{author}` on {}", pr.repo);
        let url = format!(
            "{}/repos/{}/collaborators/{author}/permission",
            self.base, pr.repo
        );
        let permission = match self
            .send(&what, self.request(reqwest::Method::GET, &url))
            .await
        {
            Ok(response) => {
                Client::json::<Permission>(&what, response)
                    .await?
                    .permission
            }
            Err(ForgeError::Refused {
                status: 403 | 404, ..
            }) => String::new(),
            Err(error) => return Err(error),
        };
        Ok(match permission.as_str() {
            "owner" => "OWNER",
            "admin" | "write" => "COLLABORATOR",
            _ => "NONE",
        }
        .to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_are_written_owner_name_number() {
        let pr: PullRef = "acme/deploy#12".parse().expect("a pull request");
        assert_eq!((pr.repo.as_str(), pr.number), ("acme/deploy", 12));
        assert_eq!(pr.to_string(), "acme/deploy#12");
        for bad in [
            "acme#1",
            "acme/deploy",
            "acme/deploy#0",
            "acme/deploy#x",
            "/x#1",
            "a b/c#1",
        ] {
            let error = bad.parse::<PullRef>().expect_err(bad);
            assert!(error.contains("owner/name#NUMBER"), "{error}");
        }
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let link = "<https://api.github.com/repos/a/b/issues/1/comments?page=2>; rel=\"next\", \
                    <https://api.github.com/repos/a/b/issues/1/comments?page=5>; rel=\"last\"";
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/repos/a/b/issues/1/comments?page=2")
        );
        assert_eq!(next_link("<https://x/?page=1>; rel=\"prev\""), None);
        assert_eq!(next_link(""), None);
    }

    #[test]
    fn descriptions_are_cut_to_140_characters() {
        assert_eq!(fit_description("short"), "short");
        let long = "é".repeat(200);
        let cut = fit_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let client =
            Client::new(Kind::GitHub, "https://api.github.com/", "ghp_secret").expect("a client");
        let shown = format!("{client:?}");
        assert!(!shown.contains("ghp_secret"), "{shown}");
        assert!(shown.contains("https://api.github.com\""), "{shown}");
    }
}
