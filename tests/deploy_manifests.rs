//! The Kubernetes manifests in `deploy/kubernetes/`: each built-in resource
//! validates against Kubernetes' own schemas (kubernetes-validate, strict),
//! and the fields that tie the files together are checked here: the Job's
//! shard count, index, report path, metrics port, mounts and the PodMonitor
//! that scrapes it. The scenario in the ConfigMap must be a valid scenario and
//! the Job's arguments must be accepted by the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetsim::scenario::Scenario;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const KUBERNETES_VERSION: &str = "1.30.0";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn manifest(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("the manifest exists");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text at {pointer}"))
}

fn container(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

fn args(job: &Value) -> Vec<&str> {
    let args = container(job)["args"]
        .as_array()
        .expect("the container has args");
    args.iter().map(|a| a.as_str().unwrap()).collect()
}

fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the job passes --{name}"))
}

#[test]
fn built_in_resources_validate_against_the_kubernetes_schemas() {
    let files = [
        "scenario-configmap.yaml",
        "claim-secret.yaml",
        "reports-pvc.yaml",
        "job.yaml",
        "collect-pod.yaml",
    ];
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files.map(|f| dir().join(f)))
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; .ci/run does)");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        files.len(),
        "{report}"
    );
}

#[test]
fn the_job_runs_one_indexed_shard_per_completion() {
    let job = manifest("job.yaml");
    assert_eq!(text(&job, "/spec/completionMode"), "Indexed");
    let completions = job["spec"]["completions"].as_u64().unwrap();
    assert_eq!(
        job["spec"]["parallelism"].as_u64(),
        Some(completions),
        "all shards at once"
    );
    assert_eq!(
        job["spec"]["backoffLimit"].as_u64(),
        Some(0),
        "a failed shard is not rerun"
    );
    let args = args(&job);
    assert_eq!(&args[..1], ["run"]);
    assert_eq!(flag(&args, "shards"), completions.to_string());
    assert_eq!(
        flag(&args, "report"),
        "/reports/report-$(JOB_COMPLETION_INDEX).json",
        "one report file per shard"
    );
    let env = container(&job)["env"].as_array().unwrap();
    let index = env
        .iter()
        .find(|e| e["name"] == "JOB_COMPLETION_INDEX")
        .unwrap();
    assert_eq!(
        text(index, "/valueFrom/fieldRef/fieldPath"),
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    assert_eq!(text(&job, "/spec/template/spec/restartPolicy"), "Never");
}

#[test]
fn the_job_mounts_the_scenario_the_claim_secret_and_the_reports_volume() {
    let job = manifest("job.yaml");
    let pod = &job["spec"]["template"]["spec"];
    let mounts = container(&job)["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        let mount = mounts.iter().find(|m| m["name"] == volume).unwrap();
        text(mount, "/mountPath").to_owned()
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };

    let configmap = manifest("scenario-configmap.yaml");
    assert_eq!(
        text(&volume("scenario"), "/configMap/name"),
        text(&configmap, "/metadata/name")
    );
    let scenario_path = format!("{}/scenario.yaml", mount_of("scenario"));
    assert_eq!(args(&job)[1], scenario_path);
    assert!(configmap["data"]["scenario.yaml"].is_string());

    let secret = manifest("claim-secret.yaml");
    assert_eq!(
        text(&volume("claim"), "/secret/secretName"),
        text(&secret, "/metadata/name")
    );
    for key in ["claim.pem", "claim.key"] {
        assert!(secret["stringData"][key].is_string(), "{key}");
    }

    let pvc = manifest("reports-pvc.yaml");
    let reports = volume("reports");
    let claim = text(&reports, "/persistentVolumeClaim/claimName");
    assert_eq!(claim, text(&pvc, "/metadata/name"));
    assert!(flag(&args(&job), "report").starts_with(&format!("{}/", mount_of("reports"))));
    let collect = manifest("collect-pod.yaml");
    let collected = &collect["spec"]["volumes"][0];
    assert_eq!(text(collected, "/persistentVolumeClaim/claimName"), claim);
}

#[test]
fn the_job_requests_resources_and_is_scraped_on_its_metrics_port() {
    let job = manifest("job.yaml");
    let container = container(&job);
    for resource in ["cpu", "memory"] {
        assert!(
            container["resources"]["requests"][resource].is_string(),
            "{resource} request"
        );
    }
    assert!(container["resources"]["limits"]["memory"].is_string());
    let port = &container["ports"][0];
    let number = port["containerPort"].as_u64().unwrap();
    let annotations = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], number.to_string());
    assert_eq!(flag(&args(&job), "metrics"), format!("$(POD_IP):{number}"));

    let monitor = manifest("podmonitor.yaml");
    assert_eq!(text(&monitor, "/apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(text(&monitor, "/kind"), "PodMonitor");
    let pod_labels = &job["spec"]["template"]["metadata"]["labels"];
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            &pod_labels[key], value,
            "the PodMonitor selects the shard pods"
        );
    }
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    let relabel = &endpoint["relabelings"][0];
    assert_eq!(
        relabel["sourceLabels"][0],
        "__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"
    );
    assert_eq!(
        relabel["targetLabel"], "shard",
        "a bounded shard label from the pod"
    );
}

#[test]
fn the_kustomization_lists_every_resource_of_a_run() {
    let kustomization = manifest("kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let expected = [
        "scenario-configmap.yaml",
        "claim-secret.yaml",
        "reports-pvc.yaml",
        "job.yaml",
        "podmonitor.yaml",
    ];
    assert_eq!(listed, expected);
    for file in listed {
        assert!(dir().join(file).is_file(), "{file}");
    }
}

#[test]
fn the_configmap_scenario_is_valid_and_the_binary_accepts_the_job_arguments() {
    let configmap = manifest("scenario-configmap.yaml");
    let scenario_text = text(&configmap, "/data/scenario.yaml");
    let scenario = Scenario::parse(scenario_text, Path::new("scenario.yaml")).expect("valid");
    let job = manifest("job.yaml");
    let shards: u64 = flag(&args(&job), "shards").parse().unwrap();
    assert!(scenario.fleet.size >= shards, "every shard has devices");

    // The Job's own arguments, with the pod's values filled in; an index past
    // the shard count stops the binary before it starts anything.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scenario.yaml");
    std::fs::write(&path, scenario_text).unwrap();
    let filled: Vec<String> = args(&job)
        .iter()
        .map(|a| {
            a.replace(
                "/etc/fleetsim/scenario/scenario.yaml",
                path.to_str().unwrap(),
            )
            .replace("/reports/", &format!("{}/", tmp.path().display()))
            .replace("$(JOB_COMPLETION_INDEX)", &shards.to_string())
            .replace("$(POD_IP)", "127.0.0.1")
        })
        .collect();
    let out = Command::new(BINARY)
        .args(&filled)
        .env("JOB_COMPLETION_INDEX", shards.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shard index {shards} is out of range: it must be below the shard count {shards}"
        )),
        "{stderr}"
    );
}
