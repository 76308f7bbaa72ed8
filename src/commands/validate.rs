//! `meshploy validate`: every problem in the manifests, rendered for people or for tools.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use schema::{DesiredState, Diagnostic, Limits, ManifestFile};
use serde_json::json;

use crate::cli::Format;
use crate::manifests::Manifests;

pub fn run(dir: &Path, format: Format) -> Result<ExitCode> {
    let limits = Limits::default();
    let files = git::dir::read(dir, &limits)?;
    let result = schema::load(&files, &limits);
    match format {
        Format::Text => print_text(&files, &result)?,
        Format::Json => print_json(&files, &result)?,
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Loads manifests for `plan` and `apply`: every problem is printed as `validate` prints
/// it, and any problem is an error.
pub fn load(manifests: &Manifests) -> Result<DesiredState> {
    let files = &manifests.files;
    let result = schema::load(files, &Limits::default());
    if result.is_err() {
        print_text(files, &result)?;
    }
    result.map_err(|diagnostics| {
        anyhow::anyhow!(
            "the manifests in {} are invalid ({} {}); nothing was planned",
            manifests.label,
            diagnostics.len(),
            plural("problem", diagnostics.len())
        )
    })
}

fn print_text(
    files: &[ManifestFile],
    result: &Result<DesiredState, Vec<Diagnostic>>,
) -> Result<()> {
    match result {
        Ok(state) => {
            let counts: Vec<String> = state
                .counts()
                .iter()
                .map(|(kind, n)| format!("{n} {}", plural(kind.name(), *n)))
                .collect();
            outln!(
                "ok: {} {} in {} {} ({})",
                state.len(),
                plural("resource", state.len()),
                files.len(),
                plural("file", files.len()),
                counts.join(", ")
            )?;
        }
        Err(diagnostics) => {
            for diagnostic in diagnostics {
                let source = files
                    .iter()
                    .find(|f| f.path == diagnostic.file)
                    .and_then(|f| std::str::from_utf8(&f.bytes).ok());
                let rendered = diagnostic.render(source);
                eprintln!("{}", report::printable(&rendered, report::Lines::Keep));
            }
            let failing: BTreeSet<&str> = diagnostics.iter().map(|d| d.file.as_str()).collect();
            eprintln!(
                "error: {} {} in {} {}",
                diagnostics.len(),
                plural("problem", diagnostics.len()),
                failing.len(),
                plural("file", failing.len()),
            );
        }
    }
    Ok(())
}

fn print_json(
    files: &[ManifestFile],
    result: &Result<DesiredState, Vec<Diagnostic>>,
) -> Result<()> {
    let report = match result {
        Ok(state) => json!({
            "valid": true,
            "files": files.len(),
            "resources": state.len(),
            "diagnostics": [],
        }),
        Err(diagnostics) => json!({
            "valid": false,
            "files": files.len(),
            "diagnostics": diagnostics,
        }),
    };
    outln!("{}", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

fn plural(word: &str, n: usize) -> String {
    if n == 1 {
        word.to_owned()
    } else if word.ends_with('s') {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}
