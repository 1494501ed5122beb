//! The HTTP endpoints of a member, for load balancers, probes and Prometheus: the
//! listener ([`HttpServer`]) and the rules that turn what the member published into status
//! codes ([`HealthReport::answer`]).
//!
//! ```text
//!  worker main loop (every 50 ms) ──▶ HealthReport (Arc<Mutex>) ──▶ GET /primary, /replica,
//!                                                                   /health, /leader, /cluster
//!  member counters, storage histogram, request figures ─────────▶ GET /metrics
//! ```
//!
//! An answer is read from the last report, never by asking the Raft thread or PostgreSQL:
//! a member whose Raft thread or main loop is stuck stops refreshing its report, and a
//! stale report answers 503 on `/primary`, so a load balancer moves away from it.

mod health_report;
mod metrics_page;
mod request;
mod server;

pub use health_report::{
    HaReport, HealthReport, MemberReport, RaftReport, ServerReport, StandbyReport, STALE_AFTER_MS,
};
pub use metrics_page::{render as render_metrics, MetricsSources};
pub use request::{base64, head_end, parse_bytes, parse_head, HeadError, HttpRequest, Method, MAX_HEAD};
pub use server::{Handler, HttpConfig, HttpResponse, HttpServer, HttpStats, HEAD_TIMEOUT, MAX_CONNECTIONS};
