//! The routes and what each answers.

use crate::Config;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use event_binder_core::{BindingState, BindingStatus, Error as CoreError, Result as CoreResult};
use std::sync::Arc;

type Shared = State<Arc<Config>>;

/// The one list of endpoints, for the answers that point a lost client to them.
const ENDPOINTS: &str = "GET /health, GET /metrics, GET /bindings, GET /bindings/{name}, \
                         POST /bindings/{name}/{pause|resume|stop|start}";

pub(crate) fn router(config: Arc<Config>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/bindings", get(list))
        .route("/bindings/{name}", get(status))
        .route("/bindings/{name}/{action}", post(switch))
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(config)
}

async fn health(State(config): Shared) -> Response {
    let health = config.bindings.health();
    // Load balancers and orchestrators read the status code, not the body.
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health)).into_response()
}

async fn metrics(State(config): Shared) -> Response {
    match &config.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no metrics here: these endpoints were built without a PrometheusHandle \
             (Endpoints::metrics)",
        ),
    }
}

async fn list(State(config): Shared) -> Response {
    Json(config.bindings.list()).into_response()
}

async fn status(State(config): Shared, name: Result<Path<String>, PathRejection>) -> Response {
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    answer(config.bindings.status(&name))
}

async fn switch(
    State(config): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (name, action) = match path {
        Ok(Path(path)) => path,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let Some(target) = target_of(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}: a binding can pause, resume, stop or start"),
        );
    };
    let bindings = &config.bindings;
    let switching = async {
        match target {
            BindingState::Paused => bindings.pause(&name).await,
            BindingState::Stopped => bindings.stop(&name).await,
            BindingState::Running => bindings.start(&name).await,
        }
    };
    // A pause waits for in-flight deliveries, which a slow handler can hold for long; the
    // client gets an answer all the same, and the binding goes on getting there.
    match tokio::time::timeout(config.switch_timeout, switching).await {
        Ok(switched) => {
            if switched.is_ok() {
                tracing::info!(binding = %name, state = %target, "binding switched over HTTP");
            }
            answer(switched)
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "binding {name:?} did not get to {target} within {:?}; it goes on getting \
                 there (GET /bindings/{name} tells)",
                config.switch_timeout
            ),
        ),
    }
}

/// The state an action asks for. `resume` and `start` ask for the same: core tells a paused
/// binding from a stopped one only by what its consumer keeps.
fn target_of(action: &str) -> Option<BindingState> {
    match action {
        "pause" => Some(BindingState::Paused),
        "stop" => Some(BindingState::Stopped),
        "resume" | "start" => Some(BindingState::Running),
        _ => None,
    }
}

fn answer(result: CoreResult<BindingStatus>) -> Response {
    match result {
        Ok(status) => Json(status).into_response(),
        // The only configuration a binding's lookup checks is its name.
        Err(CoreError::Config(message)) => error(StatusCode::NOT_FOUND, message),
        Err(shut_down @ CoreError::ShutDown(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, shut_down.to_string())
        }
        Err(other) => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no endpoint {method} {}; there are {ENDPOINTS}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("no endpoint {method} {}; there are {ENDPOINTS}", uri.path()),
    )
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}
