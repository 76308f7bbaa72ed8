//! Bytes to raw documents: YAML parsing under the limits, spread over cores.

use serde_saphyr::{Budget, Options};

use crate::diagnostic::{Code, Diagnostic};
use crate::manifest::RawDocument;
use crate::rules::{self};
use crate::spanned::{Loc, Spanned};
use crate::unknown;

use super::{Limits, ManifestFile};

/// Parses every file, spreading files over the available cores: YAML parsing dominates the
/// loader's time and files are independent. Results come back in input order.
pub(super) fn parse_all(files: &[ManifestFile], limits: &Limits) -> Vec<Parsed> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if threads == 1 || files.len() < 2 * threads {
        return files.iter().map(|f| parse_file(f, limits)).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| parse_file(f, limits))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// One file's documents and its problems. An unknown field is a problem that leaves the
/// document whole; any other leaves the file `incomplete`, without the documents after it.
pub(super) struct Parsed {
    pub documents: Vec<Spanned<RawDocument>>,
    pub diagnostics: Vec<Diagnostic>,
    pub incomplete: bool,
}

impl From<Diagnostic> for Parsed {
    fn from(diagnostic: Diagnostic) -> Parsed {
        Parsed {
            documents: Vec::new(),
            diagnostics: vec![diagnostic],
            incomplete: true,
        }
    }
}

fn parse_file(file: &ManifestFile, limits: &Limits) -> Parsed {
    match read_file(file, limits) {
        Ok(parsed) => parsed,
        Err(diagnostic) => Parsed::from(*diagnostic),
    }
}

fn read_file(file: &ManifestFile, limits: &Limits) -> Result<Parsed, Box<Diagnostic>> {
    let whole_file = Loc::default();
    if file.size > limits.max_file_bytes as u64 {
        return Err(Box::new(
            Diagnostic::new(
                &file.path,
                whole_file,
                Code::FileTooLarge,
                format!(
                    "file is {} bytes; manifest files are limited to {} bytes",
                    file.size, limits.max_file_bytes
                ),
            )
            .with_hint(Some("split the manifests into several files".into())),
        ));
    }
    let text = std::str::from_utf8(&file.bytes).map_err(|e| {
        let valid = &file.bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        let loc = Loc {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
            len: 1,
        };
        Box::new(
            Diagnostic::new(
                &file.path,
                loc,
                Code::InvalidUtf8,
                "file is not valid UTF-8",
            )
            .with_hint(Some("save the file as UTF-8".into()))
            .redacted(),
        )
    })?;
    // Both option structs are non-exhaustive, so they are built by assignment.
    let mut budget = Budget::default();
    budget.max_documents = limits.max_documents_per_file;
    budget.max_depth = limits.max_depth;
    budget.max_nodes = limits.max_nodes_per_file;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = limits.max_alias_events_per_file;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    let (documents, unknown) = unknown::collecting(|| {
        serde_saphyr::from_multiple_with_options::<Option<Spanned<RawDocument>>>(text, options)
    });
    let mut diagnostics: Vec<Diagnostic> = unknown
        .into_iter()
        .map(|u| redact_secrets(text, unknown_field(&file.path, u.loc, &u.field, u.expected)))
        .collect();
    Ok(match documents {
        Ok(documents) => Parsed {
            documents: documents.into_iter().flatten().collect(),
            diagnostics,
            incomplete: false,
        },
        Err(e) => {
            diagnostics.push(redact_secrets(
                text,
                yaml_diagnostic(&file.path, &e, limits),
            ));
            Parsed {
                documents: Vec::new(),
                diagnostics,
                incomplete: true,
            }
        }
    })
}

/// An unknown field, with the nearest known one as a hint.
pub(super) fn unknown_field(path: &str, loc: Loc, field: &str, expected: &[&str]) -> Diagnostic {
    let hint = match rules::closest(field, expected.iter().copied()) {
        Some(near) => format!("did you mean `{near}`?"),
        None if expected.is_empty() => "this mapping has no fields".to_owned(),
        None => format!("expected one of: {}", expected.join(", ")),
    };
    Diagnostic::new(
        path,
        loc,
        Code::UnknownField,
        format!("unknown field `{field}`"),
    )
    .with_hint(Some(hint))
}

/// Turns a parser error into a diagnostic, with a suggestion for misspelt fields.
/// A parser's message may quote the text it stopped at (`unknown anchor`, an unexpected
/// character, an invalid tag). When that text is inside a `secrets` mapping, or the message
/// quotes any value written under one, it may be a secret pasted in plain text: the message
/// is replaced and the line is never shown, so it reaches no output, status row or log.
fn redact_secrets(text: &str, diagnostic: Diagnostic) -> Diagnostic {
    let blocks = secrets_blocks(text);
    let located = blocks
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&(diagnostic.line as usize)));
    let lines: Vec<&str> = text.lines().collect();
    let quoted = blocks.iter().any(|(first, last)| {
        lines[first - 1..*last].iter().any(|line| {
            let value = line.split_once(':').map_or(*line, |(_, v)| v);
            value
                .split(|c: char| c.is_whitespace() || "\"'{}[],".contains(c))
                .any(|word| word.len() >= 4 && diagnostic.message.contains(word))
        })
    });
    if !located && !quoted {
        return diagnostic;
    }
    Diagnostic {
        message: "the YAML cannot be read here, inside `secrets` (the text is not shown: it may be a secret)".into(),
        hint: Some("a secret's value must be an envelope made by `meshploy secret encrypt`; check the quoting of the lines around it".into()),
        ..diagnostic
    }
    .redacted()
}

/// The line ranges (1-based, inclusive) of every `secrets:` mapping: the key's line and the
/// lines below it that are indented deeper, blank or comments. A flow mapping written on the
/// key's line is inside its range too.
fn secrets_blocks(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let key = trimmed
            .trim_start_matches(['{', ' ', ','])
            .trim_start_matches(['"', '\''])
            .starts_with("secrets");
        if !key || !trimmed.contains(':') {
            continue;
        }
        let own = indent(line);
        let mut last = i;
        for (j, next) in lines.iter().enumerate().skip(i + 1) {
            let blank = next.trim().is_empty() || next.trim_start().starts_with('#');
            if !blank && indent(next) <= own {
                break;
            }
            last = j;
        }
        blocks.push((i + 1, last + 1));
    }
    blocks
}

fn yaml_diagnostic(path: &str, error: &serde_saphyr::Error, limits: &Limits) -> Diagnostic {
    use serde_saphyr::Error as E;
    let mut inner = error.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let loc = error.location().map(Loc::from_saphyr).unwrap_or_default();
    let message =
        serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, inner)
            .into_owned();
    let (code, message, hint) = match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => return unknown_field(path, loc, field, expected),
        E::SerdeMissingField { field, .. } => {
            (Code::MissingField, format!("missing field `{field}`"), None)
        }
        E::Budget { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => (
            Code::YamlLimit,
            message,
            Some(format!(
                "manifests are limited to {} documents, {} levels of nesting and {} alias-expanded nodes per file",
                limits.max_documents_per_file, limits.max_depth, limits.max_alias_events_per_file
            )),
        ),
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidValue { .. }
        | E::InvalidScalar { .. }
        | E::InvalidBooleanStrict { .. }
        | E::NullIntoString { .. }
        | E::SerdeInvalidLength { .. }
        | E::Message { .. } => (Code::InvalidType, message, None),
        _ => (Code::YamlSyntax, message, None),
    };
    // A document count breach is its own code, so tools can tell it from an alias bomb.
    let code = if code == Code::YamlLimit && message.contains("documents") {
        Code::TooManyDocuments
    } else {
        code
    };
    Diagnostic::new(path, loc, code, message).with_hint(hint)
}
