//! End-to-end tests: they drive the `meshploy` binary as a user would.

mod embedded_db;
mod git_source;
mod plan_apply;
mod proxy;
mod schema_export;
mod secret;
mod secrets_db;
mod serve;
mod util;
mod validate;
#[path = "../examples/support/yaml_bomb.rs"]
mod yaml_bomb;
