//! `meshploy secret`: key generation and sealing. The plaintext read here goes straight
//! into a `Plaintext` and is never printed.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reconciler::secrets::{self, Keyring, Place, Plaintext, SecretError};
use reconciler::{apply, pipeline};

use super::keyring;
use crate::cli::{KeyArgs, SecretCommand};
use crate::database;

pub async fn run(command: SecretCommand) -> Result<ExitCode> {
    match command {
        SecretCommand::Keygen { id } => {
            if !schema::envelope::is_key_id(&id) {
                bail!("key id `{id}` is not valid: use 1 to 32 lowercase letters, digits and `-`");
            }
            outln!("{id}:{}", secrets::generate_key())?;
            eprintln!(
                "Keep this key secret. Give it to Meshploy as MESHPLOY_SECRET_KEYS; to rotate, put a new key first and keep the old one after it."
            );
        }
        SecretCommand::Encrypt {
            project,
            group,
            name,
            keys,
        } => {
            for (what, value) in [("project", &project), ("group", &group)] {
                if let Err(problem) = schema::rules::dns_label(value) {
                    bail!("--{what}: {}", problem.message);
                }
            }
            if let Err(problem) = schema::rules::env_name(&name) {
                bail!("--name: {}", problem.message);
            }
            let keys = required(&keys)?;
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .context("cannot read the secret from standard input")?;
            if value.ends_with(b"\n") {
                value.pop();
            }
            if value.is_empty() {
                bail!("the secret read from standard input is empty");
            }
            let place = Place::new(&project, &group, &name);
            outln!("{}", keys.seal(&place, &Plaintext::new(value)))?;
        }
        SecretCommand::Reseal { keys, db } => {
            let keys = required(&keys)?;
            let pool = database::connect(&db, "secret reseal").await?;
            // The apply lock keeps an apply from writing secrets under the old key meanwhile.
            let mut tx = pipeline::begin_locked(&pool, 30_000).await?;
            let count = apply::reseal(&mut tx, &keys).await?;
            tx.commit().await?;
            outln!(
                "Re-sealed {count} stored {} under key `{}`.",
                if count == 1 { "secret" } else { "secrets" },
                keys.ids()[0]
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn required(args: &KeyArgs) -> Result<Keyring> {
    Ok(keyring(args)?.ok_or(SecretError::NoKeys)?)
}
