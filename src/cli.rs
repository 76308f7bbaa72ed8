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
    /// Make keys and seal secrets for variable groups.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random key as `ID:KEY`, ready for MESHPLOY_SECRET_KEYS.
    Keygen {
        /// Key id, recorded in every envelope sealed with the key.
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Seal a secret read from standard input and print the envelope to paste into a
    /// VariableGroup's `secrets`. One trailing newline is removed from the input.
    Encrypt {
        /// Project of the variable group.
        #[arg(long)]
        project: String,
        /// Variable group the secret belongs to.
        #[arg(long)]
        group: String,
        /// Name of the secret (an environment variable name).
        #[arg(long)]
        name: String,
        /// Keys as `id:key[,id:key...]`; the first one seals.
        #[arg(long, env = "MESHPLOY_SECRET_KEYS", hide_env_values = true)]
        secret_keys: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable diagnostics.
    Text,
    /// Machine-readable JSON.
    Json,
}
