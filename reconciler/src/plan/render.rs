//! Renderings of a plan: text for terminals, JSON for tools, Markdown for pull requests.
//! Sensitive values are never rendered, only that they change, and URLs never with their
//! credentials.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Value as Json, json};

use super::{Action, Change, FieldChange, Plan, Value};

/// GitHub refuses comments over 65,536 characters; stay well under it.
pub const MARKDOWN_LIMIT: usize = 60_000;
/// Plans with more changes than this are folded under `<details>` in Markdown.
const FOLD_AFTER_CHANGES: usize = 10;

pub const NO_CHANGES: &str = "No changes. The platform's state matches the manifests.";

/// The text rendering, in Terraform's conventions, with ANSI colours when `color` is set.
pub fn text(plan: &Plan, color: bool) -> String {
    if plan.is_empty() {
        return format!("{NO_CHANGES}\n");
    }
    let mut out = String::from("Meshploy will perform the following actions:\n\n");
    out.push_str(&adoption(plan));
    for change in &plan.changes {
        out.push_str(&block(change, color));
        out.push('\n');
    }
    out.push_str(&summary_line(plan));
    out.push('\n');
    out
}

/// `Plan: 1 to add, 2 to change, 0 to destroy.`, and how many resources are adopted.
pub fn summary_line(plan: &Plan) -> String {
    if plan.is_empty() {
        return NO_CHANGES.to_owned();
    }
    let s = plan.summary();
    let adopted = plan
        .adoption
        .as_ref()
        .map(|a| {
            let from = report::printable(&a.from, report::Lines::Escape);
            format!(" {} adopted from {from}.", a.resources.len())
        })
        .unwrap_or_default();
    format!(
        "Plan: {} to add, {} to change, {} to destroy.{adopted}",
        s.add, s.change, s.destroy
    )
}

/// The adopted resources, one per line, before the changes.
pub fn adoption(plan: &Plan) -> String {
    let Some(adoption) = &plan.adoption else {
        return String::new();
    };
    let from = report::printable(&adoption.from, report::Lines::Escape);
    let mut out = format!("  # adopted from source {from}:\n");
    for address in &adoption.resources {
        let _ = writeln!(out, "  > {address}");
    }
    out.push('\n');
    out
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// One change as `text` shows it: its heading, then a line per field.
pub fn block(change: &Change, color: bool) -> String {
    let (verb, sign, code) = match change.action {
        Action::Create => ("will be created", "  +", "32"),
        Action::Update => ("will be updated in-place", "  ~", "33"),
        Action::Replace => ("must be replaced", "-/+", "31"),
        Action::Delete => ("will be destroyed", "  -", "31"),
    };
    let mut out = format!("  # {} {verb}\n", change.address);
    let _ = writeln!(out, "{} {} {{", paint(sign, code, color), change.address);
    let width = change
        .fields
        .iter()
        .map(|f| f.path.len())
        .max()
        .unwrap_or(0);
    for field in &change.fields {
        out.push_str(&field_line(change.action, &shown(field), width, color));
    }
    out.push_str("    }\n");
    out
}

fn field_line(action: Action, field: &FieldChange, width: usize, color: bool) -> String {
    let (sign, code) = match (action, &field.before, &field.after) {
        (Action::Create, ..) | (_, None, Some(_)) => ("+", "32"),
        (Action::Delete, ..) | (_, Some(_), None) => ("-", "31"),
        _ => ("~", "33"),
    };
    let path = format!("{:width$}", field.path);
    let sign = paint(sign, code, color);
    let note = if field.forces_replacement {
        paint(" # forces replacement", "31", color)
    } else {
        String::new()
    };
    let multiline = |v: &Option<Value>| matches!(v, Some(Value::Text(t)) if t.contains('\n'));
    if multiline(&field.before) || multiline(&field.after) {
        let text = |v: &Option<Value>| match v {
            Some(Value::Text(t)) => t.clone(),
            Some(other) => value(other),
            None => String::new(),
        };
        let (old, new) = (text(&field.before), text(&field.after));
        let diff = similar::TextDiff::from_lines(&old, &new);
        let mut out = format!("      {sign} {path} = <<-EOT{note}\n");
        // Each line as text a terminal shows rather than obeys (single-line values are
        // JSON strings, whose escapes already do that).
        for line in diff.unified_diff().context_radius(3).to_string().lines() {
            let line = report::printable(line, report::Lines::Escape);
            let _ = writeln!(out, "          {line}");
        }
        out.push_str("        EOT\n");
        return out;
    }
    let shown = match (action, &field.before, &field.after) {
        (_, Some(Value::Sensitive(_)), _) | (_, _, Some(Value::Sensitive(_))) => {
            "(sensitive value)".to_owned()
        }
        (Action::Create, _, Some(after)) => value(after),
        (Action::Delete, Some(before), _) => value(before),
        (_, Some(before), Some(after)) => format!("{} -> {}", value(before), value(after)),
        (_, None, Some(after)) => value(after),
        (_, Some(before), None) => format!("{} -> null", value(before)),
        (_, None, None) => String::new(),
    };
    format!("      {sign} {path} = {shown}{note}\n")
}

/// The fields whose values are URLs. They are shown without the credentials a URL can carry
/// (user information, query): a plan stored before manifests were refused for holding them
/// may still have them.
const URL_FIELDS: [&str; 2] = ["source.git", "upstream"];

/// `field` as every rendering shows it.
fn shown(field: &FieldChange) -> Cow<'_, FieldChange> {
    if !URL_FIELDS.contains(&field.path.as_str()) {
        return Cow::Borrowed(field);
    }
    let redact = |value: &Option<Value>| match value {
        Some(Value::Text(url)) => Some(Value::Text(git::redact(url))),
        other => other.clone(),
    };
    Cow::Owned(FieldChange {
        before: redact(&field.before),
        after: redact(&field.after),
        ..field.clone()
    })
}

/// A value as written in plan text. Sensitive values are masked.
fn value(v: &Value) -> String {
    match v {
        Value::Text(t) => Json::String(t.clone()).to_string(),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => {
            let quoted: Vec<String> = items
                .iter()
                .map(|i| Json::String(i.clone()).to_string())
                .collect();
            format!("[{}]", quoted.join(", "))
        }
        Value::Sensitive(_) => "(sensitive value)".to_owned(),
    }
}

/// The JSON rendering. Its fields are documented in the README and stable within
/// `formatVersion` 1.
pub fn json(plan: &Plan) -> Json {
    let summary = plan.summary();
    let changes: Vec<Json> = plan
        .changes
        .iter()
        .map(|change| {
            let fields: Vec<Json> = change
                .fields
                .iter()
                .map(|f| {
                    let f = shown(f);
                    let sensitive = matches!(f.before, Some(Value::Sensitive(_)))
                        || matches!(f.after, Some(Value::Sensitive(_)));
                    let mut field = json!({
                        "path": f.path,
                        "sensitive": sensitive,
                        "forcesReplacement": f.forces_replacement,
                    });
                    if !sensitive {
                        field["before"] = f.before.as_ref().map_or(Json::Null, Value::to_json);
                        field["after"] = f.after.as_ref().map_or(Json::Null, Value::to_json);
                    }
                    field
                })
                .collect();
            json!({
                "address": change.address.to_string(),
                "kind": change.address.kind.name(),
                "project": change.address.project,
                "name": change.address.name,
                "action": change.action,
                "protect": change.protect,
                "version": change.version,
                "fields": fields,
            })
        })
        .collect();
    let mut out = json!({
        "formatVersion": "1",
        "summary": { "add": summary.add, "change": summary.change, "destroy": summary.destroy },
        "changes": changes,
    });
    if let Some(adoption) = &plan.adoption {
        out["adoption"] = json!({
            "from": adoption.from,
            "resources": adoption.resources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
    }
    out
}

/// The Markdown rendering for a pull-request comment: a summary line, then the text plan in
/// a `diff` block with the change signs moved to the start of each line so that GitHub
/// colours them. Long plans are folded under `<details>`; plans that would not fit in a
/// comment are cut at a resource boundary with a note saying how many changes are missing.
pub fn markdown(plan: &Plan, title: &str) -> String {
    let mut out = format!("#### {title}\n\n{}\n\n", summary_line(plan));
    if plan.is_empty() {
        return out;
    }
    let fold = plan.changes.len() > FOLD_AFTER_CHANGES;
    if fold {
        let _ = writeln!(
            out,
            "<details><summary>Show the plan ({} changes)</summary>\n",
            plan.changes.len()
        );
    }
    out.push_str("```diff\n");
    out.push_str(&diff_lines(&adoption(plan)));
    let closing = if fold { "```\n\n</details>\n" } else { "```\n" };
    let mut omitted = 0;
    for (i, change) in plan.changes.iter().enumerate() {
        let body = diff_lines(&block(change, false));
        // Leave room for the closing lines and the note about omitted changes.
        if out.len() + body.len() + closing.len() + 200 > MARKDOWN_LIMIT {
            omitted = plan.changes.len() - i;
            break;
        }
        out.push_str(&body);
        out.push('\n');
    }
    out.push_str(closing);
    if omitted > 0 {
        let _ = writeln!(
            out,
            "\n**{omitted} more changes are not shown** (the comment would exceed GitHub's size limit); run `meshploy plan` to see the whole plan."
        );
    }
    out
}

/// Moves each line's change sign to column 0 (`~` and `-/+` become `!`, which GitHub's diff
/// highlighting shows as a change), keeping the columns of the text plan.
fn diff_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let moved = [
            ("-/+", "!", "  "),
            ("+", "+", ""),
            ("-", "-", ""),
            ("~", "!", ""),
        ]
        .into_iter()
        .find_map(|(from, to, pad)| trimmed.strip_prefix(from).map(|rest| (to, pad, rest)));
        let _ = match moved {
            Some((sign, pad, rest)) => writeln!(out, "{sign}{indent}{pad}{rest}"),
            None => writeln!(out, " {line}"),
        };
    }
    out
}
