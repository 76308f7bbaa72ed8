//! Command-line arguments. Parsing only validates; the commands do the work.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Meshploy: a GitOps platform. Projects, services, routes and variable groups are YAML in a
/// git repository; every change is a reviewable plan.
#[derive(Debug, Parser)]
#[command(name = "meshploy", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests: syntax, fields, names, references. Exits 0 when valid, 1 when not.
    Validate {
        /// Directory holding the manifests (`*.yaml`, `*.yml`, searched recursively).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of a manifest document, for editors and tools.
    Schema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable diagnostics.
    Text,
    /// Machine-readable JSON.
    Json,
}
