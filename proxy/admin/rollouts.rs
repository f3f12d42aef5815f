//! `GET /rollouts`, `GET /rollouts/{route}`, `POST /rollouts/{route}/{promote|pause|resume|abort}`.

use http::{Method, StatusCode};
use serde_json::json;

use super::{AdminCtx, AdminResponse, json_response, method_not_allowed};
use crate::rollout::Op;

pub async fn route(ctx: &AdminCtx, method: &Method, path: &str) -> AdminResponse {
    // Strip the prefix once: a route may itself be called `rollouts`.
    let rest = path.strip_prefix("/rollouts").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let (route, action) = (parts.next().unwrap_or(""), parts.next());
    if parts.next().is_some() {
        return not_found(path);
    }
    match (method, route, action) {
        (&Method::GET, "", None) => {
            json_response(StatusCode::OK, &json!({ "rollouts": ctx.rollouts.list() }))
        }
        (_, "", None) => method_not_allowed("GET"),
        (&Method::GET, route, None) => match ctx.rollouts.get(route) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => not_found_route(route),
        },
        (_, _, None) => method_not_allowed("GET"),
        (&Method::POST, route, Some(action)) => {
            let op = match action {
                "promote" => Op::Promote,
                "pause" => Op::Pause,
                "resume" => Op::Resume,
                "abort" => Op::Abort,
                _ => return not_found(path),
            };
            match ctx.rollouts.command(route, op).await {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err((code, msg)) => json_response(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::CONFLICT),
                    &json!({ "error": msg, "route": route, "action": action }),
                ),
            }
        }
        (_, _, Some(_)) => method_not_allowed("POST"),
    }
}

fn not_found_route(route: &str) -> AdminResponse {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": format!("route `{route}` has no rollout") }),
    )
}

fn not_found(path: &str) -> AdminResponse {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": format!("no admin endpoint {path}"),
                 "endpoints": ["GET /rollouts", "GET /rollouts/{route}", "POST /rollouts/{route}/{promote|pause|resume|abort}"] }),
    )
}
