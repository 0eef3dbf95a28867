//! The edge manifest (`edge-shim/routes.json`) as the container sees it: who owns each route,
//! each job kind and each cron task today, and the guards that every manifest route, kind and
//! task exists here, so flipping any of them back to `origin` is always safe
//! (docs/STRANGLER.md). The container refuses to run a job kind or cron task the manifest
//! gives the edge.

use serde::Deserialize;

/// The manifest this binary was built with.
pub const EMBEDDED_MANIFEST: &str = include_str!("../edge-shim/routes.json");

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ManifestRoute {
    pub method: String,
    pub path: String,
    /// `origin`, `shadow` or `edge`.
    pub owner: String,
}

/// Who runs a job kind: the container's PostgreSQL queue (`origin`) or the Worker's Queue
/// consumer (`edge`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ManifestJob {
    pub kind: String,
    pub owner: String,
}

/// Who runs a cron task: the container's cron (`origin`) or the Worker's Cron Trigger (`edge`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ManifestCron {
    pub task: String,
    pub owner: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub routes: Vec<ManifestRoute>,
    #[serde(default)]
    pub jobs: Vec<ManifestJob>,
    #[serde(default)]
    pub cron: Vec<ManifestCron>,
}

/// The container's cron tasks, by their manifest names, in the order a tick runs them.
pub const CRON_TASKS: [&str; 6] = [
    "retention.purge",
    "uploads.sweep",
    "calls.stale_sweep",
    "jobs.dead_report",
    "usage.quotas",
    "usage.metering",
];

/// Job kinds and cron tasks the edge cannot run, and why: a manifest that gives one of them to
/// the edge is refused here (and by the Worker, `edge-shim/src/manifest.ts` with the same
/// reasons; docs/adr/0027-what-stays-with-the-container.md), so its work is never left undone.
/// Empty since `uploads.sweep` runs at the edge through the S3 API (ADR 0043); kept, so work
/// that cannot move is refused by both sides with its reason.
pub const STAYS_WITH_THE_CONTAINER: [(&str, &str); 0] = [];

/// The embedded manifest, parsed once (a build with an invalid one fails its unit tests).
pub fn embedded() -> &'static Manifest {
    static MANIFEST: std::sync::OnceLock<Manifest> = std::sync::OnceLock::new();
    MANIFEST
        .get_or_init(|| Manifest::parse(EMBEDDED_MANIFEST).expect("edge-shim/routes.json is valid"))
}

/// The owners this container acts on (ADR 0042): the embedded manifest's when the Worker in
/// front runs work (`EDGE_RUNS_WORK`), else none at all — every kind and task is the
/// container's, as `make dev` (the container alone) and the tests need.
pub fn work_owners(edge_runs_work: bool) -> &'static Manifest {
    static CONTAINER_ALONE: Manifest = Manifest {
        routes: Vec::new(),
        jobs: Vec::new(),
        cron: Vec::new(),
    };
    if edge_runs_work {
        embedded()
    } else {
        &CONTAINER_ALONE
    }
}

impl Manifest {
    pub fn parse(json: &str) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for route in &manifest.routes {
            if !matches!(route.owner.as_str(), "origin" | "shadow" | "edge") {
                return Err(format!(
                    "{} {}: owner must be origin, shadow or edge",
                    route.method, route.path
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (what, name, owner) in manifest
            .jobs
            .iter()
            .map(|j| ("job kind", &j.kind, &j.owner))
            .chain(
                manifest
                    .cron
                    .iter()
                    .map(|c| ("cron task", &c.task, &c.owner)),
            )
        {
            if !matches!(owner.as_str(), "origin" | "edge") {
                return Err(format!("{what} {name}: owner must be origin or edge"));
            }
            if !seen.insert((what, name)) {
                return Err(format!("{what} {name} is listed twice"));
            }
            if owner == "edge"
                && let Some((_, why)) = STAYS_WITH_THE_CONTAINER.iter().find(|(n, _)| n == name)
            {
                return Err(format!("{what} {name} cannot be given to the edge: {why}"));
            }
        }
        Ok(manifest)
    }

    /// Who runs `kind`; a kind the manifest does not list is the container's.
    pub fn job_owner(&self, kind: &str) -> &str {
        self.jobs
            .iter()
            .find(|j| j.kind == kind)
            .map_or("origin", |j| j.owner.as_str())
    }

    /// The job kinds the edge runs: the container's workers never claim them.
    pub fn edge_job_kinds(&self) -> Vec<String> {
        self.jobs
            .iter()
            .filter(|j| j.owner == "edge")
            .map(|j| j.kind.clone())
            .collect()
    }

    /// Who runs cron task `task`; an unlisted task is the container's.
    pub fn cron_owner(&self, task: &str) -> &str {
        self.cron
            .iter()
            .find(|c| c.task == task)
            .map_or("origin", |c| c.owner.as_str())
    }

    pub fn owner(&self, method: &str, path: &str) -> &str {
        self.routes
            .iter()
            .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .map_or("origin", |r| r.owner.as_str())
    }
}

/// Every `(METHOD, path)` the container serves, from its OpenAPI document.
pub fn container_routes(spec: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (path, item) in &spec.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if operation.is_some() {
                routes.push((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

/// Manifest routes the container does not serve (must be empty).
pub fn missing_in_container(manifest: &Manifest, spec: &utoipa::openapi::OpenApi) -> Vec<String> {
    let served = container_routes(spec);
    manifest
        .routes
        .iter()
        .filter(|r| {
            !served
                .iter()
                .any(|(m, p)| m.eq_ignore_ascii_case(&r.method) && *p == r.path)
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// Manifest job kinds and cron tasks the container cannot run (must be empty): flipping
/// one back to `origin` would leave its work undone.
pub fn unknown_to_container(manifest: &Manifest, kinds: &[&str]) -> Vec<String> {
    let jobs = manifest
        .jobs
        .iter()
        .filter(|j| !kinds.contains(&j.kind.as_str()))
        .map(|j| format!("job kind {}", j.kind));
    let cron = manifest
        .cron
        .iter()
        .filter(|c| !CRON_TASKS.contains(&c.task.as_str()))
        .map(|c| format!("cron task {}", c.task));
    jobs.chain(cron).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifest_only_names_routes_the_container_serves() {
        let manifest = Manifest::parse(EMBEDDED_MANIFEST).expect("routes.json is valid");
        let spec = crate::http::openapi_document();
        assert_eq!(missing_in_container(&manifest, &spec), Vec::<String>::new());
    }

    #[test]
    fn the_embedded_manifest_names_every_job_kind_and_cron_task_and_only_those() {
        let manifest = Manifest::parse(EMBEDDED_MANIFEST).expect("routes.json is valid");
        let kinds = crate::jobs::handlers::registry().kinds();
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        assert_eq!(
            unknown_to_container(&manifest, &kinds),
            Vec::<String>::new()
        );
        let mut listed: Vec<&str> = manifest.jobs.iter().map(|j| j.kind.as_str()).collect();
        listed.sort_unstable();
        let mut registered = kinds.clone();
        registered.sort_unstable();
        assert_eq!(
            listed, registered,
            "every job kind has an owner in routes.json"
        );
        let tasks: Vec<&str> = manifest.cron.iter().map(|c| c.task.as_str()).collect();
        assert_eq!(
            tasks, CRON_TASKS,
            "every cron task has an owner in routes.json"
        );
    }

    #[test]
    fn the_guard_catches_a_kind_or_task_the_container_lacks() {
        let manifest = Manifest::parse(
            r#"{"routes": [], "jobs": [{"kind": "telnyx.event", "owner": "edge"},
                {"kind": "fax.event", "owner": "origin"}],
                "cron": [{"task": "retention.purge", "owner": "edge"}, {"task": "coffee", "owner": "edge"}]}"#,
        )
        .unwrap();
        assert_eq!(
            unknown_to_container(&manifest, &["telnyx.event"]),
            vec![
                "job kind fax.event".to_string(),
                "cron task coffee".to_string()
            ]
        );
        assert_eq!(manifest.job_owner("telnyx.event"), "edge");
        assert_eq!(manifest.job_owner("recording.import"), "origin");
        assert_eq!(manifest.edge_job_kinds(), vec!["telnyx.event".to_string()]);
        assert_eq!(manifest.cron_owner("retention.purge"), "edge");
        assert_eq!(manifest.cron_owner("calls.stale_sweep"), "origin");
        for bad in [
            r#"{"routes": [], "jobs": [{"kind": "x", "owner": "shadow"}]}"#,
            r#"{"routes": [], "jobs": [{"kind": "x", "owner": "edge"}, {"kind": "x", "owner": "origin"}]}"#,
            r#"{"routes": [], "cron": [{"task": "x", "owner": "cdn"}]}"#,
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_worker_refuses_the_same_work_for_the_same_reasons() {
        let worker = include_str!("../edge-shim/src/manifest.ts");
        for (name, why) in STAYS_WITH_THE_CONTAINER {
            assert!(
                worker.contains(&format!("\"{name}\":")) && worker.contains(&format!("\"{why}\"")),
                "edge-shim/src/manifest.ts STAYS_WITH_THE_CONTAINER lacks {name}: {why}"
            );
        }
        // And nothing more: a name the Worker still refuses and the container does not would
        // leave work the edge may never take (both sides move a name off together).
        let block = worker
            .split("STAYS_WITH_THE_CONTAINER: Readonly<Record<string, string>> = {")
            .nth(1)
            .and_then(|rest| rest.split("\n};").next())
            .expect("edge-shim/src/manifest.ts declares STAYS_WITH_THE_CONTAINER");
        let worker_names: Vec<&str> = block
            .lines()
            .filter_map(|line| line.trim().strip_prefix('"')?.split_once("\":"))
            .map(|(name, _)| name)
            .collect();
        let ours: Vec<&str> = STAYS_WITH_THE_CONTAINER.iter().map(|(n, _)| *n).collect();
        assert_eq!(worker_names, ours, "the two lists name different work");
    }

    #[test]
    fn every_kind_and_task_can_be_given_to_the_edge() {
        // uploads.sweep was the last one refused (ADR 0027), until ADR 0043.
        let all = format!(
            r#"{{"routes": [], "jobs": [{}], "cron": [{}]}}"#,
            embedded()
                .jobs
                .iter()
                .map(|j| format!(r#"{{"kind": "{}", "owner": "edge"}}"#, j.kind))
                .collect::<Vec<_>>()
                .join(", "),
            CRON_TASKS
                .iter()
                .map(|t| format!(r#"{{"task": "{t}", "owner": "edge"}}"#))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let manifest = Manifest::parse(&all).unwrap();
        assert_eq!(manifest.cron_owner("uploads.sweep"), "edge");
        assert!(
            Manifest::parse(
                r#"{"routes": [], "jobs": [{"kind": "recording.import", "owner": "edge"}, {"kind": "call.max_duration", "owner": "edge"}],
                    "cron": [{"task": "usage.metering", "owner": "edge"}, {"task": "usage.quotas", "owner": "edge"}]}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn the_guard_catches_a_route_the_container_lacks() {
        let manifest = Manifest::parse(
            r#"{"routes": [
            {"method": "GET", "path": "/api/calls", "owner": "edge"},
            {"method": "POST", "path": "/api/not-here", "owner": "shadow"}]}"#,
        )
        .unwrap();
        let spec = crate::http::openapi_document();
        assert_eq!(
            missing_in_container(&manifest, &spec),
            vec!["POST /api/not-here".to_string()]
        );
        assert!(
            Manifest::parse(r#"{"routes": [{"method": "GET", "path": "/x", "owner": "cdn"}]}"#)
                .is_err()
        );
    }
}
