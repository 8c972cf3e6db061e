//! The HTTP endpoint (the only home of `tiny_http`): `/metrics` in the
//! Prometheus text format, `/api/state` as JSON, and the web view at `/`.
//! Read-only; it serves what the process already knows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use tiny_http::{Header, Request, Response, Server};

use super::Observer;

const PAGE: &str = include_str!("page.html");

/// Requests answered at once; more get a 503.
const MAX_ANSWERING: usize = 16;

/// A running endpoint; dropping it stops it.
pub struct Endpoint {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// The address it listens on (the port chosen, when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `observer` on `addr` (HOST:PORT; port 0 picks a free one).
pub fn serve(addr: &str, observer: Arc<Observer>) -> Result<Endpoint> {
    let server = Server::http(addr).map_err(|e| anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound =
        server.server_addr().to_ip().ok_or_else(|| anyhow!("cannot serve metrics on {addr}: not an IP address"))?;
    let server = Arc::new(server);
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for request in s.incoming_requests() {
                // Each answer on a thread of its own: a client that reads
                // slowly holds up no one else, nor the process's shutdown.
                if busy.load(Ordering::Relaxed) >= MAX_ANSWERING {
                    let _ = request.respond(Response::from_string("busy\n").with_status_code(503));
                    continue;
                }
                let (observer, mine) = (observer.clone(), busy.clone());
                busy.fetch_add(1, Ordering::Relaxed);
                let spawned = std::thread::Builder::new().name("metrics answer".into()).spawn(move || {
                    answer(request, &observer);
                    mine.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    // No thread: the request is dropped unanswered (its client sees the close).
                    busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(Endpoint { server, addr: bound, thread: Some(thread) })
}

fn answer(request: Request, observer: &Observer) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let get = matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head);
    let (status, kind, body) = match (get, path.as_str()) {
        (false, _) => (405, "text/plain; charset=utf-8", "only GET is served here\n".to_string()),
        (true, "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", observer.render_metrics()),
        (true, "/api/state") => match serde_json::to_string(&observer.state()) {
            Ok(json) => (200, "application/json", json),
            Err(e) => (500, "text/plain; charset=utf-8", format!("cannot encode the state: {e}\n")),
        },
        (true, "/" | "/index.html") => (200, "text/html; charset=utf-8", PAGE.to_string()),
        (true, _) => (404, "text/plain; charset=utf-8", format!("no page {path}: try / or /metrics\n")),
    };
    let mut response = Response::from_string(body).with_status_code(status);
    for (name, value) in [("Content-Type", kind), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
    {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    // A client that went away is its own problem.
    let _ = request.respond(response);
}
