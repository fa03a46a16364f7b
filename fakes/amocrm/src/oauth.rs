//! OAuth 2.0: `POST /oauth2/access_token`, token issuing and Bearer checks.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::account::TOKEN_USER_ID;
use crate::model::TokenPair;
use crate::respond::{self, Resp};
use crate::state::{AccessToken, AuthCode, RefreshToken, Shared, State};

/// Authorization codes live 20 minutes.
const CODE_TTL_MS: i64 = 20 * 60 * 1000;
/// Refresh tokens live 3 months.
const REFRESH_TTL_MS: i64 = 90 * 24 * 3600 * 1000;

fn random_bytes(n_uuids: usize) -> Vec<u8> {
    (0..n_uuids).flat_map(|_| uuid::Uuid::new_v4().into_bytes()).collect()
}

fn jwt_like(shared: &Shared, now_s: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
    let payload = json!({
        "aud": shared.config.client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + shared.config.access_token_ttl_secs,
        "sub": TOKEN_USER_ID.to_string(),
        "account_id": shared.config.account_id,
        "base_domain": "amocrm.ru",
        "version": 2,
        "scopes": ["push_notifications", "files", "crm", "files_delete", "notifications"],
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let sig = URL_SAFE_NO_PAD.encode(random_bytes(16));
    format!("{header}.{payload}.{sig}")
}

/// Issues a fresh access + refresh pair.
pub(crate) fn issue_pair(shared: &Shared, state: &mut State) -> TokenPair {
    let now_ms = shared.clock.now_ms();
    let access = jwt_like(shared, now_ms / 1000);
    let refresh = format!("def50200{}", hex::encode(random_bytes(24)));
    state
        .access_tokens
        .insert(access.clone(), AccessToken { expires_at_ms: now_ms + shared.config.access_token_ttl_secs * 1000 });
    state.refresh_tokens.insert(refresh.clone(), RefreshToken { spent: false, expires_at_ms: now_ms + REFRESH_TTL_MS });
    TokenPair { access_token: access, refresh_token: refresh, expires_in: shared.config.access_token_ttl_secs }
}

/// Issues an authorization code, as if a user granted access.
pub(crate) fn issue_code(shared: &Shared, state: &mut State) -> String {
    let code = format!("def50200{}", hex::encode(random_bytes(12)));
    state.codes.insert(code.clone(), AuthCode { used: false, expires_at_ms: shared.clock.now_ms() + CODE_TTL_MS });
    code
}

/// Checks the Bearer token of a REST call; `Err` is the 401 reply.
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), Resp> {
    let unauthorized = || respond::problem(StatusCode::UNAUTHORIZED, "Unauthorized");
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let token = value.strip_prefix("Bearer ").map(str::trim).ok_or_else(unauthorized)?;
    let state = shared.state();
    let entry = state.access_tokens.get(token).ok_or_else(unauthorized)?;
    if shared.clock.now_ms() >= entry.expires_at_ms {
        return Err(unauthorized());
    }
    Ok(())
}

fn oauth_problem(status: StatusCode, hint: &str) -> Resp {
    respond::problem_doc(
        status,
        json!({
            "hint": hint,
            "title": "Некорректный запрос",
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status.as_u16(),
            "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
        }),
    )
}

fn revoked() -> Resp {
    respond::problem_doc(
        StatusCode::UNAUTHORIZED,
        json!({
            "hint": "Token has been revoked",
            "title": "Unauthorized",
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": 401,
            "detail": "The refresh token is invalid or has been revoked",
        }),
    )
}

fn field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
        let map: serde_json::Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        Some(Value::Object(map))
    } else {
        serde_json::from_slice(body).ok()
    }
}

/// `POST /oauth2/access_token`.
pub(crate) fn access_token(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Resp {
    let Some(body) = parse_body(headers, body).filter(Value::is_object) else {
        return oauth_problem(StatusCode::BAD_REQUEST, "Request body is not valid JSON");
    };
    let cfg = &shared.config;
    if field(&body, "client_id") != Some(cfg.client_id.as_str()) {
        return oauth_problem(StatusCode::BAD_REQUEST, "Check the `client_id` parameter");
    }
    if field(&body, "client_secret") != Some(cfg.client_secret.as_str()) {
        return oauth_problem(StatusCode::BAD_REQUEST, "Check the `client_secret` parameter");
    }
    let redirect = field(&body, "redirect_uri");
    let now_ms = shared.clock.now_ms();
    let mut state = shared.state();
    let pair = match field(&body, "grant_type") {
        Some("authorization_code") => {
            let Some(code) = field(&body, "code") else {
                return oauth_problem(StatusCode::BAD_REQUEST, "Check the `code` parameter");
            };
            let Some(entry) = state.codes.get(code).cloned() else {
                return oauth_problem(StatusCode::BAD_REQUEST, "Cannot decrypt the authorization code");
            };
            if redirect != Some(cfg.redirect_uri.as_str()) {
                return oauth_problem(StatusCode::BAD_REQUEST, "Redirect URI is not associated with client");
            }
            if entry.used {
                return oauth_problem(StatusCode::BAD_REQUEST, "Authorization code has been revoked");
            }
            if now_ms >= entry.expires_at_ms {
                return oauth_problem(StatusCode::BAD_REQUEST, "Authorization code has expired");
            }
            if let Some(c) = state.codes.get_mut(code) {
                c.used = true;
            }
            issue_pair(shared, &mut state)
        }
        Some("refresh_token") => {
            let Some(token) = field(&body, "refresh_token") else {
                return oauth_problem(StatusCode::BAD_REQUEST, "Check the `refresh_token` parameter");
            };
            if redirect.is_some_and(|r| r != cfg.redirect_uri) {
                return oauth_problem(StatusCode::BAD_REQUEST, "Redirect URI is not associated with client");
            }
            match state.refresh_tokens.get_mut(token) {
                Some(entry) if !entry.spent && now_ms < entry.expires_at_ms => {
                    entry.spent = true;
                }
                _ => return revoked(),
            }
            state.refreshes += 1;
            issue_pair(shared, &mut state)
        }
        _ => return oauth_problem(StatusCode::BAD_REQUEST, "Check the `grant_type` parameter"),
    };
    respond::json(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": pair.expires_in,
            "server_time": now_ms / 1000,
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
        }),
    )
}
