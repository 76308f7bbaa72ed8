//! The plan comment and the commit status for one (pull request, source), as values: what a
//! review found becomes a Markdown body with a hidden marker naming the source and the head
//! commit, and a status. No IO: [`crate::review`] reads comments and sends these.

use reconciler::plan::{Plan, Refusal, render};
use schema::{Diagnostic, ManifestFile};
use sha2::{Digest, Sha256};

use crate::client::{Comment, State, fit_description};

/// GitHub refuses comment bodies over this many characters.
pub const BODY_LIMIT: usize = 65_536;

/// What planning a pull request's head found.
#[derive(Clone, Debug)]
pub enum Review {
    /// The plan, and why the guard would refuse it at apply (empty: it would apply).
    Planned { plan: Plan, refusals: Vec<Refusal> },
    /// The manifests do not validate.
    Invalid { diagnostics: Vec<Diagnostic> },
    /// Anything else that stops a plan: the manifests declare another source's resources, a
    /// secret cannot be opened, the head cannot be fetched.
    Failed { reason: String },
}

/// What a comment says about the pull request's preview environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preview {
    /// Previews are off for the source (or the comment comes from CI).
    Off,
    /// It runs: where, and how long it lives without a push (`72h`).
    Live { urls: Vec<String>, ttl: String },
    /// There is none, and why.
    Missing { reason: String },
}

/// How many preview URLs a comment lists; the rest are counted.
const SHOWN_URLS: usize = 20;
/// How much of a reason for a missing preview a comment quotes.
const SHOWN_REASON: usize = 1_000;

impl Preview {
    /// The comment's section about the preview (empty when previews are off).
    fn section(&self) -> String {
        match self {
            Preview::Off => String::new(),
            Preview::Live { urls, ttl } => {
                let mut out = String::from(
                    "
#### Preview

",
                );
                if urls.is_empty() {
                    out.push_str("This pull request's preview runs; none of its routes has a host to link to.
");
                } else {
                    out.push_str(
                        "This pull request's preview runs at:

",
                    );
                    for url in urls.iter().take(SHOWN_URLS) {
                        out.push_str(&format!(
                            "- <{url}>
"
                        ));
                    }
                    if urls.len() > SHOWN_URLS {
                        out.push_str(&format!(
                            "- … and {} more
",
                            urls.len() - SHOWN_URLS
                        ));
                    }
                }
                out.push_str(&format!(
                    "
It is destroyed when the pull request is closed or merged, or after {ttl} without a push.
"
                ));
                out
            }
            Preview::Missing { reason } => {
                let reason: String = reason.chars().take(SHOWN_REASON).collect();
                format!(
                    "
#### Preview

No preview: {reason}
"
                )
            }
        }
    }
}

/// How many diagnostics a comment lists; the rest are counted.
const SHOWN_DIAGNOSTICS: usize = 50;

fn marker_prefix(source: &str) -> String {
    format!("<!-- meshploy:plan source={source} ")
}

/// The hidden first line that finds the comment again: the source, the head it describes,
/// and the digest of that head's manifests (see [`manifests_digest`]).
pub fn marker(source: &str, head: &str, manifests: &str) -> String {
    format!(
        "{}head={head} manifests={manifests} -->",
        marker_prefix(source)
    )
}

/// What identifies a head's manifests: SHA-256 over every file's path and bytes, in path
/// order (16 hex digits). A push that changes no manifest keeps it.
pub fn manifests_digest(files: &[ManifestFile]) -> String {
    let mut sorted: Vec<&ManifestFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hash = Sha256::new();
    for file in sorted {
        hash.update((file.path.len() as u64).to_be_bytes());
        hash.update(file.path.as_bytes());
        hash.update((file.bytes.len() as u64).to_be_bytes());
        hash.update(&file.bytes);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This source's comment among a pull request's comments: the newest one that `me` (the
/// token's user) wrote with the source's marker. Anyone can write the marker; a comment of
/// someone else's is never taken for ours, so it is neither edited nor believed.
pub fn find<'a>(comments: &'a [Comment], me: &str, source: &str) -> Option<&'a Comment> {
    let prefix = marker_prefix(source);
    comments
        .iter()
        .rev()
        .find(|c| c.by(me) && c.body.starts_with(&prefix))
}

/// A field (`head`, `manifests`) of a comment's marker.
fn marked<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    let first = body.lines().next()?.strip_suffix(" -->")?;
    first
        .split(' ')
        .find_map(|part| part.strip_prefix(field)?.strip_prefix('='))
}

/// The head commit a comment of ours describes.
pub fn head_of(body: &str) -> Option<&str> {
    marked(body, "head")
}

/// The digest of the manifests a comment of ours describes.
pub fn manifests_of(body: &str) -> Option<&str> {
    marked(body, "manifests")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

const STALE: &str = "> **Outdated:**";

/// The comment marked as describing an older commit while the plan of `new_head` (whose
/// manifests have digest `manifests`) is made; `None` when it is marked already, describes
/// `new_head`, or describes the same manifests (a push that changed none leaves the comment
/// alone).
pub fn outdated(body: &str, new_head: &str, manifests: &str) -> Option<String> {
    let old = head_of(body)?;
    if old == new_head || body.contains(STALE) || manifests_of(body) == Some(manifests) {
        return None;
    }
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    Some(format!(
        "{first}\n{STALE} this plan describes `{}`, an older commit of this pull request; the plan of `{}` is being made.\n\n{rest}",
        short(old),
        short(new_head)
    ))
}

/// The comment for `review` of `source` at `head` (whose manifests have digest
/// `manifests`) and its `preview`, under [`BODY_LIMIT`].
pub fn body(
    source: &str,
    head: &str,
    manifests: &str,
    review: &Review,
    preview: &Preview,
) -> String {
    let mut out = marker(source, head, manifests);
    out.push('\n');
    let title = format!("Meshploy plan for source `{source}` at `{}`", short(head));
    match review {
        Review::Planned { plan, refusals } => {
            out.push_str(&render::markdown(plan, &title));
            if !refusals.is_empty() {
                out.push_str("\n**This plan would be refused when applied:**\n\n");
                for refusal in refusals {
                    out.push_str(&format!("- {refusal}\n"));
                }
            }
        }
        Review::Invalid { diagnostics } => {
            out.push_str(&format!(
                "#### {title}\n\nThe manifests are invalid ({}); nothing can be applied until they are fixed:\n\n```text\n",
                problems(diagnostics.len())
            ));
            for diagnostic in diagnostics.iter().take(SHOWN_DIAGNOSTICS) {
                let line = diagnostic.clone().redacted().one_line();
                // A line never closes the code block early.
                out.push_str(&line.replace("```", "'''"));
                out.push('\n');
            }
            if diagnostics.len() > SHOWN_DIAGNOSTICS {
                out.push_str(&format!(
                    "… and {} more\n",
                    diagnostics.len() - SHOWN_DIAGNOSTICS
                ));
            }
            out.push_str("```\n");
        }
        Review::Failed { reason } => {
            out.push_str(&format!(
                "#### {title}\n\nNo plan could be made:\n\n```text\n{}\n```\n",
                reason.replace("```", "'''")
            ));
        }
    }
    // The preview's section is bounded (URLs and reason counted), so the rest makes room.
    let section = preview.section();
    let limit = BODY_LIMIT - section.len();
    if out.len() > limit {
        // Only diagnostics or a reason can be this long (a plan is cut by `render::markdown`).
        let mut end = limit - 200;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(
            "\n```\n\n**Cut here:** the rest would exceed the forge's comment size limit.\n",
        );
    }
    out.push_str(&section);
    out
}

fn problems(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}

/// Whether `existing` (a comment of ours) already says what `review` says, for the same
/// manifests: then a new head that changed no manifest leaves it as it is.
pub fn says_already(
    existing: &str,
    source: &str,
    manifests: &str,
    review: &Review,
    preview: &Preview,
) -> bool {
    match head_of(existing) {
        Some(head) => {
            manifests_of(existing) == Some(manifests)
                && existing == body(source, head, manifests, review, preview)
        }
        None => false,
    }
}

/// The commit status `meshploy/plan/<source>` for `review`.
pub fn status(source: &str, review: &Review) -> (State, String, String) {
    let context = format!("meshploy/plan/{source}");
    let (state, description) = match review {
        Review::Planned { plan, refusals } if refusals.is_empty() => {
            (State::Success, render::summary_line(plan))
        }
        Review::Planned { refusals, .. } => (
            State::Failure,
            format!(
                "Refused: {}",
                refusals
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        ),
        Review::Invalid { diagnostics } => (
            State::Failure,
            match diagnostics.first() {
                Some(first) => format!(
                    "Invalid manifests ({}): {}",
                    problems(diagnostics.len()),
                    first.clone().redacted().one_line()
                ),
                None => "Invalid manifests".to_owned(),
            },
        ),
        Review::Failed { reason } => (
            State::Failure,
            format!("No plan: {}", reason.lines().next().unwrap_or_default()),
        ),
    };
    (state, context, fit_description(&description))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(id: u64, body: &str) -> Comment {
        by("meshploy-bot", id, body)
    }

    fn by(login: &str, id: u64, body: &str) -> Comment {
        Comment {
            id,
            body: body.to_owned(),
            user: Some(crate::client::User {
                login: login.to_owned(),
            }),
        }
    }

    #[test]
    fn a_comment_is_found_by_its_author_and_source_and_tells_its_head() {
        let ours = format!("{}\n#### plan", marker("shop", "abc123", "0f0f"));
        let forged = format!(
            "{}\nNo changes. Safe to merge.",
            marker("shop", "fff", "0f0f")
        );
        let comments = [
            comment(1, "LGTM"),
            comment(2, &format!("{}\nother", marker("shop-2", "def", "0f0f"))),
            comment(3, &ours),
            by("mallory", 4, &forged),
            Comment {
                user: None,
                ..comment(5, &forged)
            },
        ];
        let find = |source| find(&comments, "Meshploy-Bot", source).map(|c| c.id);
        assert_eq!(
            find("shop"),
            Some(3),
            "only our own, whatever the case of the login"
        );
        assert_eq!(find("shop-2"), Some(2));
        assert_eq!(find("blog"), None);
        let again = [comment(3, &ours), comment(6, &ours)];
        assert_eq!(
            super::find(&again, "meshploy-bot", "shop").map(|c| c.id),
            Some(6),
            "the newest of ours"
        );
        assert_eq!(head_of(&ours), Some("abc123"));
        assert_eq!(manifests_of(&ours), Some("0f0f"));
        assert_eq!(head_of("LGTM"), None);
    }

    #[test]
    fn a_comment_is_marked_outdated_once_and_keeps_its_marker() {
        let failed = Review::Failed { reason: "x".into() };
        let old = body("shop", "1111111111111111", "aaaa", &failed, &Preview::Off);
        let marked = outdated(&old, "2222222222222222", "bbbb").expect("marked");
        let found = find(&[comment(1, &marked)], "meshploy-bot", "shop").map(|c| c.id);
        assert_eq!(found, Some(1));
        assert!(marked.contains("describes `111111111111`"), "{marked}");
        assert!(marked.contains("the plan of `222222222222` is being made"));
        assert_eq!(outdated(&marked, "3333", "cccc"), None, "marked once");
        assert_eq!(
            outdated(&old, "1111111111111111", "bbbb"),
            None,
            "same head"
        );
        assert_eq!(
            outdated(&old, "2222222222222222", "aaaa"),
            None,
            "same manifests"
        );
        // A new head with the same manifests and the same review: nothing to say.
        assert!(says_already(&old, "shop", "aaaa", &failed, &Preview::Off));
        assert!(!says_already(&old, "shop", "bbbb", &failed, &Preview::Off));
        let other = Review::Failed { reason: "y".into() };
        assert!(!says_already(&old, "shop", "aaaa", &other, &Preview::Off));
    }

    #[test]
    fn the_manifests_digest_ignores_order_and_sees_any_change() {
        let a = ManifestFile::new("a.yaml", b"x: 1\n".to_vec());
        let b = ManifestFile::new("b.yaml", b"y: 2\n".to_vec());
        let digest = manifests_digest(&[a.clone(), b.clone()]);
        assert_eq!(digest.len(), 16);
        assert_eq!(digest, manifests_digest(&[b.clone(), a.clone()]));
        let changed = ManifestFile::new("b.yaml", b"y: 3\n".to_vec());
        assert_ne!(digest, manifests_digest(&[a.clone(), changed]));
        let moved = ManifestFile::new("c.yaml", b"y: 2\n".to_vec());
        assert_ne!(digest, manifests_digest(&[a, moved]));
    }

    #[test]
    fn an_invalid_review_lists_diagnostics_and_fails_the_status_briefly() {
        let diagnostics: Vec<Diagnostic> = (0..60)
            .map(|i| {
                Diagnostic::new(
                    "shop.yaml",
                    schema::Loc {
                        line: i + 1,
                        column: 3,
                        len: 1,
                    },
                    schema::Code::UnknownField,
                    format!("unknown field `x{i}` {}", "y".repeat(100)),
                )
            })
            .collect();
        let review = Review::Invalid { diagnostics };
        let text = body("shop", "abcdef0123456789", "0f0f", &review, &Preview::Off);
        assert!(text.contains("The manifests are invalid (60 problems)"));
        assert!(text.contains("shop.yaml:1:3: unknown field `x0`"), "{text}");
        assert!(text.contains("… and 10 more"));
        let (state, context, description) = status("shop", &review);
        assert_eq!(state, State::Failure);
        assert_eq!(context, "meshploy/plan/shop");
        assert!(description.starts_with("Invalid manifests (60 problems): shop.yaml:1:3"));
        assert!(description.chars().count() <= 140);
    }

    #[test]
    fn a_huge_reason_is_cut_under_the_limit() {
        let review = Review::Failed {
            reason: "é".repeat(100_000),
        };
        let text = body("shop", "abc", "0f0f", &review, &Preview::Off);
        assert!(text.len() <= BODY_LIMIT, "{}", text.len());
        assert!(text.ends_with("comment size limit.\n"));
        let missing = Preview::Missing {
            reason: "x".repeat(5_000),
        };
        let text = body("shop", "abc", "0f0f", &review, &missing);
        assert!(text.len() <= BODY_LIMIT, "{}", text.len());
        assert!(text.ends_with(&format!("No preview: {}\n", "x".repeat(1_000))));
    }

    #[test]
    fn the_preview_section_lists_its_urls_or_says_why_there_is_none() {
        let failed = Review::Failed { reason: "x".into() };
        let urls: Vec<String> = (0..25)
            .map(|i| format!("https://pr-7.s{i}.example.com/"))
            .collect();
        let live = Preview::Live {
            urls,
            ttl: "72h".into(),
        };
        let text = body("shop", "abc", "0f0f", &failed, &live);
        assert!(text.contains("#### Preview\n\nThis pull request's preview runs at:\n\n- <https://pr-7.s0.example.com/>\n"), "{text}");
        assert!(text.contains("- … and 5 more\n"), "{text}");
        assert!(
            text.contains("closed or merged, or after 72h without a push."),
            "{text}"
        );
        let missing = Preview::Missing {
            reason: "pull requests from forks get no preview".into(),
        };
        let text = body("shop", "abc", "0f0f", &failed, &missing);
        assert!(
            text.ends_with("#### Preview\n\nNo preview: pull requests from forks get no preview\n"),
            "{text}"
        );
        assert!(!body("shop", "abc", "0f0f", &failed, &Preview::Off).contains("Preview"));
        // A different preview is a different comment, even for the same plan.
        let old = body("shop", "abc", "0f0f", &failed, &live);
        assert!(says_already(&old, "shop", "0f0f", &failed, &live));
        assert!(!says_already(&old, "shop", "0f0f", &failed, &missing));
    }
}
