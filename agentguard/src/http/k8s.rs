//! Kubernetes API requests for policy: what kube-apiserver's own
//! RequestInfo resolver would call them (verb, group, version, resource,
//! subresource, namespace, name), from the method and the path.
//!
//! One deliberate difference: for a Namespace object
//! (`/api/v1/namespaces/x`) `namespace` is null and `name` is `x` — a
//! namespace is cluster-scoped, and policies read "delete namespace x"
//! more naturally that way.

use serde::Serialize;

/// `input.request` for kind `k8s`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct K8sRequest {
    /// get, list, watch, create, update, patch, delete, deletecollection;
    /// for paths outside /api and /apis, the lower-case method.
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    pub version: Option<String>,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// False for non-resource paths (/version, /healthz, /openapi/v2) and
    /// for discovery (/api, /apis/apps).
    pub resource_request: bool,
    pub method: String,
    pub path: String,
}

/// Subresources of a Namespace that are not resources in their own right.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

pub fn derive(method: &str, path: &str, query: Option<&str>) -> K8sRequest {
    let method_lc = method.to_ascii_lowercase();
    let mut req = K8sRequest {
        verb: method_lc.clone(),
        method: method.to_owned(),
        path: path.to_owned(),
        ..Default::default()
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut rest: &[&str] = match parts.as_slice() {
        ["api", version, rest @ ..] => {
            req.version = Some((*version).to_owned());
            rest
        }
        ["apis", group, version, rest @ ..] => {
            req.group = (*group).to_owned();
            req.version = Some((*version).to_owned());
            rest
        }
        ["apis", group] => {
            req.group = (*group).to_owned();
            return req;
        }
        _ => return req,
    };
    if rest.is_empty() {
        return req;
    }
    req.resource_request = true;
    let mut watch_path = false;
    if rest[0] == "watch" {
        watch_path = true;
        rest = &rest[1..];
    }
    // namespaces/NS/RESOURCE/... is a namespaced resource; namespaces/NS
    // (optionally /status or /finalize) is the Namespace itself.
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !NAMESPACE_SUBRESOURCES.contains(&rest[2])
    {
        req.namespace = Some(rest[1].to_owned());
        rest = &rest[2..];
    }
    req.resource = rest.first().map(|s| (*s).to_owned());
    req.name = rest.get(1).map(|s| (*s).to_owned());
    if rest.len() > 2 {
        req.subresource = Some(rest[2..].join("/"));
    }
    let watch_param = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    req.verb = match method_lc.as_str() {
        "get" | "head" if watch_path || watch_param => "watch",
        "get" | "head" if req.name.is_some() => "get",
        "get" | "head" => "list",
        "post" => "create",
        "put" => "update",
        "patch" => "patch",
        "delete" if req.name.is_some() => "delete",
        "delete" => "deletecollection",
        other => other,
    }
    .to_owned();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(method: &str, path: &str) -> K8sRequest {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        derive(method, path, query)
    }

    fn brief(r: &K8sRequest) -> String {
        format!(
            "{} {}/{} {} ns={} name={} sub={}",
            r.verb,
            r.group,
            r.version.as_deref().unwrap_or("-"),
            r.resource.as_deref().unwrap_or("-"),
            r.namespace.as_deref().unwrap_or("-"),
            r.name.as_deref().unwrap_or("-"),
            r.subresource.as_deref().unwrap_or("-"),
        )
    }

    #[test]
    fn core_group() {
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/default/pods",
                "list /v1 pods ns=default name=- sub=-",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods?limit=500",
                "list /v1 pods ns=default name=- sub=-",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web-1",
                "get /v1 pods ns=default name=web-1 sub=-",
            ),
            (
                "HEAD",
                "/api/v1/namespaces/default/pods/web-1",
                "get /v1 pods ns=default name=web-1 sub=-",
            ),
            ("GET", "/api/v1/pods", "list /v1 pods ns=- name=- sub=-"),
            (
                "POST",
                "/api/v1/namespaces/default/pods",
                "create /v1 pods ns=default name=- sub=-",
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/web-1",
                "update /v1 pods ns=default name=web-1 sub=-",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/default/pods/web-1",
                "patch /v1 pods ns=default name=web-1 sub=-",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web-1",
                "delete /v1 pods ns=default name=web-1 sub=-",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods",
                "deletecollection /v1 pods ns=default name=- sub=-",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/secrets/db",
                "get /v1 secrets ns=default name=db sub=-",
            ),
            (
                "GET",
                "/api/v1/secrets",
                "list /v1 secrets ns=- name=- sub=-",
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(brief(&d(m, p)), want, "{m} {p}");
            assert!(d(m, p).resource_request);
        }
    }

    #[test]
    fn namespaces_themselves() {
        assert_eq!(
            brief(&d("DELETE", "/api/v1/namespaces/x")),
            "delete /v1 namespaces ns=- name=x sub=-"
        );
        assert_eq!(
            brief(&d("GET", "/api/v1/namespaces/x")),
            "get /v1 namespaces ns=- name=x sub=-"
        );
        assert_eq!(
            brief(&d("GET", "/api/v1/namespaces")),
            "list /v1 namespaces ns=- name=- sub=-"
        );
        assert_eq!(
            brief(&d("DELETE", "/api/v1/namespaces")),
            "deletecollection /v1 namespaces ns=- name=- sub=-"
        );
        assert_eq!(
            brief(&d("PUT", "/api/v1/namespaces/x/finalize")),
            "update /v1 namespaces ns=- name=x sub=finalize"
        );
        assert_eq!(
            brief(&d("PATCH", "/api/v1/namespaces/x/status")),
            "patch /v1 namespaces ns=- name=x sub=status"
        );
    }

    #[test]
    fn subresources() {
        assert_eq!(
            brief(&d(
                "POST",
                "/api/v1/namespaces/default/pods/web-1/exec?command=sh"
            )),
            "create /v1 pods ns=default name=web-1 sub=exec"
        );
        // Newer kubectl: exec over WebSocket is a GET.
        assert_eq!(
            brief(&d(
                "GET",
                "/api/v1/namespaces/default/pods/web-1/exec?command=sh&stdin=true"
            )),
            "get /v1 pods ns=default name=web-1 sub=exec"
        );
        assert_eq!(
            brief(&d("GET", "/api/v1/namespaces/default/pods/web-1/log")),
            "get /v1 pods ns=default name=web-1 sub=log"
        );
        assert_eq!(
            brief(&d(
                "POST",
                "/api/v1/namespaces/default/pods/web-1/portforward"
            )),
            "create /v1 pods ns=default name=web-1 sub=portforward"
        );
        assert_eq!(
            brief(&d(
                "GET",
                "/api/v1/namespaces/default/services/web/proxy/a/b"
            )),
            "get /v1 services ns=default name=web sub=proxy/a/b"
        );
        assert_eq!(
            brief(&d(
                "PUT",
                "/apis/apps/v1/namespaces/default/deployments/web/scale"
            )),
            "update apps/v1 deployments ns=default name=web sub=scale"
        );
    }

    #[test]
    fn named_groups() {
        assert_eq!(
            brief(&d("GET", "/apis/apps/v1/namespaces/prod/deployments")),
            "list apps/v1 deployments ns=prod name=- sub=-"
        );
        assert_eq!(
            brief(&d(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
            )),
            "create rbac.authorization.k8s.io/v1 clusterrolebindings ns=- name=- sub=-"
        );
        assert_eq!(
            brief(&d("DELETE", "/apis/batch/v1/namespaces/ci/jobs/build-7")),
            "delete batch/v1 jobs ns=ci name=build-7 sub=-"
        );
    }

    #[test]
    fn watches() {
        assert_eq!(
            brief(&d(
                "GET",
                "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1"
            )),
            "watch /v1 pods ns=default name=- sub=-"
        );
        assert_eq!(
            brief(&d("GET", "/api/v1/watch/namespaces/default/pods")),
            "watch /v1 pods ns=default name=- sub=-"
        );
        assert_eq!(
            brief(&d("GET", "/api/v1/watch/namespaces/default/pods/web-1")),
            "watch /v1 pods ns=default name=web-1 sub=-"
        );
        assert_eq!(
            brief(&d("GET", "/apis/apps/v1/deployments?watch=1")),
            "watch apps/v1 deployments ns=- name=- sub=-"
        );
        // `watch=false` is a plain list.
        assert_eq!(
            brief(&d("GET", "/api/v1/pods?watch=false")),
            "list /v1 pods ns=- name=- sub=-"
        );
    }

    #[test]
    fn discovery_and_non_resource_paths() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/healthz",
            "/openapi/v2",
        ] {
            let r = d("GET", p);
            assert!(!r.resource_request, "{p}");
            assert_eq!(r.resource, None, "{p}");
            assert_eq!(r.verb, "get", "{p}");
        }
        assert_eq!(d("GET", "/apis/apps").group, "apps");
        assert_eq!(d("GET", "/api/v1").version.as_deref(), Some("v1"));
        assert_eq!(d("POST", "/version").verb, "post");
    }
}
