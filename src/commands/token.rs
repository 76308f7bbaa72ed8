//! `meshploy token`: API tokens, made once and shown once.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Format, TokenCommand};
use crate::database;

pub async fn run(command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Create { name, scope, db } => {
            let pool = database::connect(&db, "token").await?;
            let token = api::tokens::create(&pool, &name, scope).await?;
            eprintln!(
                "Made token `{name}` with scope {scope}. It is shown this once; keep it in a secret store:"
            );
            outln!("{token}")?;
        }
        TokenCommand::List { format, db } => {
            let pool = database::connect(&db, "token").await?;
            let tokens = api::tokens::list(&pool).await?;
            match format {
                Format::Json => outln!("{}", serde_json::to_string_pretty(&tokens)?)?,
                Format::Text if tokens.is_empty() => outln!("No tokens.")?,
                Format::Text => {
                    outln!("{:<24} {:<8} {:<26} LAST USED", "NAME", "SCOPE", "CREATED")?;
                    for token in tokens {
                        let at = |t: time::OffsetDateTime| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default()
                        };
                        outln!(
                            "{:<24} {:<8} {:<26} {}",
                            token.name,
                            token.scope,
                            at(token.created_at),
                            token.last_used_at.map(at).unwrap_or_else(|| "never".into())
                        )?;
                    }
                }
            }
        }
        TokenCommand::Revoke { name, db } => {
            let pool = database::connect(&db, "token").await?;
            api::tokens::revoke(&pool, &name).await?;
            outln!("Revoked token `{name}`.")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
