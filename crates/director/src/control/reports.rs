//! What each control command does and answers: the director's side of `postern ctl`.

use std::fmt::Write;

use serde_json::json;

use super::protocol::{Request, Response};
use crate::director::Director;
use crate::states::ServerState;

/// Carries out one request.
pub(crate) fn answer(director: &Director, request: Request) -> Response {
    match request {
        Request::Servers => servers(director),
        Request::Server {
            backend,
            server,
            state,
        } => set_state(director, &backend, &server, &state),
        Request::User { user } => user_report(director, &user),
        Request::Kick { user } => kick(director, &user),
    }
}

fn servers(director: &Director) -> Response {
    let mut rows = vec![[
        "BACKEND".to_owned(),
        "SERVER".to_owned(),
        "ROUTE".to_owned(),
        "STATE".to_owned(),
        "HEALTH".to_owned(),
        "SESSIONS".to_owned(),
        "USERS".to_owned(),
    ]];
    let mut data = Vec::new();
    for b in director.backends.load().iter() {
        let routed = b.route.is_some();
        for s in b.pool.servers() {
            let state = director.states.get(&b.name, &s.label);
            let (_, users) = director.registry.counts(&b.name, &s.label);
            let health = if s.up { "up" } else { "down" };
            rows.push([
                b.name.clone(),
                s.label.clone(),
                if routed { "user" } else { "connection" }.to_owned(),
                if routed { state.as_str() } else { "-" }.to_owned(),
                health.to_owned(),
                s.sessions.to_string(),
                if routed {
                    users.to_string()
                } else {
                    "-".to_owned()
                },
            ]);
            data.push(json!({
                "backend": b.name,
                "server": s.label,
                "route": if routed { "user" } else { "connection" },
                "state": routed.then_some(state.as_str()),
                "up": s.up,
                "sessions": s.sessions,
                "users": routed.then_some(users),
            }));
        }
    }
    Response::done(table(&rows), json!({ "servers": data }))
}

fn set_state(director: &Director, backend: &str, server: &str, state: &str) -> Response {
    let Some(state) = ServerState::parse(state) else {
        return Response::failed(format!(
            "{state:?} is not a server state; use online, standby or offline"
        ));
    };
    let backends = director.backends.load();
    let Some(b) = backends.iter().find(|b| b.name == backend) else {
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        return Response::failed(format!(
            "no backend {backend:?}; the backends are {}",
            names.join(", ")
        ));
    };
    if b.route.is_none() {
        return Response::failed(format!(
            "backend {backend:?} routes by connection; server states apply to route = \"user\" backends"
        ));
    }
    let servers = b.pool.servers();
    if !servers.iter().any(|s| s.label == server) {
        let labels: Vec<&str> = servers.iter().map(|s| s.label.as_str()).collect();
        return Response::failed(format!(
            "backend {backend:?} has no server {server:?}; its servers are {}",
            labels.join(", ")
        ));
    }
    let was = director.states.get(backend, server);
    let saved = director.set_state(backend, server, state);
    let (sessions, users) = director.registry.counts(backend, server);
    let mut text = format!("{backend} {server}: {state} (was {was})");
    match state {
        ServerState::Offline if sessions > 0 => {
            let _ = write!(
                text,
                "; its {sessions} session(s) of {users} user(s) here get the goodbye over {:?}",
                director.spread()
            );
        }
        ServerState::Standby => text.push_str("; it keeps its own users and takes no one else's"),
        _ => {}
    }
    if let Err(e) = saved {
        return Response::failed(format!("{text}, but: {}", postern_metrics::ErrorChain(&e)));
    }
    Response::done(
        text,
        json!({ "backend": backend, "server": server, "state": state, "was": was }),
    )
}

fn user_report(director: &Director, user: &str) -> Response {
    let mut text = format!("{user}\n");
    let mut placements = Vec::new();
    for b in director
        .backends
        .load()
        .iter()
        .filter(|b| b.route.is_some())
    {
        let servers = b.pool.servers();
        match director.placement_in(b, &servers, user) {
            Some(p) => {
                let server = &servers[p.index].label;
                let _ = writeln!(text, "  {}: {server} ({})", b.name, p.why.as_str());
                placements
                    .push(json!({ "backend": b.name, "server": server, "why": p.why.as_str() }));
            }
            None => {
                let _ = writeln!(text, "  {}: no server up and online", b.name);
                placements.push(json!({ "backend": b.name, "server": null, "why": "none" }));
            }
        }
    }
    if placements.is_empty() {
        text.push_str("  (no backend routes by user)\n");
    }
    let sessions = director.registry.sessions_of(user);
    let _ = writeln!(text, "sessions on this instance: {}", sessions.len());
    for s in &sessions {
        let _ = writeln!(
            text,
            "  #{} {} {} -> {} {}{}",
            s.id,
            s.listener,
            s.peer,
            s.backend,
            s.server,
            if s.leaving { " (leaving)" } else { "" }
        );
    }
    Response::done(
        text.trim_end().to_owned(),
        json!({ "user": user, "placements": placements, "sessions": sessions }),
    )
}

fn kick(director: &Director, user: &str) -> Response {
    let n = director.registry.kick(user);
    tracing::info!(user, sessions = n, "ctl kick");
    Response::done(
        format!("{n} session(s) of {user} asked to leave"),
        json!({ "user": user, "sessions": n }),
    )
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_end().to_owned()
}
