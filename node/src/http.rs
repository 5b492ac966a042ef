//! Plain HTTP on the node's port: `/raft_stat` (text, or JSON with
//! `?format=json`; `?group=NAME` for one group), `/livez` (also
//! `/healthz`: the process serves and no group has stopped on an error),
//! `/readyz` (200 when every group is ready, see `Node::readiness`; else
//! 503; a JSON body either way, with each group's reason), `/metrics`
//! (Prometheus text) and `/flags` (list with GET; change the live ones with
//! `POST /flags?name=value`). `/debug/partition` sets an injected network
//! partition and `/debug/failpoint` a failpoint, when fault injection is on
//! (see [`crate::failpoint`]).

use std::fmt::Write as _;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::error::PeerId;
use crate::node::NodeStatus;
use crate::node_manager::NodeManager;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub manager: NodeManager,
    /// Transport byte counters, when the process has a gRPC transport.
    pub transport: Option<Arc<crate::metrics::TransportMetrics>>,
    /// Flags fixed at start, shown by `/flags` (name, value).
    pub fixed_flags: Arc<Vec<(String, String)>>,
}

impl axum::extract::FromRef<HttpState> for NodeManager {
    fn from_ref(s: &HttpState) -> NodeManager {
        s.manager.clone()
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/raft_stat", get(raft_stat))
        .route("/livez", get(healthz))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/flags", get(list_flags))
        .route("/flags", post(set_flags))
        .route("/debug/partition", get(show_partition))
        .route("/debug/partition", post(set_partition))
        .route("/debug/failpoint", get(show_failpoints))
        .route("/debug/failpoint", post(set_failpoint))
        .with_state(state)
}

/// The answer of the `/debug` endpoints when fault injection is off.
fn injection_off() -> Option<Response> {
    (!crate::failpoint::injection_enabled()).then(|| {
        (
            StatusCode::NOT_FOUND,
            "fault injection is off; start the node with RAFTKIT_FAULT_INJECTION=1\n",
        )
            .into_response()
    })
}

/// `GET /debug/failpoint`: the failpoints set, one `name=action` per line.
async fn show_failpoints() -> Response {
    if let Some(off) = injection_off() {
        return off;
    }
    let mut out = String::new();
    for (name, action) in crate::failpoint::list() {
        let _ = writeln!(out, "{name}={action:?}");
    }
    out.into_response()
}

/// `POST /debug/failpoint?name=N&action=A`: set failpoint `N` (see
/// [`crate::failpoint`] for the names and actions; `action=off` clears it).
async fn set_failpoint(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let (Some(name), Some(action)) = (q.get("name"), q.get("action")) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected name=FAILPOINT&action=abort|error|error(P)|error_once|sleep(MS)|off\n",
        )
            .into_response();
    };
    let action = if action == "off" {
        None
    } else {
        match crate::failpoint::parse_action(action) {
            Ok(a) => Some(a),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        }
    };
    match crate::failpoint::set(name.trim(), action) {
        Ok(()) => "ok\n".into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

/// `GET /debug/partition`: the peers this node drops traffic to and from,
/// as two lines `out=A,B` and `in=A,B`.
async fn show_partition() -> Response {
    if let Some(off) = injection_off() {
        return off;
    }
    let p = crate::failpoint::partition();
    let join =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
    format!("out={}\nin={}\n", join(&p.out), join(&p.r#in)).into_response()
}

/// `POST /debug/partition?peers=ADDR,ADDR[&direction=both|out|in]`: drop
/// raft traffic with those peers from now on, both ways (default), only
/// what this node sends, or only what it receives (`peers=` empty heals).
async fn set_partition(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let Some(list) = q.get("peers") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing peers=ADDR,ADDR (empty to heal)\n",
        )
            .into_response();
    };
    let mut peers = std::collections::BTreeSet::new();
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Err(e) = crate::options::validate_addr(p) {
            return (StatusCode::BAD_REQUEST, format!("peer address {e}\n")).into_response();
        }
        peers.insert(p.to_string());
    }
    let (out, into) = match q.get("direction").map(String::as_str) {
        None | Some("both") => (true, true),
        Some("out") => (true, false),
        Some("in") => (false, true),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown direction {other:?}; expected both, out or in\n"),
            )
                .into_response()
        }
    };
    let partition = crate::failpoint::Partition {
        out: if out {
            peers.clone()
        } else {
            Default::default()
        },
        r#in: if into { peers } else { Default::default() },
    };
    match crate::failpoint::set_partition(partition) {
        Ok(()) => "ok\n".into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let mut nodes = Vec::new();
    for n in s.manager.all() {
        if let Ok(st) = n.status().await {
            nodes.push((st, n.metrics()));
        }
    }
    let body = crate::metrics::render(&nodes, s.transport.as_deref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct FlagView {
    name: String,
    value: String,
    mutable: bool,
    /// The settings table's one-line help and bounds.
    help: &'static str,
    bounds: String,
}

/// A live option's value across the hosted groups: one value, or
/// `group=value,...` when they differ.
fn live_value(nodes: &[crate::node::Node], name: &str) -> String {
    let values: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n.group(),
                n.live_options().get(name).unwrap_or_default()
            )
        })
        .collect();
    let distinct: std::collections::BTreeSet<&str> = values
        .iter()
        .filter_map(|v| v.split_once('=').map(|x| x.1))
        .collect();
    if distinct.len() == 1 {
        distinct.into_iter().next().unwrap_or_default().to_string()
    } else {
        values.join(",")
    }
}

/// Every setting the table shows in `/flags`, with its current value.
fn flag_views(s: &HttpState) -> Vec<FlagView> {
    let nodes = s.manager.all();
    let mut out: Vec<FlagView> = raftkit_proto::settings::NODE_SETTINGS
        .iter()
        .filter(|t| t.in_flags)
        .map(|t| {
            let value = match t.name {
                "idle_poll_us" => crate::idle_poll::setting().to_string(),
                "log_level" => crate::logging::log_filter().unwrap_or_default(),
                name if t.live => live_value(&nodes, name),
                name => s
                    .fixed_flags
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            };
            FlagView {
                name: t.name.to_string(),
                value,
                mutable: t.live,
                help: t.help,
                bounds: t.bounds.to_string(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

async fn list_flags(
    State(s): State<HttpState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let flags = flag_views(&s);
    if q.get("format").map(String::as_str) == Some("json") {
        return Json(flags).into_response();
    }
    let mut o = String::new();
    for f in &flags {
        let _ = writeln!(
            o,
            "{} = {}{}",
            f.name,
            f.value,
            if f.mutable {
                "  (changeable: POST /flags?name=value)"
            } else {
                ""
            }
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], o).into_response()
}

/// `POST /flags?name=value[&name=value][&group=NAME]`: every change is
/// checked before any is made; unknown flags and bad values are refused.
async fn set_flags(
    State(s): State<HttpState>,
    Query(mut q): Query<BTreeMap<String, String>>,
) -> Response {
    let group = q.remove("group");
    if q.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "no flag given; use POST /flags?name=value\n",
        )
            .into_response();
    }
    let nodes = match &group {
        Some(g) => match s.manager.get(g) {
            Some(n) => vec![n],
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    format!("no group named {g:?} is hosted here\n"),
                )
                    .into_response()
            }
        },
        None => s.manager.all(),
    };
    // Validate everything first, against the settings table.
    for (name, value) in &q {
        let Some(setting) = raftkit_proto::settings::setting(name).filter(|t| t.in_flags) else {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown flag {name:?}; GET /flags lists them\n"),
            )
                .into_response();
        };
        if !setting.live {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "{name} cannot be changed while the node runs; restart with the new value\n"
                ),
            )
                .into_response();
        }
        if let Err(e) = setting.check(value) {
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
        if name == "log_level" {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(value) {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("log_level: {value:?} is not a valid filter: {e}\n"),
                )
                    .into_response();
            }
            continue;
        }
        if name == "idle_poll_us" {
            if let Err(e) = value.parse::<crate::idle_poll::IdlePoll>() {
                return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
            }
            continue;
        }
        for n in &nodes {
            if let Err(e) = n.live_options().set(name, value) {
                return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
            }
        }
    }
    for (name, value) in &q {
        if name == "log_level" {
            if let Err(e) = crate::logging::set_log_filter(value) {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
            }
            continue;
        }
        if name == "idle_poll_us" {
            // Checked above.
            let setting = value
                .parse()
                .unwrap_or(crate::idle_poll::IdlePoll::Window(0));
            if let Err(e) = crate::idle_poll::apply(setting) {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
            }
            continue;
        }
        for n in &nodes {
            if let Err(e) = n.set_live_option(name, value).await {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("group {}: {e}\n", n.group()),
                )
                    .into_response();
            }
        }
    }
    list_flags(State(s), Query(BTreeMap::new())).await
}

#[derive(Deserialize)]
struct StatQuery {
    format: Option<String>,
    group: Option<String>,
}

async fn raft_stat(State(manager): State<NodeManager>, Query(q): Query<StatQuery>) -> Response {
    let nodes = match &q.group {
        Some(g) => match manager.get(g) {
            Some(n) => vec![n],
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    format!("no group named {g:?} is hosted here\n"),
                )
                    .into_response()
            }
        },
        None => manager.all(),
    };
    let mut statuses = Vec::with_capacity(nodes.len());
    for n in nodes {
        match n.status().await {
            Ok(s) => statuses.push(s),
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("group {}: {e}\n", n.group()),
                )
                    .into_response()
            }
        }
    }
    match q.format.as_deref() {
        Some("json") => Json(statuses).into_response(),
        None | Some("text") => {
            let text: String = statuses
                .iter()
                .map(render_text)
                .collect::<Vec<_>>()
                .join("\n");
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("unknown format {other:?}; use text or json\n"),
        )
            .into_response(),
    }
}

fn peer_list(ps: &[PeerId]) -> String {
    ps.iter()
        .map(|p| p.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// braft-style text status of one replica.
pub fn render_text(s: &NodeStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "[{}]", s.group);
    let _ = writeln!(o, "peer_id: {}", s.peer);
    let _ = writeln!(o, "state: {}", s.role.as_str().to_uppercase());
    let _ = writeln!(o, "term: {}", s.term);
    let _ = writeln!(
        o,
        "leader: {}",
        s.leader
            .as_ref()
            .map_or("none".to_string(), |l| l.to_string())
    );
    let _ = writeln!(o, "voters: {}", peer_list(&s.conf.voters));
    let _ = writeln!(o, "learners: {}", peer_list(&s.conf.learners));
    if s.conf.is_joint() {
        let _ = writeln!(
            o,
            "voters_outgoing: {} (joint)",
            peer_list(&s.conf.voters_outgoing)
        );
    }
    let _ = writeln!(o, "first_log_index: {}", s.first_log_index);
    let _ = writeln!(o, "last_log_index: {}", s.last_log_index);
    let _ = writeln!(o, "disk_index: {}", s.disk_index);
    let _ = writeln!(o, "committed_index: {}", s.commit_index);
    let _ = writeln!(o, "applied_index: {}", s.applied_index);
    let _ = writeln!(
        o,
        "snapshot: index={} term={} taken_unix_ms={}",
        s.snapshot.last_index, s.snapshot.last_term, s.snapshot.last_unix_ms
    );
    let _ = writeln!(o, "snapshot_state: {}", s.snapshot.state());
    let r = &s.snapshot.receive;
    let _ = writeln!(
        o,
        "snapshots_received: {} (resumed {}, chunks rejected {}, files rejected {}, bytes {})",
        r.installs, r.resumed, r.chunks_rejected, r.files_rejected, r.bytes_received
    );
    let _ = writeln!(o, "conf_index: {}", s.conf_index);
    let _ = writeln!(o, "pending_proposals: {}", s.pending_proposals);
    let _ = writeln!(o, "pending_reads: {}", s.pending_reads);
    let _ = writeln!(o, "log_disk_bytes: {}", s.log_disk_bytes);
    if let Some(e) = &s.error {
        let _ = writeln!(o, "error: {e}");
    }
    for i in &s.installs {
        let _ = writeln!(
            o,
            "snapshot_install: to {} index={} sent={}/{} bytes attempt={}",
            i.peer, i.index, i.bytes_sent, i.bytes_total, i.attempts
        );
    }
    if !s.peers.is_empty() {
        let _ = writeln!(o, "replicators:");
        for p in &s.peers {
            let _ = writeln!(
                o,
                "  {} {} match_index={} next_index={} inflight={} state={} active={}",
                p.peer,
                if p.voter { "voter" } else { "learner" },
                p.match_index,
                p.next_index,
                p.inflight,
                p.state,
                p.recent_active
            );
        }
    }
    o
}

async fn healthz(State(manager): State<NodeManager>) -> Response {
    let errors: Vec<String> = manager
        .all()
        .iter()
        .filter_map(|n| n.error().map(|e| format!("group {}: {e}", n.group())))
        .collect();
    if errors.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, errors.join("\n") + "\n").into_response()
    }
}

async fn readyz(State(manager): State<NodeManager>) -> Response {
    let nodes = manager.all();
    let mut groups = Vec::new();
    for n in &nodes {
        let r = n.readiness().await;
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("group".into(), n.group().into());
            o.insert("ready".into(), r.is_ready().into());
        }
        groups.push((r.is_ready(), v));
    }
    // A group the process will host but has not started yet is not ready:
    // a server with one group started must not pass for ready.
    for g in manager.pending() {
        groups.push((
            false,
            serde_json::json!({"group": g, "ready": false, "reason": "starting"}),
        ));
    }
    let ready = !nodes.is_empty() && groups.iter().all(|(r, _)| *r);
    let mut body = serde_json::json!({
        "ready": ready,
        "groups": groups.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    });
    if nodes.is_empty() {
        // The server answers before its groups start.
        body["reason"] = "starting".into();
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
