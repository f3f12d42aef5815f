//! Every metric family of `/metrics`, declared once: name, type, help and label names. The
//! README's list of metrics is checked against them (the test below).

use crate::stats::prometheus::Family;
use crate::stats::prometheus::Kind::{Counter, Gauge, Histogram};

macro_rules! families {
    ($($id:ident = $name:literal $kind:ident [$($label:literal),*] $help:literal;)*) => {
        $(pub static $id: Family = Family {
            name: $name,
            kind: $kind,
            help: $help,
            labels: &[$($label),*],
        };)*
        /// Every family `/metrics` may write.
        #[cfg(test)]
        pub static ALL: &[&Family] = &[$(&$id),*];
    };
}

families! {
    REQUESTS = "switchyard_requests_total" Counter ["route", "upstream", "backend", "code_class"]
        "Responses to routed requests by route, upstream, backend and status class; every series of a route exists from the start.";
    RESPONSES = "switchyard_responses_total" Counter ["route", "upstream", "backend", "code"]
        "Responses to routed requests by exact status code (unregistered codes under their class, e.g. 5xx).";
    GRPC_RESPONSES = "switchyard_grpc_responses_total" Counter ["route", "upstream", "code"]
        "Answers to gRPC requests by the grpc-status the client got (OK, UNAVAILABLE, ...; none: the answer ended without one), switchyard's own included.";
    ROUTE_WEIGHT = "switchyard_route_weight" Gauge ["route", "upstream"]
        "Weight in force for each upstream of a route's split.";
    ROLLOUT_STEP = "switchyard_rollout_step" Gauge ["route"]
        "Step index of each route's rollout (the number of steps once promoted, -1 once rolled back, aborted or held).";
    ROLLOUT_STATE = "switchyard_rollout_state" Gauge ["route", "state"]
        "1 for the state each route's rollout is in, 0 for the other states.";
    ROLLOUT_INFO = "switchyard_rollout_info" Gauge ["route", "strategy", "stable", "canary"]
        "Always 1: the stable and canary upstreams of each route's rollout, to join on.";
    STATE_DIR_PERSISTENT = "switchyard_state_dir_persistent" Gauge []
        "1 while rollout transitions are saved to state_dir; 0 without one or while it cannot be written.";
    FLEET_LEADER = "switchyard_fleet_leader" Gauge []
        "1 while this replica leads its fleet (only the leader advances rollouts).";
    FLEET_NODES = "switchyard_fleet_nodes" Gauge []
        "Replicas of the fleet with a live lease, as this replica last saw them.";
    FLEET_ETCD_UP = "switchyard_fleet_etcd_up" Gauge []
        "1 while etcd answers this replica.";
    FLEET_PUBLISHES = "switchyard_fleet_publishes_total" Counter ["result"]
        "This replica's reports written to etcd, by result (ok, failed).";
    FLEET_WRITES = "switchyard_fleet_writes_total" Counter ["kind", "result"]
        "Rollout writes to etcd by kind (decision, command, abort, start) and result (written, refused: a condition no longer held, failed: no answer).";
    FLEET_ETCD_REQUESTS = "switchyard_fleet_etcd_requests_total" Counter ["call", "result"]
        "Calls to etcd by call and result (ok, error: etcd said no, unreachable).";
    FLEET_SPEC_MISMATCH = "switchyard_fleet_spec_mismatch" Gauge ["route"]
        "1 while this replica's rollout spec for a route differs from the fleet's (it follows the fleet's weights and does not judge).";
    REQUEST_DURATION = "switchyard_request_duration_seconds" Histogram ["route", "upstream"]
        "Time from a request's arrival to the last byte of its response, by route and upstream answering.";
    UPSTREAM_LATENCY = "switchyard_upstream_latency_seconds" Histogram ["upstream", "backend"]
        "Time from sending a try to a backend to its response head.";
    UPSTREAM_OUTCOMES = "switchyard_upstream_outcomes_total" Counter ["upstream", "backend", "outcome"]
        "Tries sent to a backend by what became of them (success includes 4xx).";
    BREAKER_STATE = "switchyard_breaker_state" Gauge ["upstream", "backend"]
        "Circuit breaker state per backend: 0 closed, 1 open, 2 half-open.";
    BACKEND_HEALTHY = "switchyard_backend_healthy" Gauge ["upstream", "backend"]
        "1 while a backend passes its health checks (always 1 without checks).";
    REROUTES = "switchyard_reroutes_total" Counter ["route", "upstream", "direction"]
        "Requests sent to another upstream of the route because every backend of the one picked was out.";
    RETRIES = "switchyard_retries_total" Counter ["route", "upstream", "result"]
        "Retries by route and the upstream of the failed try: made, or refused by the retry budget.";
    BACKEND_IN_FLIGHT = "switchyard_backend_in_flight" Gauge ["upstream", "backend"]
        "Requests sent to a backend whose response has not finished.";
    UPSTREAM_RESENDS = "switchyard_upstream_resends_total" Counter ["upstream", "backend", "reason"]
        "Requests sent again on a fresh connection after a kept-alive one turned out closed by the backend, or after an HTTP/2 backend refused them unprocessed (GOAWAY); never counted against it.";
    RATE_LIMITED = "switchyard_rate_limited_total" Counter ["route"]
        "Requests a route's rate_limit answered with 429.";
    FAULTS_INJECTED = "switchyard_faults_injected_total" Counter ["route", "upstream", "kind"]
        "Faults a route's `fault` injected, by the upstream the split picked and kind (delay, abort).";
    SHADOW_REQUESTS = "switchyard_shadow_requests_total" Counter ["route", "upstream", "result"]
        "Requests chosen for shadowing by route, shadow upstream and what became of the copy.";
    SHADOW_MISMATCHES = "switchyard_shadow_mismatches_total" Counter ["route", "upstream", "kind"]
        "Shadow responses that differed from their primary's, by the first difference's kind.";
    SHADOW_COMPARISONS = "switchyard_shadow_comparisons_total" Counter ["route", "upstream"]
        "Shadow responses compared with their primary's (the mismatch rate's denominator).";
    SHADOW_IN_FLIGHT = "switchyard_shadow_in_flight" Gauge ["route", "upstream"]
        "Shadow copies sent and not finished (at most the route's max_in_flight).";
    UNROUTED = "switchyard_unrouted_requests_total" Counter []
        "Requests no route matched (answered 404).";
    CONFIG_RELOADS = "switchyard_config_reloads_total" Counter ["result"]
        "Config reload attempts by result.";
    CONFIG_LAST_RELOAD_SUCCESS = "switchyard_config_last_reload_success_timestamp_seconds" Gauge []
        "Unix time the config was last loaded or found unchanged (the first load at start counts).";
    CONFIG_LAST_RELOAD_SUCCESSFUL = "switchyard_config_last_reload_successful" Gauge []
        "1 if the latest reload attempt succeeded (or none was made yet), 0 if it was rejected.";
    CONFIG_GENERATION = "switchyard_config_generation" Gauge []
        "Successful config loads since start (the first load is 1).";
    DNS_LOOKUPS = "switchyard_dns_lookups_total" Counter ["upstream", "result"]
        "DNS lookups of discovered upstreams by result: ok (addresses), empty and error (the last set stays).";
    DISCOVERED_BACKENDS = "switchyard_discovered_backends" Gauge ["upstream"]
        "Backends in force of each discovered upstream (its last good DNS answer).";
    TLS_CERT_RELOADS = "switchyard_tls_cert_reloads_total" Counter ["result"]
        "Listener certificate reloads after their files changed, by result.";
    TLS_HANDSHAKE_ERRORS = "switchyard_tls_handshake_errors_total" Counter []
        "Client TLS handshakes that failed or timed out.";
    TLS_CERT_EXPIRY = "switchyard_tls_certificate_expiry_timestamp_seconds" Gauge ["listener", "server_name"]
        "Unix time the certificate chain a listener serves for a name expires (earliest notAfter; server_name empty for the default certificate).";
    CONNECTIONS = "switchyard_connections" Gauge []
        "Open client connections and upgraded tunnels.";
    LIMIT_REJECTIONS = "switchyard_limit_rejections_total" Counter ["listener", "limit"]
        "Requests or connections turned away by a listener limit, by listener and limit.";
    ACCEPT_ERRORS = "switchyard_accept_errors_total" Counter ["listener"]
        "Failed accepts by listener (admin and ops included): out of file descriptors or buffers, or a client gone before it was accepted.";
    LOCAL_RESOURCE_ERRORS = "switchyard_local_resource_errors_total" Counter ["op", "error"]
        "The proxy's own shortages (file descriptors, socket buffers, memory) connecting to a backend or accepting a client; never counted against a backend.";
    ACCESS_LOG_LINES = "switchyard_access_log_lines_total" Counter ["path"]
        "Access log lines queued for writing, by target (a file path or stderr).";
    ACCESS_LOG_DROPPED = "switchyard_access_log_dropped_total" Counter ["path"]
        "Access log lines dropped because the writer's queue was full (the request never waits for the log).";
    ACCESS_LOG_WRITE_ERRORS = "switchyard_access_log_write_errors_total" Counter ["path"]
        "Failed writes (each losing a batch of lines) and failed reopens of an access log.";
    TRACE_SPANS_EXPORTED = "switchyard_trace_spans_exported_total" Counter []
        "Spans the OTLP collector accepted.";
    TRACE_SPANS_DROPPED = "switchyard_trace_spans_dropped_total" Counter ["reason"]
        "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector failed or refused them after every retry), rejected (the collector said so), shutdown (shutdown came first).";
    TRACE_QUEUE_SPANS = "switchyard_trace_queue_spans" Gauge []
        "Spans waiting for export.";
    DRAINING = "switchyard_draining" Gauge []
        "1 while shutting down.";
    BUILD_INFO = "switchyard_build_info" Gauge ["version", "commit"]
        "Always 1: the version and git commit switchyard was built from.";
    PROCESS_CPU = "process_cpu_seconds_total" Counter []
        "Total user and system CPU time spent in seconds.";
    PROCESS_RSS = "process_resident_memory_bytes" Gauge []
        "Resident memory size in bytes.";
    PROCESS_VSIZE = "process_virtual_memory_bytes" Gauge []
        "Virtual memory size in bytes.";
    PROCESS_OPEN_FDS = "process_open_fds" Gauge []
        "Number of open file descriptors.";
    PROCESS_MAX_FDS = "process_max_fds" Gauge []
        "Maximum number of open file descriptors.";
    PROCESS_START = "process_start_time_seconds" Gauge []
        "Start time of the process since unix epoch in seconds.";
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));

    /// (name, type, label names) of each row of the README's table of metrics.
    fn documented() -> Vec<(String, String, Vec<String>)> {
        let table = README
            .split_once("## Metrics\n")
            .expect("the README has a Metrics section")
            .1;
        table
            .lines()
            .skip_while(|l| !l.starts_with("| metric"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (
                    cells[1].trim_matches('`').to_owned(),
                    cells[2].to_owned(),
                    label_names(cells[3]),
                )
            })
            .collect()
    }

    /// The backticked names of a labels cell, leaving out what parentheses say of their values.
    fn label_names(cell: &str) -> Vec<String> {
        let mut depth = 0;
        let outside: String = cell
            .chars()
            .filter(|&c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => return depth == 0,
                }
                false
            })
            .collect();
        outside
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readme_lists_every_family_with_its_type_and_labels() {
        let documented = documented();
        for f in ALL {
            let row = documented
                .iter()
                .find(|(name, _, _)| name == f.name)
                .unwrap_or_else(|| panic!("{} is not in the README's table of metrics", f.name));
            assert_eq!(row.1, f.kind.as_str(), "type of {} in the README", f.name);
            assert_eq!(row.2, f.labels, "labels of {} in the README", f.name);
        }
        for (name, _, _) in &documented {
            assert!(
                ALL.iter().any(|f| f.name == name),
                "the README lists {name}, which /metrics does not have"
            );
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for f in ALL {
            assert!(
                f.name.starts_with("switchyard_") || f.name.starts_with("process_"),
                "{}",
                f.name
            );
            assert_eq!(
                f.name.ends_with("_total"),
                f.kind == Counter,
                "{}: counters and only counters end in _total",
                f.name
            );
        }
    }
}
