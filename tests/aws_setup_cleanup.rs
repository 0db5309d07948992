//! `fleetsim setup`, `fleetsim run` with `target: aws` and `fleetsim cleanup`
//! as processes against a standalone `fleetsim emulator`, reached only
//! through `--endpoint-url` and the AWS SDK's credential chain (static
//! credentials in the environment). The emulator's registry is inspected
//! with the real `aws-sdk-iot`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fleetsim::control::ControlPlane;
use serde_json::Value;
use support::standalone::StandaloneProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const ROLE: &str = "arn:aws:iam::123456789012:role/loadtest-provisioning";
const PREFIX: &str = "loadtest";

/// An emulator process and a working folder in which `certs/` is created.
struct Bench {
    dir: tempfile::TempDir,
    emulator: StandaloneProcess,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn start(validity: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let emulator = StandaloneProcess::start(&dir.path().join("state"), validity);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Bench {
            dir,
            emulator,
            runtime,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the binary in the working folder with only the environment's
    /// static credentials: no profile file, no instance metadata.
    fn fleetsim(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BINARY)
            .args(args)
            .current_dir(self.path())
            .env("AWS_ACCESS_KEY_ID", "fleetsim-test")
            .env("AWS_SECRET_ACCESS_KEY", "fleetsim-test-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path().join("no-aws-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn setup(&self, extra: &[&str], stdin: &str) -> Output {
        let root_ca = self.emulator.info.root_ca.display().to_string();
        let control_url = self.emulator.info.control_url.clone();
        let mut args = vec![
            "setup",
            "--prefix",
            PREFIX,
            "--endpoint-url",
            &control_url,
            "--region",
            "us-east-1",
            "--role-arn",
            ROLE,
            "--root-ca",
            &root_ca,
        ];
        args.extend_from_slice(extra);
        self.fleetsim(&args, stdin)
    }

    /// Cleanup with no target description to read: everything from flags.
    fn cleanup_by_flags(&self) -> Output {
        let url = self.emulator.info.control_url.clone();
        let args = ["cleanup", "--prefix", PREFIX, "--endpoint-url", &url];
        let args = [&args[..], &["--region", "us-east-1", "--yes"]].concat();
        self.fleetsim(&args, "")
    }

    fn control(&self) -> ControlPlane {
        ControlPlane::for_endpoint(&self.emulator.info.control_url, "us-east-1")
    }

    fn things_with_prefix(&self) -> Vec<String> {
        let control = self.control();
        self.runtime.block_on(async {
            let mut pages = control.client().list_things().into_paginator().send();
            let mut names = Vec::new();
            while let Some(page) = pages.next().await {
                for thing in page.unwrap().things() {
                    let name = thing.thing_name().unwrap().to_owned();
                    if name.starts_with("loadtest-") {
                        names.push(name);
                    }
                }
            }
            names
        })
    }

    fn certificate_count(&self) -> usize {
        let control = self.control();
        self.runtime.block_on(async {
            let mut pages = control.client().list_certificates().into_paginator().send();
            let mut count = 0;
            while let Some(page) = pages.next().await {
                count += page.unwrap().certificates().len();
            }
            count
        })
    }

    fn policy_exists(&self, name: &str) -> bool {
        let control = self.control();
        self.runtime.block_on(async {
            let call = control.client().get_policy().policy_name(name);
            call.send().await.is_ok()
        })
    }

    fn template_exists(&self, name: &str) -> bool {
        let control = self.control();
        self.runtime.block_on(async {
            let call = control.client().describe_provisioning_template();
            call.template_name(name).send().await.is_ok()
        })
    }

    /// Nothing named with the prefix is left in the registry, and the
    /// certificates are back to what the emulator had before setup.
    fn assert_nothing_left(&self, certificates_before: usize) {
        assert_eq!(self.things_with_prefix(), Vec::<String>::new());
        assert!(!self.policy_exists("loadtest-claim"));
        assert!(!self.policy_exists("loadtest-device"));
        assert!(!self.template_exists("loadtest-fleet"));
        assert_eq!(self.certificate_count(), certificates_before);
        assert!(!self.path().join("certs/aws").exists());
        // The emulator's own resources, under another prefix, are untouched.
        assert!(self.policy_exists("fleetsim-claim"));
        assert!(self.template_exists("fleetsim-fleet"));
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn scenario(dir: &Path, size: u32) -> PathBuf {
    let text = format!(
        "name: aws-target
target: aws
fleet:
  size: {size}
arrival:
  rate: 50/s
provisioning:
  template: loadtest-fleet
certificates:
  validity: 6s
rotation:
  check_every: 500ms
  renew_before: 3s
telemetry:
  interval: 500ms
run:
  duration: 9s
credentials:
  dir: {}
slo:
  min_rotations_per_device: 1
",
        dir.join("run-credentials").display()
    );
    let path = dir.join("aws-target.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn setup_then_a_run_then_cleanup_leave_nothing_with_the_prefix() {
    let bench = Bench::start("6s");
    let before = bench.certificate_count();

    let setup = bench.setup(&["--yes"], "");
    assert_success(&setup);
    assert!(stdout(&setup).contains("+ create policy loadtest-claim"));
    let target = bench.path().join("certs/aws");
    for file in [
        "target.json",
        "claim-certificate.pem",
        "claim-private.key",
        "root-ca.pem",
    ] {
        assert_eq!(mode(&target.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&target), 0o700);

    let scenario = scenario(bench.path(), 30);
    let run = bench.fleetsim(
        &["run", scenario.to_str().unwrap(), "--no-metrics", "--yes"],
        "",
    );
    assert_success(&run);
    assert!(stdout(&run).contains("estimated AWS IoT Core cost: USD"));
    assert!(stdout(&run).contains("the fleet keeps to: connect 500/s"));
    assert_eq!(bench.things_with_prefix().len(), 30);

    let dry = bench.fleetsim(&["cleanup", "--dry-run"], "");
    assert_success(&dry);
    assert!(stdout(&dry).contains("- delete 30 things named loadtest-*"));
    assert!(stdout(&dry).contains("dry run: nothing changed"));
    assert_eq!(bench.things_with_prefix().len(), 30);

    let refused = bench.fleetsim(&["cleanup"], "no\n");
    assert!(stdout(&refused).contains("not confirmed"));
    assert_eq!(bench.things_with_prefix().len(), 30);

    let cleanup = bench.fleetsim(&["cleanup"], "y\n");
    assert_success(&cleanup);
    assert!(stdout(&cleanup).contains("cleanup complete"));
    bench.assert_nothing_left(before);

    let again = bench.cleanup_by_flags();
    assert_success(&again);
    assert!(stdout(&again).contains("nothing to delete under prefix loadtest"));
}

#[test]
fn a_run_against_the_aws_target_reports_its_devices_and_rotations() {
    let bench = Bench::start("6s");
    assert_success(&bench.setup(&["--yes"], ""));
    let report = bench.path().join("report.json");

    let run = bench.fleetsim(
        &[
            "run",
            scenario(bench.path(), 6).to_str().unwrap(),
            "--no-metrics",
            "--report",
            report.to_str().unwrap(),
        ],
        "yes\n",
    );

    assert_success(&run);
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["provisioned"], 6);
    assert_eq!(report["bricked"], 0);
    assert!(report["rotations"]["per_device_min"].as_u64().unwrap() >= 1);
    assert_eq!(report["retired_still_accepted"], 0);
}

#[test]
fn setup_run_twice_creates_nothing_the_second_time() {
    let bench = Bench::start("1h");
    assert_success(&bench.setup(&["--yes"], ""));
    let certificates = bench.certificate_count();
    let description = std::fs::read(bench.path().join("certs/aws/target.json")).unwrap();

    let second = bench.setup(&["--yes"], "");

    assert_success(&second);
    let text = stdout(&second);
    assert!(text.contains("nothing to change"), "{text}");
    assert!(!text.contains("+ create"), "{text}");
    assert_eq!(bench.certificate_count(), certificates);
    let after = std::fs::read(bench.path().join("certs/aws/target.json")).unwrap();
    assert_eq!(after, description);
}

#[test]
fn setup_changes_nothing_unless_confirmed_or_when_dry() {
    let bench = Bench::start("1h");
    let before = bench.certificate_count();

    let dry = bench.setup(&["--dry-run"], "");
    let unconfirmed = bench.setup(&[], "");

    assert_success(&dry);
    assert!(stdout(&dry).contains("+ create provisioning template loadtest-fleet"));
    assert!(stdout(&unconfirmed).contains("not confirmed"));
    assert!(!bench.policy_exists("loadtest-claim"));
    assert_eq!(bench.certificate_count(), before);
    assert!(!bench.path().join("certs/aws").exists());
}

#[test]
fn cleanup_after_a_half_failed_setup_removes_what_exists() {
    let bench = Bench::start("1h");
    let before = bench.certificate_count();
    let policies = broken_template_policies(bench.path());

    let failed = bench.setup(&["--yes", "--policies", policies.to_str().unwrap()], "");

    assert_eq!(failed.status.code(), Some(2), "{}", stdout(&failed));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("CreateProvisioningTemplate"), "{stderr}");
    assert!(bench.policy_exists("loadtest-claim"));
    assert!(!bench.template_exists("loadtest-fleet"));

    let resumed = bench.setup(&["--dry-run"], "");
    assert!(stdout(&resumed).contains("= keep   policy loadtest-claim"));
    assert!(stdout(&resumed).contains("+ create provisioning template loadtest-fleet"));

    let cleanup = bench.cleanup_by_flags();
    assert_success(&cleanup);
    bench.assert_nothing_left(before);
}

/// The repository's policies with a template the service refuses (a
/// resource type that does not exist), so setup fails after the policies.
fn broken_template_policies(dir: &Path) -> PathBuf {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let broken = dir.join("broken-policies");
    std::fs::create_dir_all(&broken).unwrap();
    for file in ["claim-policy.json", "device-policy.json"] {
        std::fs::copy(repository.join(file), broken.join(file)).unwrap();
    }
    let template = r#"{"Resources": {"thing": {"Type": "AWS::IoT::NoSuchThing"}}}"#;
    std::fs::write(broken.join("provisioning-template.json"), template).unwrap();
    broken
}

#[test]
fn a_run_with_target_aws_and_no_setup_says_to_run_setup_first() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path(), 1);

    let out = Command::new(BINARY)
        .args(["run", scenario.to_str().unwrap(), "--no-metrics", "--yes"])
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certs/aws/target.json"), "{stderr}");
    assert!(stderr.contains("run `fleetsim setup` first"), "{stderr}");
}

#[test]
fn setup_refuses_a_prefix_that_would_break_aws_names_before_calling_anything() {
    let dir = tempfile::tempdir().unwrap();

    let out = Command::new(BINARY)
        .args([
            "setup",
            "--prefix",
            "bad/prefix",
            "--region",
            "us-east-1",
            "--yes",
        ])
        .args(["--endpoint-url", "http://127.0.0.1:9"])
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prefix \"bad/prefix\""), "{stderr}");
    assert!(!dir.path().join("certs").exists());
}
