//! Diagnostics: what is wrong with a manifest, where, and how to fix it.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::spanned::Loc;

/// The closed set of problems the loader reports. The kebab-case names are part of the JSON
/// output and stay stable across releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The file is not valid UTF-8.
    InvalidUtf8,
    /// The file is larger than the per-file limit.
    FileTooLarge,
    /// The file holds more documents than the per-file limit.
    TooManyDocuments,
    /// The YAML exceeds a parser budget (alias expansion, nesting depth, node count).
    YamlLimit,
    /// The YAML itself is malformed.
    YamlSyntax,
    /// A field that the kind does not have.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong type.
    InvalidType,
    /// `apiVersion` is not one this release reads.
    UnsupportedApiVersion,
    /// `kind` is not a known kind.
    UnknownKind,
    /// A resource or project name is not a DNS-1123 label.
    InvalidName,
    /// A project name that Kubernetes or Meshploy keep for themselves.
    ReservedName,
    /// A route host is not an RFC 1123 host name.
    InvalidHost,
    /// A route or health-check path is malformed.
    InvalidPath,
    /// A port outside 1..=65535.
    InvalidPort,
    /// A number outside its allowed range.
    OutOfRange,
    /// A CPU or memory value that is not a Kubernetes quantity.
    InvalidQuantity,
    /// An environment variable name that processes cannot receive.
    InvalidEnvName,
    /// A URL that cannot be used.
    InvalidUrl,
    /// A URL that carries credentials, which a manifest (kept in git) must not hold.
    CredentialsInUrl,
    /// A value outside its allowed set (an unknown build strategy, an empty command).
    InvalidValue,
    /// Fields that contradict each other (both `image` and `source`, neither, ...).
    Conflict,
    /// Two documents declare the same address.
    DuplicateResource,
    /// A variable name that appears twice where only one value can win.
    DuplicateVariable,
    /// A reference to something that is not declared.
    UnknownReference,
    /// Two routes claim the same host and path.
    RouteConflict,
    /// A secret that is not a well-formed envelope.
    InvalidSecret,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidUtf8 => "invalid-utf8",
            Code::FileTooLarge => "file-too-large",
            Code::TooManyDocuments => "too-many-documents",
            Code::YamlLimit => "yaml-limit",
            Code::YamlSyntax => "yaml-syntax",
            Code::UnknownField => "unknown-field",
            Code::MissingField => "missing-field",
            Code::InvalidType => "invalid-type",
            Code::UnsupportedApiVersion => "unsupported-api-version",
            Code::UnknownKind => "unknown-kind",
            Code::InvalidName => "invalid-name",
            Code::ReservedName => "reserved-name",
            Code::InvalidHost => "invalid-host",
            Code::InvalidPath => "invalid-path",
            Code::InvalidPort => "invalid-port",
            Code::OutOfRange => "out-of-range",
            Code::InvalidQuantity => "invalid-quantity",
            Code::InvalidEnvName => "invalid-env-name",
            Code::InvalidUrl => "invalid-url",
            Code::CredentialsInUrl => "credentials-in-url",
            Code::InvalidValue => "invalid-value",
            Code::Conflict => "conflict",
            Code::DuplicateResource => "duplicate-resource",
            Code::DuplicateVariable => "duplicate-variable",
            Code::UnknownReference => "unknown-reference",
            Code::RouteConflict => "route-conflict",
            Code::InvalidSecret => "invalid-secret",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Another place that a diagnostic refers to, such as the first declaration of a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Related {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// One problem in the manifests. Line and column are 1-based; line 0 means the problem
/// concerns the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    #[serde(skip)]
    pub len: u32,
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Related>,
    /// The source line may hold a secret in plain text (a value pasted where an envelope
    /// belongs), so renderings must not quote it.
    #[serde(skip)]
    pub redact_line: bool,
}

impl Diagnostic {
    pub fn new(file: &str, loc: Loc, code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            line: loc.line,
            column: loc.column,
            len: loc.len,
            code,
            message: message.into(),
            hint: None,
            related: Vec::new(),
            redact_line: false,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Diagnostic {
        self.hint = hint;
        self
    }

    pub fn with_related(mut self, file: &str, loc: Loc, message: impl Into<String>) -> Diagnostic {
        self.related.push(Related {
            file: file.to_owned(),
            line: loc.line,
            column: loc.column,
            message: message.into(),
        });
        self
    }

    /// Marks a diagnostic whose line may hold a secret in plain text. This is the one secret
    /// rule for every rendering (rustc-style, one line, JSON): the line is never quoted. The
    /// message and hint of a redacted diagnostic are written from fixed text and names only,
    /// never from the value, so they are shown everywhere.
    pub fn redacted(mut self) -> Diagnostic {
        self.redact_line = true;
        self
    }

    /// One line, `file:line:column: message [code] (help: hint)`, for status and logs.
    pub fn one_line(&self) -> String {
        let hint = self
            .hint
            .as_ref()
            .map(|hint| format!(" (help: {hint})"))
            .unwrap_or_default();
        format!(
            "{}:{}:{}: {} [{}]{hint}",
            self.file, self.line, self.column, self.message, self.code
        )
    }

    /// Renders in the style of rustc: the message, `--> file:line:column`, the source line
    /// with a caret under the offending text, then the hint and related places. `source` is
    /// the text of `self.file` when it is available.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "error[{}]: {}", self.code, self.message);
        let line_text = source
            .filter(|_| self.line > 0 && !self.redact_line)
            .and_then(|s| s.lines().nth(self.line as usize - 1));
        let gutter = " ".repeat(self.line.to_string().len());
        if self.line == 0 {
            let _ = writeln!(out, "{gutter}--> {}", self.file);
        } else {
            let _ = writeln!(
                out,
                "{gutter}--> {}:{}:{}",
                self.file, self.line, self.column
            );
        }
        if let Some(text) = line_text {
            let text = text.trim_end_matches('\r');
            let indent = self.column.saturating_sub(1) as usize;
            let available = text.chars().count().saturating_sub(indent).max(1);
            let width = (self.len as usize).clamp(1, available);
            let pad: String = text
                .chars()
                .take(indent)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{gutter} |");
            let _ = writeln!(out, "{} | {text}", self.line);
            let _ = writeln!(out, "{gutter} | {pad}{}", "^".repeat(width));
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "{gutter} = help: {hint}");
        }
        for related in &self.related {
            let _ = writeln!(
                out,
                "{gutter} = note: {} at {}:{}:{}",
                related.message, related.file, related.line, related.column
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn sample() -> Diagnostic {
        Diagnostic::new(
            "services/web.yaml",
            Loc {
                line: 2,
                column: 3,
                len: 7,
            },
            Code::UnknownField,
            "unknown field `replica`",
        )
        .with_hint(Some("did you mean `replicas`?".into()))
    }

    #[test]
    fn renders_source_line_with_caret_and_hint() {
        let source = "spec:\n  replica: 3\n";
        expect![[r#"
            error[unknown-field]: unknown field `replica`
             --> services/web.yaml:2:3
              |
            2 |   replica: 3
              |   ^^^^^^^
              = help: did you mean `replicas`?
        "#]]
        .assert_eq(&sample().render(Some(source)));
    }

    #[test]
    fn redacted_diagnostics_never_quote_the_source() {
        let source = "secrets:\n  PASSWORD: hunter2\n";
        let mut diagnostic = sample().redacted();
        diagnostic.line = 2;
        let rendered = diagnostic.render(Some(source));
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("services/web.yaml:2:3"), "{rendered}");
    }

    #[test]
    fn one_line_names_the_place_code_and_hint() {
        assert_eq!(
            Diagnostic::new("g.yaml", Loc::default(), Code::InvalidSecret, "bad").one_line(),
            "g.yaml:0:0: bad [invalid-secret]"
        );
        assert_eq!(
            sample().one_line(),
            "services/web.yaml:2:3: unknown field `replica` [unknown-field] (help: did you mean `replicas`?)"
        );
    }
}
