//! Who is asking: a bearer token (`meshploy token create`, or the server's `--api-token`),
//! or nobody, which may read only with `--anonymous-read`. Every authenticated request is
//! logged with the token's name, never the token.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use reconciler::names::TokenScope;
use subtle::ConstantTimeEq;

use crate::tokens::{self, Caller};
use crate::{ApiError, AppState};

/// Finds the caller and hands it to the handler; refuses a missing or unknown token.
pub async fn authenticate(
    State((state, known)): State<(AppState, tokens::Known)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(""));
    let caller = match presented {
        None if state.anonymous_read => Caller {
            name: "anonymous".into(),
            scope: TokenScope::Read,
        },
        None => {
            return Err(ApiError::Unauthorized(
                "a bearer token is required (make one with `meshploy token create`)",
            ));
        }
        Some(token) => identify(&state, &known, token).await?,
    };
    tracing::info!(
        caller = %caller.name,
        method = %request.method(),
        path = %request.uri().path(),
        "API request"
    );
    let credential = presented.map_or(tokens::Credential::None, tokens::Credential::token);
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(credential);
    Ok(next.run(request).await)
}

async fn identify(
    state: &AppState,
    known: &tokens::Known,
    token: &str,
) -> Result<Caller, ApiError> {
    // The server's own --api-token, as a digest of equal length compared in constant time.
    if let Some(expected) = state.api_token_sha256
        && bool::from(AppState::token_digest(token).ct_eq(&expected))
    {
        return Ok(Caller {
            name: "api-token".into(),
            scope: TokenScope::Operate,
        });
    }
    known
        .verify(&state.pool, token)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or(ApiError::Unauthorized("the token is not valid"))
}

/// Refuses a caller whose scope does not include `scope`.
pub fn require(caller: &Caller, scope: TokenScope) -> Result<(), ApiError> {
    if caller.scope >= scope {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this needs a token with scope {scope} or more; `{}` has scope {}",
            caller.name, caller.scope
        )))
    }
}
