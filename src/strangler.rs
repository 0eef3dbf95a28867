//! The edge route manifest (`edge-shim/routes.json`) as the container sees it: who owns each
//! route today, and the guard that every manifest route exists here, so flipping any route
//! back to `origin` is always safe (docs/STRANGLER.md).

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

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub routes: Vec<ManifestRoute>,
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
        Ok(manifest)
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
