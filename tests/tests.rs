//! End-to-end tests: they drive the `meshploy` binary as a user would.

mod schema_export;
mod secret;
mod util;
mod validate;
#[path = "../examples/support/yaml_bomb.rs"]
mod yaml_bomb;
