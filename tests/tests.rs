//! End-to-end tests: they drive the `meshploy` binary as a user would.

mod api;
mod browser;
mod clients;
mod console;
mod embedded_db;
// Shared with the benchmarks; the tests use only the repository writer.
mod fixtures;
mod forge;
#[allow(dead_code)]
#[path = "../examples/support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "../examples/support/git_cli.rs"]
mod git_cli;
mod git_source;
mod isolation;
mod output;
mod plan_apply;
mod previews;
mod proxy;
mod runtime;
mod schema_export;
mod secret;
mod secrets_db;
mod serve;
mod util;
mod validate;
#[path = "../examples/support/yaml_bomb.rs"]
mod yaml_bomb;
