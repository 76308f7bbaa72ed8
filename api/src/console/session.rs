//! Logging in to the console with an API token. The token is checked once, at login; the
//! browser then holds only a session cookie (HttpOnly, so no script reads it; SameSite=Strict,
//! so no other site's page can send it). The database keeps the session's digest, tied to
//! its token: revoking the token ends the session.

use axum::Form;
use axum::extract::{Request, State};
use axum::http::header::{COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use reconciler::names::TokenScope;

use super::pages::{LoginPage, Nav};
use super::{PageError, render};
use crate::tokens::{self, Caller, SESSION_HOURS};
use crate::{ApiError, AppState};

const COOKIE_NAME: &str = "meshploy_session";

/// The session cookie's value, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME && !value.is_empty()).then(|| value.to_owned())
        })
}

/// Finds the caller from the session cookie (or lets anyone read with `--anonymous-read`);
/// sends everyone else to the login form. Every request is logged with the token's name.
pub async fn require(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, PageError> {
    let cookie = cookie(request.headers());
    let session = match &cookie {
        Some(value) => tokens::session(&state.pool, value)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        None => None,
    };
    let (caller, credential) = match (session, cookie) {
        (Some(caller), Some(cookie)) => (caller, tokens::Credential::session(&cookie)),
        _ if state.anonymous_read => (
            Caller {
                name: "anonymous".into(),
                scope: TokenScope::Read,
            },
            tokens::Credential::None,
        ),
        _ => return Ok(to_login()),
    };
    tracing::info!(
        caller = %caller.name,
        method = %request.method(),
        path = %request.uri().path(),
        "console request"
    );
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(credential);
    Ok(next.run(request).await)
}

fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response()
}

/// `GET /login`
pub async fn form(State(state): State<AppState>) -> Response {
    login_page(&state, None, StatusCode::OK)
}

fn login_page(state: &AppState, problem: Option<&str>, status: StatusCode) -> Response {
    let page = LoginPage {
        nav: Nav::default(),
        problem: problem.map(str::to_owned),
        hours: SESSION_HOURS,
        anonymous: state.anonymous_read,
    };
    (status, render(&page)).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /login`: a valid token opens a session and goes to the overview; anything else
/// shows the form again with what was wrong (never the token).
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let Ok(Form(login)) = form else {
        return Ok(login_page(
            &state,
            Some("Paste an API token into the form."),
            StatusCode::BAD_REQUEST,
        ));
    };
    let caller = tokens::verify(&state.pool, login.token.trim())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let Some(caller) = caller else {
        tracing::info!("console login refused: not a valid token");
        return Ok(login_page(
            &state,
            Some(
                "That is not a valid token: it may be mistyped or revoked. Tokens come from \
                 `meshploy token create` (the server's --api-token cannot log in).",
            ),
            StatusCode::UNAUTHORIZED,
        ));
    };
    let session = tokens::open_session(&state.pool, &caller.name)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::info!(caller = %caller.name, "console login");
    // Marked Secure when a TLS-terminating proxy in front says the browser used HTTPS.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE_NAME}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_HOURS * 3600,
        if secure { "; Secure" } else { "" }
    );
    Ok((
        StatusCode::SEE_OTHER,
        [(LOCATION, "/".to_owned()), (SET_COOKIE, cookie)],
    )
        .into_response())
}

/// `POST /logout`: ends the session and forgets the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if let Some(value) = cookie(&headers) {
        tokens::close_session(&state.pool, &value)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    let expired = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((
        StatusCode::SEE_OTHER,
        [(LOCATION, "/login".to_owned()), (SET_COOKIE, expired)],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_empty_ones_are_not_sessions() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; meshploy_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        headers.insert(
            COOKIE,
            HeaderValue::from_static("meshploy_session=; other=x"),
        );
        assert_eq!(cookie(&headers), None);
        headers.insert(COOKIE, HeaderValue::from_static("meshploy_sessionx=abc"));
        assert_eq!(cookie(&headers), None);
    }
}
