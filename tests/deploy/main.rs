//! The deploy kit (`deploy/`) checked offline and against a real Prometheus: the Kustomize
//! overlays rendered and validated (schemas, Prometheus Operator resources, checkov), the
//! Dockerfile linted, the Prometheus rules checked and unit-tested with promtool, and every
//! dashboard panel, recording rule and Flagger/Argo query run on a real Prometheus scraping a
//! real switchyard under load. The tools come from scripts/test.sh's TOOLS list.

#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod manifests;
mod prometheus;
mod rules;
mod tools;
