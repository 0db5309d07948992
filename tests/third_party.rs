//! Third-party clients against a `fleetsim emulator` process: mosquitto's command-line
//! clients over mutual TLS with MQTT 3.1.1 and 5, AWS's IoT device SDK for Python and
//! MQTT.js provisioning by claim, boto3 and the AWS CLI against the control plane. Other
//! devices provision by claim with the paho-mqtt client of tests/python. A missing tool
//! fails the test (never skips it): `.ci/run` installs them.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use fleetsim::control::ControlPlane;
use fleetsim::standalone::EmulatorInfo;
use serde_json::Value;
use support::standalone::StandaloneProcess;

const CLAIM_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/claim_client.py");
const BOTO3_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/third_party/boto3_control.py"
);
const AWS_SDK_DEVICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/third_party/aws_sdk_device.py"
);
const MQTTJS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/third_party/node");

/// A `fleetsim emulator` process on free loopback ports, killed on drop.
struct Emulator {
    /// Kept for its drop, which stops the process.
    _process: StandaloneProcess,
    info: EmulatorInfo,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Emulator {
    fn start() -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let process = StandaloneProcess::start(&state, "365d");
        Emulator {
            info: process.info.clone(),
            _process: process,
            state,
            _dir: dir,
        }
    }

    fn info_path(&self) -> String {
        self.state.join("emulator.json").display().to_string()
    }

    /// Provisions one device by claim with the paho-mqtt client; returns its JSON summary.
    fn provision(&self, serial: &str) -> Value {
        let out = self.state.join("devices").join(serial);
        let output = run_tool(
            "python3",
            &[
                CLAIM_CLIENT,
                "provision",
                &self.info_path(),
                &out.display().to_string(),
                serial,
            ],
        );
        assert!(
            output.status.success(),
            "provisioning failed: {}",
            stderr(&output)
        );
        serde_json::from_slice(&output.stdout).expect("the claim client prints JSON")
    }

    fn device_connects(&self, device: &Value) -> bool {
        let output = run_tool(
            "python3",
            &[
                CLAIM_CLIENT,
                "connect",
                &self.info_path(),
                text(device, "certificate"),
                text(device, "key"),
                text(device, "thing"),
            ],
        );
        assert!(
            output.status.success(),
            "connect failed: {}",
            stderr(&output)
        );
        let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON answer");
        answer["connected"].as_bool().expect("a boolean")
    }

    fn control(&self) -> ControlPlane {
        ControlPlane::for_endpoint(&self.info.control_url, &self.info.region)
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a third-party tool; a tool that is not installed fails the test with what to install.
fn run_tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} must be installed (.ci/run does it): {error}"))
}

/// Fails loudly when a Python module is missing, naming the pip package.
fn require_python_module(module: &str, package: &str) {
    let check = run_tool("python3", &["-c", &format!("import {module}")]);
    assert!(
        check.status.success(),
        "python3 lacks {module} (`pip install {package}`, .ci/run does it): {}",
        stderr(&check)
    );
}

/// The mutual-TLS arguments mosquitto's clients need to act as `device`.
fn mosquitto_tls(emulator: &Emulator, device: &Value) -> Vec<String> {
    let info = &emulator.info;
    [
        "-h",
        &info.mqtt_host,
        "-p",
        &info.mqtt_port.to_string(),
        "--cafile",
        &info.root_ca.display().to_string(),
        "--cert",
        text(device, "certificate"),
        "--key",
        text(device, "key"),
        "-i",
        text(device, "thing"),
        "-q",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Lets `observer` subscribe to and receive every device's `fleetsim/...` topics, as a
/// back end's certificate would; the device policy alone confines it to its own topics.
async fn allow_observing(emulator: &Emulator, observer: &Value) {
    let control = emulator.control();
    let client = control.client();
    let document = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/fleetsim/*"},
        {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/fleetsim/*"}]}"#;
    client
        .create_policy()
        .policy_name("observer")
        .policy_document(document)
        .send()
        .await
        .expect("CreatePolicy");
    let described = client
        .describe_certificate()
        .certificate_id(text(observer, "certificate_id"))
        .send()
        .await
        .expect("DescribeCertificate");
    let arn = described
        .certificate_description()
        .and_then(|d| d.certificate_arn())
        .expect("the certificate has an ARN");
    client
        .attach_policy()
        .policy_name("observer")
        .target(arn)
        .send()
        .await
        .expect("AttachPolicy");
}

/// `mosquitto_sub -d` as `observer` waits for one message on `publisher`'s telemetry topic;
/// once its debug output shows the SUBACK, `mosquitto_pub` as `publisher` sends the message.
/// Returns the subscriber's output lines.
fn mosquitto_round_trip(
    emulator: &Emulator,
    version: &str,
    observer: &Value,
    publisher: &Value,
) -> Vec<String> {
    let topic = format!("fleetsim/{}/telemetry", text(publisher, "thing"));
    let mut sub_args: Vec<String> = ["-d", "-V", version, "-t", &topic, "-C", "1", "-W", "10"]
        .map(str::to_owned)
        .to_vec();
    sub_args.extend(mosquitto_tls(emulator, observer));
    // Line-buffered, or the SUBACK line would reach the pipe only when mosquitto_sub exits.
    let mut subscriber = Command::new("stdbuf")
        .arg("-oL")
        .arg("mosquitto_sub")
        .args(&sub_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub must be installed (apt mosquitto-clients, .ci/run does it)");
    let mut lines = BufReader::new(subscriber.stdout.take().expect("stdout is piped")).lines();
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|line| line.contains("received SUBACK")) {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => panic!("mosquitto_sub {version} ended before its SUBACK: {seen:?}"),
        }
    }
    let message = format!("hello over {version}");
    let mut pub_args: Vec<String> = ["-V", version, "-t", &topic, "-m", &message]
        .map(str::to_owned)
        .to_vec();
    pub_args.extend(mosquitto_tls(emulator, publisher));
    let refs: Vec<&str> = pub_args.iter().map(String::as_str).collect();
    let published = run_tool("mosquitto_pub", &refs);
    assert!(
        published.status.success(),
        "mosquitto_pub {version}: {}",
        stderr(&published)
    );
    seen.extend(lines.map_while(Result::ok));
    let status = subscriber.wait().expect("mosquitto_sub ends");
    assert!(status.success(), "mosquitto_sub {version}: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_clients_publish_and_subscribe_over_mutual_tls_with_mqtt_3_and_5() {
    require_python_module("paho.mqtt.client, cryptography", "paho-mqtt cryptography");
    let emulator = Emulator::start();
    let observer = emulator.provision("mosq-observer");
    let publisher = emulator.provision("mosq-publisher");
    allow_observing(&emulator, &observer).await;

    for version in ["mqttv311", "mqttv5"] {
        let received = mosquitto_round_trip(&emulator, version, &observer, &publisher);
        let message = format!("hello over {version}");
        assert!(received.contains(&message), "{version}: {received:?}");
    }
}

/// `mosquitto_pub` as `device` over MQTT 3.1.1 sends one QoS 1 message to `topic`.
fn mosquitto_publish(emulator: &Emulator, device: &Value, topic: &str) -> Output {
    let mut args: Vec<String> = ["-V", "mqttv311", "-t", topic, "-m", "x"]
        .map(str::to_owned)
        .to_vec();
    args.extend(mosquitto_tls(emulator, device));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_tool("mosquitto_pub", &refs)
}

#[test]
fn mosquitto_pub_over_mqtt_3_is_disconnected_for_a_topic_outside_its_device_policy() {
    require_python_module("paho.mqtt.client, cryptography", "paho-mqtt cryptography");
    let emulator = Emulator::start();
    let device = emulator.provision("mosq-confined");
    let own = format!("fleetsim/{}/telemetry", text(&device, "thing"));

    let allowed = mosquitto_publish(&emulator, &device, &own);
    let refused = mosquitto_publish(&emulator, &device, "fleetsim/someone-else/telemetry");

    assert!(allowed.status.success(), "own topic: {}", stderr(&allowed));
    assert!(!refused.status.success(), "a foreign topic must be refused");
}

#[test]
fn boto3_reads_the_registry_and_revokes_a_device_which_is_then_refused() {
    require_python_module("boto3", "boto3");
    let emulator = Emulator::start();
    let device = emulator.provision("boto3-device");
    assert!(
        emulator.device_connects(&device),
        "active before revocation"
    );

    let output = run_tool(
        "python3",
        &[
            BOTO3_CLIENT,
            &emulator.info_path(),
            text(&device, "certificate_id"),
        ],
    );
    assert!(output.status.success(), "boto3 failed: {}", stderr(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON answer");

    let endpoint = format!("{}:{}", emulator.info.mqtt_host, emulator.info.mqtt_port);
    assert!(
        text(&answer, "endpoint").ends_with(&format!(":{}", emulator.info.mqtt_port)),
        "{answer} vs {endpoint}"
    );
    assert_eq!(
        answer["things"],
        serde_json::json!(["fleetsim-boto3-device"])
    );
    assert_eq!(
        answer["claim_id"],
        emulator.info.claim_certificate_id.as_str()
    );
    assert_eq!(answer["claim_status"], "ACTIVE");
    let claim_pem = std::fs::read_to_string(&emulator.info.claim_certificate).unwrap();
    assert_eq!(text(&answer, "claim_pem").trim(), claim_pem.trim());
    assert_eq!(answer["revoked_status"], "REVOKED");
    assert!(
        !emulator.device_connects(&device),
        "a revoked certificate is refused"
    );
}

/// The AWS CLI v1 against the control plane, with dummy credentials; its JSON output.
fn aws_cli(emulator: &Emulator, args: &[&str]) -> Value {
    let output = Command::new("aws")
        .args(args)
        .args([
            "--endpoint-url",
            &emulator.info.control_url,
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIDFLEETSIMTEST")
        .env("AWS_SECRET_ACCESS_KEY", "dummy")
        .env("AWS_DEFAULT_REGION", &emulator.info.region)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|error| panic!("aws must be installed (`pip install awscli`): {error}"));
    assert!(output.status.success(), "aws {args:?}: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("the AWS CLI prints JSON")
}

#[test]
fn the_aws_cli_describes_the_endpoint_and_lists_certificates() {
    let emulator = Emulator::start();
    let device = emulator.provision("cli-device");

    let endpoint = aws_cli(
        &emulator,
        &[
            "iot",
            "describe-endpoint",
            "--endpoint-type",
            "iot:Data-ATS",
        ],
    );
    let address = text(&endpoint, "endpointAddress");
    assert!(
        address.ends_with(&format!(":{}", emulator.info.mqtt_port)),
        "{address}"
    );

    let listed = aws_cli(&emulator, &["iot", "list-certificates"]);
    let mut ids: Vec<&str> = listed["certificates"]
        .as_array()
        .expect("a certificates array")
        .iter()
        .map(|c| text(c, "certificateId"))
        .collect();
    ids.sort_unstable();
    let mut expected = vec![
        emulator.info.claim_certificate_id.as_str(),
        text(&device, "certificate_id"),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(
        listed["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "ACTIVE")
    );
}

/// Runs a device script that provisions `serial` by claim and echoes one message as its
/// thing; returns its JSON summary after checking the echo.
fn provision_with_script(emulator: &Emulator, program: &str, script: &str, serial: &str) -> Value {
    let out = emulator.state.join("devices").join(serial);
    let info = emulator.info_path();
    let output = run_tool(
        program,
        &[script, &info, &out.display().to_string(), serial],
    );
    assert!(
        output.status.success(),
        "{script} failed: {}",
        stderr(&output)
    );
    let device: Value = serde_json::from_slice(&output.stdout).expect("the device prints JSON");
    assert_eq!(device["echo"], r#"{"temp":21.5}"#, "{device}");
    device
}

/// What the registry and the disk hold after a third-party device provisioned itself.
async fn assert_provisioned(emulator: &Emulator, device: &Value, serial: &str) {
    let thing = text(device, "thing");
    assert_eq!(thing, format!("fleetsim-{serial}"));
    let status = emulator
        .control()
        .describe_certificate(text(device, "certificate_id"))
        .await
        .expect("the issued certificate is in the registry");
    assert_eq!(status.status, "ACTIVE", "{status:?}");
    let principals = emulator
        .control()
        .list_thing_principals(thing)
        .await
        .unwrap();
    assert_eq!(principals.len(), 1, "{principals:?}");
    assert!(principals[0].ends_with(text(device, "certificate_id")));
    for file in ["certificate", "key"] {
        let mode = std::fs::metadata(text(device, file)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
    assert!(
        emulator.device_connects(device),
        "the stored identity connects again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_iot_device_sdk_provisions_by_claim_over_mqtt_5_and_echoes_as_its_thing() {
    require_python_module("awsiot.iotidentity, awscrt", "awsiotsdk");
    require_python_module("paho.mqtt.client, cryptography", "paho-mqtt cryptography");
    let emulator = Emulator::start();

    let device = provision_with_script(&emulator, "python3", AWS_SDK_DEVICE, "sdk-0001");

    assert_provisioned(&emulator, &device, "sdk-0001").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_js_provisions_with_service_made_keys_and_echoes_as_its_thing_over_mqtt_3() {
    require_python_module("paho.mqtt.client, cryptography", "paho-mqtt cryptography");
    let installed = PathBuf::from(MQTTJS_DIR).join("node_modules/mqtt/package.json");
    assert!(
        installed.exists(),
        "MQTT.js is missing: run `npm ci` in {MQTTJS_DIR} (.ci/run does it)"
    );
    let emulator = Emulator::start();
    let script = format!("{MQTTJS_DIR}/mqttjs_device.mjs");

    let device = provision_with_script(&emulator, "node", &script, "js-0001");

    assert_provisioned(&emulator, &device, "js-0001").await;
    let key = std::fs::read_to_string(text(&device, "key")).unwrap();
    assert!(
        key.contains("BEGIN RSA PRIVATE KEY"),
        "AWS makes RSA keys: {key}"
    );
}
