//! `deploy/`'s Kustomize overlays rendered by kustomize (`kubectl kustomize`) and checked as
//! rendered: Kubernetes schemas (kubernetes-validate, strict, oldest and newest supported
//! version), the Prometheus Operator's resources (its models, strict), checkov with every skip
//! explained, the promises of the kit (directory-mounted config, probes on the ops port, the
//! image's uid); and the Dockerfile (hadolint, distroless, non-root).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::proxy::TempDir;
use crate::tools::{deploy_dir, documents, run, run_ok, tool, tools_python};

/// The oldest Kubernetes the kit needs (the preStop sleep action is on by default from 1.30;
/// native sidecars from 1.29) and the newest kubernetes-validate knows.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];

/// The uid of the image's USER and of every pod's securityContext.
const UID: i64 = 10001;

/// Every folder of `deploy/` with a kustomization that is not a component, sorted.
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                if !text.contains("kind: Component") {
                    out.push(dir.to_path_buf());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    let names: Vec<String> = out.iter().map(|p| rel(p)).collect();
    for want in ["base", "overlays/sidecar", "overlays/prometheus-operator"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(deploy_dir()).unwrap().display().to_string()
}

/// `kubectl kustomize DIR`: the manifests as applied.
fn render(dir: &Path) -> String {
    run_ok(Command::new(tool("kubectl")).arg("kustomize").arg(dir))
}

fn is_prometheus_operator(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

/// Each overlay as rendered, by its folder.
fn rendered() -> BTreeMap<String, Vec<Value>> {
    kustomizations()
        .iter()
        .map(|dir| (rel(dir), documents(&render(dir))))
        .collect()
}

fn yaml_stream(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Prometheus Operator's resources validated by its generated models (cloudcoil): a
/// field the model does not know, or whose value it had to change, is an error.
const OPERATOR_CHECK: &str = r#"
import json, sys
from cloudcoil.models.prometheus_operator import v1

def diff(given, kept, path=""):
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for k, v in given.items():
            out += diff(v, kept[k], f"{path}/{k}") if k in kept else [f"{path}/{k}: not in the schema"]
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [e for i, (a, b) in enumerate(zip(given, kept)) for e in diff(a, b, f"{path}/{i}")]
    return [] if given == kept else [f"{path}: {given!r} read as {kept!r}"]

errors = []
for doc in json.load(sys.stdin):
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    try:
        model = getattr(v1, doc["kind"]).model_validate(doc)
    except Exception as e:
        errors.append(f"{name}: {e}")
        continue
    kept = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    errors += [f"{name}{e}" for e in diff(doc, kept)]
print("\n".join(errors))
sys.exit(1 if errors else 0)
"#;

#[test]
fn every_overlay_renders_and_validates_against_the_schemas() {
    let dir = TempDir::new();
    let mut files = Vec::new();
    let mut resources = 0;
    let mut operator_docs = Vec::new();
    for (name, docs) in rendered() {
        assert!(!docs.is_empty(), "{name} rendered nothing");
        let (operator, builtin): (Vec<&Value>, Vec<&Value>) =
            docs.iter().partition(|d| is_prometheus_operator(d));
        if !builtin.is_empty() {
            let file = dir.0.join(format!("{}.yaml", name.replace('/', "-")));
            std::fs::write(&file, yaml_stream(&builtin)).unwrap();
            files.push(file);
            resources += builtin.len();
        }
        operator_docs.extend(operator.into_iter().cloned());
    }
    // One Python for all of them: importing the models takes seconds.
    assert!(operator_docs.len() >= 3, "{operator_docs:?}");
    let input = serde_json::to_vec(&operator_docs).unwrap();
    let out = run(
        Command::new(tools_python()).args(["-c", OPERATOR_CHECK]),
        &input,
    );
    assert!(
        out.status.success(),
        "Prometheus Operator resources:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for version in KUBERNETES {
        let out = run(
            Command::new(tool("kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", version])
                .args(&files),
            b"",
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("WARN") && !text.contains("ERROR"),
            "against Kubernetes {version}:\n{text}"
        );
        assert_eq!(
            text.matches(" passed for resource ").count(),
            resources,
            "every resource validated against {version}: {text}"
        );
    }
}

/// Every container of a pod template, init containers included.
fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

fn switchyard_container(pod: &Value) -> &Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == "switchyard")
        .unwrap_or_else(|| panic!("no switchyard container in {pod:#}"))
}

#[test]
fn the_kit_keeps_its_promises() {
    let mut checked = Vec::new();
    for (name, docs) in rendered() {
        let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
        let deployments: Vec<&Value> = kind("Deployment").collect();
        let [deployment] = deployments[..] else {
            assert!(deployments.is_empty(), "{name}: one Deployment per overlay");
            continue;
        };
        checked.push(name.clone());
        let pod = &deployment["spec"]["template"]["spec"];
        let sw = switchyard_container(pod);
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];

        assert!(
            deployment["spec"]["replicas"].as_i64() >= Some(2),
            "{name}: replicas"
        );
        assert!(
            kind("PodDisruptionBudget").count() == 1,
            "{name}: a PodDisruptionBudget"
        );
        let spread = pod["topologySpreadConstraints"].as_array().unwrap();
        assert!(
            spread
                .iter()
                .any(|s| s["topologyKey"] == "kubernetes.io/hostname")
                && spread
                    .iter()
                    .any(|s| s["topologyKey"] == "topology.kubernetes.io/zone"),
            "{name}: spread over nodes and zones"
        );

        // Probes on the ops port, preStop sleep, the grace period covers it and the drain.
        assert_eq!(
            sw["readinessProbe"]["httpGet"],
            json!({ "path": "/readyz", "port": "ops" }),
            "{name}"
        );
        assert_eq!(
            sw["livenessProbe"]["httpGet"],
            json!({ "path": "/livez", "port": "ops" }),
            "{name}"
        );
        let ops_port = sw["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ops");
        assert_eq!(
            ops_port.map(|p| &p["containerPort"]),
            Some(&json!(9902)),
            "{name}"
        );
        let sleep = sw["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap_or(0);
        assert!(sleep >= 3, "{name}: preStop sleep");
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);

        // The config: a ConfigMap mounted as a directory (never subPath), with a stable name.
        let config_map = kind("ConfigMap")
            .next()
            .unwrap_or_else(|| panic!("{name}: no ConfigMap"));
        let cm_name = config_map["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            cm_name, "switchyard-config",
            "{name}: no hash suffix, so edits reach the pods"
        );
        let volumes = pod["volumes"].as_array().unwrap();
        let mounts = sw["volumeMounts"].as_array().unwrap();
        for c in containers(pod) {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                assert!(
                    m.get("subPath").is_none(),
                    "{name}: subPath never sees ConfigMap updates"
                );
            }
        }
        let volume_at = |path: &str| {
            let m = mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{name}: nothing at {path}"));
            volumes.iter().find(|v| v["name"] == m["name"]).unwrap()
        };
        assert_eq!(
            volume_at("/etc/switchyard")["configMap"]["name"],
            cm_name,
            "{name}"
        );
        let config: serde_yaml::Value =
            serde_yaml::from_str(config_map["data"]["switchyard.yaml"].as_str().unwrap()).unwrap();
        let state_dir = config["state_dir"].as_str().unwrap();
        assert!(
            volume_at(state_dir).get("emptyDir").is_some(),
            "{name}: state_dir on an emptyDir"
        );
        assert_eq!(config["ops"]["bind"], "0.0.0.0:9902", "{name}");
        assert!(
            config["admin"]["bind"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{name}: the admin API stays on loopback"
        );
        let drain: i64 = config["drain_timeout"]
            .as_str()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            grace > sleep + drain,
            "{name}: grace {grace} s <= preStop {sleep} s + drain {drain} s"
        );

        // Hardened: every container of the pod.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["runAsUser"], UID, "{name}");
        for c in containers(pod) {
            let sc = &c["securityContext"];
            let who = format!("{name}: container {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{who}");
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
        }
        assert_eq!(sw["securityContext"]["runAsUser"], UID, "{name}");
        assert_eq!(
            labels["switchyard/metrics"], "ops",
            "{name}: what the PodMonitor selects"
        );

        if name == "overlays/sidecar" {
            // A native sidecar: an init container that keeps running.
            assert_eq!(sw["restartPolicy"], "Always", "{name}");
            assert!(
                pod["initContainers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["name"] == "switchyard")
            );
        } else {
            let ns: Vec<&Value> = kind("Namespace").collect();
            assert_eq!(ns.len(), 1, "{name}");
            let enforce = &ns[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"];
            assert_eq!(enforce, "restricted", "{name}");
        }
        for monitor in kind("PodMonitor") {
            for (k, v) in monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
            {
                assert_eq!(&labels[k], v, "{name}: the PodMonitor selects the pods");
            }
            assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "ops");
        }
        if name == "overlays/prometheus-operator" {
            assert_eq!(kind("PodMonitor").count(), 1);
            assert_eq!(kind("PrometheusRule").count(), 1);
        }
    }
    assert_eq!(
        checked,
        ["base", "overlays/prometheus-operator", "overlays/sidecar"]
    );
}

/// The sidecar component runs the same container as the ingress (a test, not a promise kept
/// by hand), but for `restartPolicy: Always`.
#[test]
fn the_sidecar_is_the_ingress_container() {
    let read = |p: &str| -> Value {
        let text = std::fs::read_to_string(deploy_dir().join(p)).unwrap();
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()).unwrap()
    };
    let base = read("base/deployment.yaml");
    let sidecar = read("components/sidecar/sidecar.yaml");
    let mut sc = switchyard_container(&sidecar["spec"]["template"]["spec"]).clone();
    assert_eq!(
        sc.as_object_mut().unwrap().remove("restartPolicy"),
        Some(json!("Always"))
    );
    let ingress = switchyard_container(&base["spec"]["template"]["spec"]);
    assert_eq!(
        &sc, ingress,
        "components/sidecar/sidecar.yaml and base/deployment.yaml differ"
    );
    assert_eq!(
        sidecar["spec"]["template"]["spec"]["volumes"],
        base["spec"]["template"]["spec"]["volumes"]
    );
}

/// checkov over every overlay as rendered and over the Dockerfile: nothing fails, and every
/// skipped check says why (in an annotation or a `# checkov:skip` comment next to the thing).
#[test]
fn checkov_fails_nothing_and_every_skip_is_explained() {
    let dir = TempDir::new();
    for (name, docs) in rendered() {
        let docs: Vec<&Value> = docs.iter().collect();
        std::fs::write(
            dir.0.join(format!("{}.yaml", name.replace('/', "-"))),
            yaml_stream(&docs),
        )
        .unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
        dir.0.join("Dockerfile"),
    )
    .unwrap();
    let out = run(
        Command::new(tool("checkov"))
            .arg("--directory")
            .arg(&dir.0)
            .args(["--framework", "kubernetes", "dockerfile"])
            .args(["--skip-download", "--output", "json"]),
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let reports: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports: Vec<&Value> = match &reports {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let mut table: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
    let mut failed = Vec::new();
    for r in &reports {
        let frameworks = r["check_type"].as_str().unwrap_or("?");
        for (key, status) in [
            ("passed_checks", "passed"),
            ("skipped_checks", "skipped"),
            ("failed_checks", "FAILED"),
        ] {
            for c in r["results"][key].as_array().into_iter().flatten() {
                let id = c["check_id"].as_str().unwrap_or("?").to_owned();
                let why = c["check_result"]["suppress_comment"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let resource = format!("{} {} in {}", frameworks, c["resource"], c["file_path"]);
                match status {
                    "FAILED" => failed.push(format!("{id} {}: {resource}", c["check_name"])),
                    "skipped" => assert!(
                        why.trim().len() > 20,
                        "{id} on {resource} is skipped without a reason"
                    ),
                    _ => {}
                }
                // One line per check: failed beats skipped beats passed.
                let entry = table
                    .entry(format!("{id} {}", c["check_name"].as_str().unwrap_or("")))
                    .or_insert((status, why.clone()));
                if status == "FAILED" || (status == "skipped" && entry.0 == "passed") {
                    *entry = (status, why);
                }
            }
        }
    }
    println!("checkov {} checks:", table.len());
    for (check, (status, why)) in &table {
        println!(
            "  {status:8} {check}{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" -- {why}")
            }
        );
    }
    assert!(failed.is_empty(), "checkov failed:\n{}", failed.join("\n"));
    assert!(
        reports.iter().any(|r| r["check_type"] == "dockerfile")
            && reports.iter().any(|r| r["check_type"] == "kubernetes"),
        "both frameworks ran: {text}"
    );
    assert!(table.len() > 50, "checkov ran {} checks", table.len());
}

/// The final stage: distroless (no shell, no package manager), the same uid as the pods, the
/// ports the manifests use; hadolint has nothing to say.
#[test]
fn the_dockerfile_is_distroless_non_root_and_lints_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let out = run(Command::new(tool("hadolint")).arg(&path), b"");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let stage = &lines[last_from..];
    assert!(
        stage[0].contains("gcr.io/distroless/") || stage[0].starts_with("FROM scratch"),
        "{}",
        stage[0]
    );
    assert!(
        !stage.iter().any(|l| l.starts_with("RUN ")),
        "the final stage has no shell to RUN with"
    );
    assert!(
        stage.contains(&format!("USER {UID}:{UID}").as_str()),
        "USER {UID}:{UID}"
    );
    assert!(
        stage
            .iter()
            .any(|l| l.starts_with("EXPOSE ") && l.contains("8080") && l.contains("9902"))
    );
    assert!(
        stage
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/switchyard\"]"))
    );
}

/// `switchyard check` accepts the configs the kit ships.
#[test]
fn the_kits_configs_pass_switchyard_check() {
    for config in ["base/switchyard.yaml", "overlays/sidecar/switchyard.yaml"] {
        let path = deploy_dir().join(config);
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["check", "--skip-bind", "-c"])
                .arg(&path),
            b"",
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{config}:\n{stderr}");
    }
}
