//! The plan comment and the commit status for one (pull request, source), as values: what a
//! review found becomes a Markdown body with a hidden marker naming the source and the head
//! commit, and a status. No IO: [`crate::review`] reads comments and sends these.

use reconciler::plan::{Plan, Refusal, render};
use schema::Diagnostic;

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

/// How many diagnostics a comment lists; the rest are counted.
const SHOWN_DIAGNOSTICS: usize = 50;

fn marker_prefix(source: &str) -> String {
    format!("<!-- meshploy:plan source={source} ")
}

/// The hidden first line that finds the comment again: the source and the head it describes.
pub fn marker(source: &str, head: &str) -> String {
    format!("{}head={head} -->", marker_prefix(source))
}

/// This source's comment among a pull request's comments.
pub fn find<'a>(comments: &'a [Comment], source: &str) -> Option<&'a Comment> {
    let prefix = marker_prefix(source);
    comments.iter().find(|c| c.body.starts_with(&prefix))
}

/// The head commit a comment of ours describes.
pub fn head_of(body: &str) -> Option<&str> {
    let first = body.lines().next()?;
    let rest = first.split(" head=").nth(1)?;
    rest.strip_suffix(" -->")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

const STALE: &str = "> **Outdated:**";

/// The comment marked as describing an older commit while the plan of `new_head` is made;
/// `None` when it is marked already or describes `new_head`.
pub fn outdated(body: &str, new_head: &str) -> Option<String> {
    let old = head_of(body)?;
    if old == new_head || body.contains(STALE) {
        return None;
    }
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    Some(format!(
        "{first}\n{STALE} this plan describes `{}`, an older commit of this pull request; the plan of `{}` is being made.\n\n{rest}",
        short(old),
        short(new_head)
    ))
}

/// The comment for `review` of `source` at `head`, under [`BODY_LIMIT`].
pub fn body(source: &str, head: &str, review: &Review) -> String {
    let mut out = marker(source, head);
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
    if out.len() > BODY_LIMIT {
        // Only diagnostics or a reason can be this long (a plan is cut by `render::markdown`).
        let mut end = BODY_LIMIT - 200;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(
            "\n```\n\n**Cut here:** the rest would exceed the forge's comment size limit.\n",
        );
    }
    out
}

fn problems(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
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
        Comment {
            id,
            body: body.to_owned(),
        }
    }

    #[test]
    fn a_comment_is_found_by_its_source_and_tells_its_head() {
        let ours = format!("{}\n#### plan", marker("shop", "abc123"));
        let comments = [
            comment(1, "LGTM"),
            comment(2, &format!("{}\nother", marker("shop-2", "def"))),
            comment(3, &ours),
        ];
        assert_eq!(find(&comments, "shop").map(|c| c.id), Some(3));
        assert_eq!(find(&comments, "shop-2").map(|c| c.id), Some(2));
        assert_eq!(find(&comments, "blog"), None);
        assert_eq!(head_of(&ours), Some("abc123"));
        assert_eq!(head_of("LGTM"), None);
    }

    #[test]
    fn a_comment_is_marked_outdated_once_and_keeps_its_marker() {
        let old = body(
            "shop",
            "1111111111111111",
            &Review::Failed { reason: "x".into() },
        );
        let marked = outdated(&old, "2222222222222222").expect("marked");
        assert_eq!(find(&[comment(1, &marked)], "shop").map(|c| c.id), Some(1));
        assert!(marked.contains("describes `111111111111`"), "{marked}");
        assert!(marked.contains("the plan of `222222222222` is being made"));
        assert_eq!(outdated(&marked, "3333"), None, "marked once");
        assert_eq!(outdated(&old, "1111111111111111"), None, "same head");
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
        let text = body("shop", "abcdef0123456789", &review);
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
        let text = body("shop", "abc", &review);
        assert!(text.len() <= BODY_LIMIT, "{}", text.len());
        assert!(text.ends_with("comment size limit.\n"));
    }
}
