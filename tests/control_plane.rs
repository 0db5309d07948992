//! The control plane end to end: the emulator's REST API on a loopback
//! port, driven by the real `aws-sdk-iot` client, both through fleetsim's
//! `ControlPlane` and through raw SDK calls for the error cases.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_iot::error::ProvideErrorMetadata;
use aws_sdk_iot::operation::RequestId;
use aws_sdk_iot::types::CertificateStatus as WireStatus;
use fleetsim::control::{ControlError, ControlPlane, SetupNames, SetupSpec};
use fleetsim::emulator::ca::CertificateAuthority;
use fleetsim::emulator::control_api::{ControlApi, ControlApiHandle, ControlApiSettings};
use fleetsim::emulator::registry::{CertificateEvent, CertificateStatus, NewCertificate, Registry};

const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";
const ENDPOINT: &str = "localhost:8883";
const VALIDITY: Duration = Duration::from_secs(3600);

struct Emulator {
    registry: Arc<Registry>,
    ca: Arc<CertificateAuthority>,
    api: ControlApiHandle,
    control: ControlPlane,
}

async fn emulator() -> Emulator {
    let registry = Arc::new(Registry::new(REGION, ACCOUNT));
    let ca = Arc::new(CertificateAuthority::generate("fleetsim test root").expect("root CA"));
    let settings = ControlApiSettings {
        endpoint_address: ENDPOINT.to_owned(),
        certificate_validity: VALIDITY,
        ..ControlApiSettings::default()
    };
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    let api = ControlApi::start(bind, Arc::clone(&registry), Arc::clone(&ca), settings)
        .await
        .expect("control API starts");
    let control = ControlPlane::for_endpoint(&api.url(), REGION);
    Emulator {
        registry,
        ca,
        api,
        control,
    }
}

impl Emulator {
    /// A certificate issued by the CA straight into the registry.
    fn certificate(&self, status: CertificateStatus) -> String {
        let (issued, _key) = self
            .ca
            .issue_client("test device", VALIDITY)
            .expect("issued");
        let record = self.registry.insert_certificate(NewCertificate {
            id: issued.id,
            pem: issued.pem,
            not_before: issued.not_before,
            not_after: issued.not_after,
            status,
        });
        record.id
    }

    fn thing_with_certificates(&self, thing: &str, count: usize) -> Vec<String> {
        self.registry.ensure_thing(thing, &BTreeMap::new());
        let mut ids: Vec<String> = (0..count)
            .map(|_| self.certificate(CertificateStatus::Active))
            .collect();
        for id in &ids {
            self.registry
                .attach_thing_principal(thing, id)
                .expect("attached");
        }
        ids.sort();
        ids
    }

    fn certificate_arn(&self, id: &str) -> String {
        self.registry.arn("cert", id)
    }

    /// UpdateCertificate through the raw SDK, so a refusal keeps its modeled error.
    async fn set_status(&self, id: &str, status: WireStatus) -> Result<(), UpdateError> {
        let call = self
            .control
            .client()
            .update_certificate()
            .certificate_id(id);
        call.new_status(status).send().await.map(|_| ())
    }
}

type UpdateError = aws_sdk_iot::error::SdkError<
    aws_sdk_iot::operation::update_certificate::UpdateCertificateError,
    aws_sdk_iot::config::http::HttpResponse,
>;

fn names() -> SetupNames {
    SetupNames {
        prefix: "fleetsim".to_owned(),
        account_id: ACCOUNT.to_owned(),
        region: REGION.to_owned(),
        claim_policy: "fleetsim-claim".to_owned(),
        device_policy: "fleetsim-device".to_owned(),
        template: "fleetsim-template".to_owned(),
        provisioning_role_arn: format!("arn:aws:iam::{ACCOUNT}:role/fleetsim-provisioning"),
    }
}

fn repository_spec() -> SetupSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    SetupSpec::load(names(), &dir).expect("repository policies render")
}

fn epoch_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn pem_validity(pem: &str) -> (u64, u64) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let validity = cert.validity();
    let seconds =
        |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).expect("after 1970");
    (seconds(validity.not_before), seconds(validity.not_after))
}

#[tokio::test]
async fn setup_from_the_repository_policies_creates_everything_the_fleet_needs() {
    let emulator = emulator().await;

    let output = emulator
        .control
        .setup(&repository_spec())
        .await
        .expect("setup");

    let claim_policy = emulator
        .registry
        .policy("fleetsim-claim")
        .expect("claim policy");
    assert!(
        claim_policy
            .document
            .contains("arn:aws:iot:eu-west-1:123456789012:client/*")
    );
    assert!(!claim_policy.document.contains("{{"));
    let template = emulator
        .registry
        .template("fleetsim-template")
        .expect("template");
    assert!(template.enabled);
    assert!(template.body.contains("\"fleetsim-device\""));
    let claim = emulator
        .registry
        .certificate(&output.claim_certificate_id)
        .expect("claim certificate registered");
    assert_eq!(claim.status, CertificateStatus::Active);
    assert!(claim.policies.contains("fleetsim-claim"));
    assert_eq!(claim.pem, output.claim_certificate_pem);
    assert!(output.claim_private_key_pem.contains("PRIVATE KEY"));
    assert_eq!(output.endpoint, ENDPOINT);
}

#[tokio::test]
async fn setup_from_the_builtin_policies_works_without_a_policy_directory() {
    let emulator = emulator().await;
    let spec = SetupSpec::builtin(names()).expect("builtin policies render");

    let output = emulator.control.setup(&spec).await.expect("setup");

    assert!(emulator.registry.policy("fleetsim-device").is_some());
    assert!(
        emulator
            .registry
            .certificate(&output.claim_certificate_id)
            .is_some()
    );
}

#[tokio::test]
async fn resources_created_by_setup_read_back_through_the_sdk() {
    let emulator = emulator().await;
    emulator
        .control
        .setup(&repository_spec())
        .await
        .expect("setup");
    let client = emulator.control.client();

    let policy = client
        .get_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .expect("policy");
    let template = client
        .describe_provisioning_template()
        .template_name("fleetsim-template")
        .send()
        .await
        .expect("template");

    assert_eq!(
        policy.policy_arn(),
        Some("arn:aws:iot:eu-west-1:123456789012:policy/fleetsim-device")
    );
    assert!(
        policy
            .policy_document()
            .is_some_and(|d| d.contains("topic/fleetsim/"))
    );
    assert!(policy.creation_date().is_some());
    assert_eq!(template.enabled(), Some(true));
    assert_eq!(
        template.provisioning_role_arn(),
        Some("arn:aws:iam::123456789012:role/fleetsim-provisioning")
    );
}

#[tokio::test]
async fn setup_run_twice_succeeds_and_issues_a_second_claim_certificate() {
    let emulator = emulator().await;
    let spec = repository_spec();

    let first = emulator.control.setup(&spec).await.expect("first setup");
    let second = emulator.control.setup(&spec).await.expect("second setup");

    assert_ne!(first.claim_certificate_id, second.claim_certificate_id);
    assert_eq!(emulator.registry.certificate_count(), 2);
    let second_claim = emulator
        .registry
        .certificate(&second.claim_certificate_id)
        .expect("claim");
    assert!(second_claim.policies.contains("fleetsim-claim"));
}

#[tokio::test]
async fn describe_certificate_reports_the_status_and_validity_of_the_issued_certificate() {
    let emulator = emulator().await;
    let output = emulator
        .control
        .setup(&repository_spec())
        .await
        .expect("setup");

    let summary = emulator
        .control
        .describe_certificate(&output.claim_certificate_id)
        .await
        .expect("described");

    let (not_before, not_after) = pem_validity(&output.claim_certificate_pem);
    assert_eq!(summary.status, "ACTIVE");
    assert_eq!(epoch_seconds(summary.not_before), not_before);
    assert_eq!(epoch_seconds(summary.not_after), not_after);
    assert!(not_after - not_before >= VALIDITY.as_secs());
}

#[tokio::test]
async fn a_certificate_created_without_set_as_active_is_inactive() {
    let emulator = emulator().await;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");

    let created = emulator
        .control
        .client()
        .create_certificate_from_csr()
        .certificate_signing_request(csr)
        .send()
        .await
        .expect("created");

    let id = created.certificate_id().expect("id");
    assert_eq!(
        emulator.registry.certificate_status(id),
        Some(CertificateStatus::Inactive)
    );
}

#[tokio::test]
async fn a_malformed_csr_is_an_invalid_request() {
    let emulator = emulator().await;

    let error = emulator
        .control
        .client()
        .create_certificate_from_csr()
        .certificate_signing_request("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
        .set_as_active(true)
        .send()
        .await
        .expect_err("refused");

    assert!(
        error
            .as_service_error()
            .is_some_and(|e| e.is_invalid_request_exception())
    );
}

#[tokio::test]
async fn update_certificate_revoked_shows_in_the_registry_and_in_describe_certificate() {
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Active);
    let mut events = emulator.registry.subscribe_events();

    emulator
        .set_status(&id, WireStatus::Revoked)
        .await
        .expect("revoked");

    assert_eq!(
        emulator.registry.certificate_status(&id),
        Some(CertificateStatus::Revoked)
    );
    let summary = emulator
        .control
        .describe_certificate(&id)
        .await
        .expect("described");
    assert_eq!(summary.status, "REVOKED");
    let event = events
        .try_recv()
        .expect("revocation announced to the broker");
    assert_eq!(event, CertificateEvent::Deactivated { certificate_id: id });
}

#[tokio::test]
async fn a_revoked_certificate_cannot_be_made_active_again() {
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Revoked);

    let error = emulator
        .set_status(&id, WireStatus::Active)
        .await
        .expect_err("refused");

    assert!(
        error
            .as_service_error()
            .is_some_and(|e| e.is_certificate_state_exception())
    );
    assert_eq!(
        emulator.registry.certificate_status(&id),
        Some(CertificateStatus::Revoked)
    );
}

#[tokio::test]
async fn an_unknown_certificate_id_is_resource_not_found_with_a_request_id() {
    let emulator = emulator().await;
    let unknown = "ab".repeat(32);

    let raw = emulator
        .set_status(&unknown, WireStatus::Revoked)
        .await
        .expect_err("refused");
    let mapped = emulator
        .control
        .describe_certificate(&unknown)
        .await
        .expect_err("refused");

    let service_error = raw.as_service_error().expect("a modeled error");
    assert!(service_error.is_resource_not_found_exception());
    assert!(
        service_error
            .message()
            .is_some_and(|m| m.contains(&unknown))
    );
    assert!(raw.request_id().is_some_and(|id| id.len() == 36));
    let ControlError::NotFound {
        operation,
        resource,
        ..
    } = &mapped
    else {
        panic!("expected not found, got {mapped}");
    };
    assert_eq!(
        (*operation, resource.as_str()),
        ("DescribeCertificate", unknown.as_str())
    );
    assert!(mapped.to_string().starts_with("DescribeCertificate abab"));
}

#[tokio::test]
async fn a_malformed_certificate_id_is_an_invalid_request() {
    let emulator = emulator().await;

    let raw = emulator
        .control
        .client()
        .describe_certificate()
        .certificate_id("not-a-certificate-id")
        .send()
        .await
        .expect_err("refused");
    let mapped = emulator
        .control
        .retire_certificate("no-thing", "not-a-certificate-id")
        .await
        .expect_err("refused");

    assert!(
        raw.as_service_error()
            .is_some_and(|e| e.is_invalid_request_exception())
    );
    assert!(
        matches!(&mapped, ControlError::Refused { code, .. } if code == "InvalidRequestException"),
        "{mapped}"
    );
}

#[tokio::test]
async fn pending_activation_cannot_be_set_through_update_certificate() {
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Active);

    let error = emulator
        .set_status(&id, WireStatus::PendingActivation)
        .await
        .expect_err("refused");

    assert!(
        error
            .as_service_error()
            .is_some_and(|e| e.is_invalid_request_exception())
    );
    assert_eq!(
        emulator.registry.certificate_status(&id),
        Some(CertificateStatus::Active)
    );
}

#[tokio::test]
async fn list_thing_principals_pages_through_more_than_one_page() {
    let emulator = emulator().await;
    let thing = "fleetsim:device-1";
    let attached = emulator.thing_with_certificates(thing, 30);

    let listed = emulator
        .control
        .list_thing_principals(thing)
        .await
        .expect("listed");
    let first_page = emulator
        .control
        .client()
        .list_thing_principals()
        .thing_name(thing)
        .max_results(2)
        .send()
        .await
        .expect("first page");

    assert_eq!(listed, attached);
    assert_eq!(first_page.principals().len(), 2);
    assert_eq!(
        first_page.principals()[0],
        emulator.certificate_arn(&attached[0])
    );
    assert!(first_page.next_token().is_some());
}

#[tokio::test]
async fn a_page_token_resumes_after_the_previous_page() {
    let emulator = emulator().await;
    let attached = emulator.thing_with_certificates("device-2", 3);
    let client = emulator.control.client();

    let first = client
        .list_thing_principals()
        .thing_name("device-2")
        .max_results(2)
        .send()
        .await
        .expect("first page");
    let second = client
        .list_thing_principals()
        .thing_name("device-2")
        .max_results(2)
        .set_next_token(first.next_token().map(str::to_owned))
        .send()
        .await
        .expect("second page");

    assert_eq!(
        second.principals(),
        [emulator.certificate_arn(&attached[2])]
    );
    assert_eq!(second.next_token(), None);
}

#[tokio::test]
async fn detach_thing_principal_removes_the_attachment() {
    let emulator = emulator().await;
    let ids = emulator.thing_with_certificates("device-3", 2);

    emulator
        .control
        .client()
        .detach_thing_principal()
        .thing_name("device-3")
        .principal(emulator.certificate_arn(&ids[0]))
        .send()
        .await
        .expect("detached");

    assert!(!emulator.registry.is_attached("device-3", &ids[0]));
    let listed = emulator
        .control
        .list_thing_principals("device-3")
        .await
        .expect("listed");
    assert_eq!(listed, [ids[1].clone()]);
}

#[tokio::test]
async fn attach_thing_principal_then_describe_thing_through_the_sdk() {
    let emulator = emulator().await;
    emulator
        .registry
        .ensure_thing("device-4", &BTreeMap::from([("serial".into(), "4".into())]));
    let id = emulator.certificate(CertificateStatus::Active);
    let client = emulator.control.client();

    client
        .attach_thing_principal()
        .thing_name("device-4")
        .principal(emulator.certificate_arn(&id))
        .send()
        .await
        .expect("attached");
    let thing = client
        .describe_thing()
        .thing_name("device-4")
        .send()
        .await
        .expect("described");

    assert!(emulator.registry.is_attached("device-4", &id));
    assert_eq!(
        thing.thing_arn(),
        Some("arn:aws:iot:eu-west-1:123456789012:thing/device-4")
    );
    assert_eq!(
        thing
            .attributes()
            .and_then(|a| a.get("serial"))
            .map(String::as_str),
        Some("4")
    );
}

#[tokio::test]
async fn retire_certificate_detaches_then_revokes() {
    let emulator = emulator().await;
    let ids = emulator.thing_with_certificates("device-5", 2);

    emulator
        .control
        .retire_certificate("device-5", &ids[0])
        .await
        .expect("retired");
    emulator
        .control
        .retire_certificate("device-5", &ids[0])
        .await
        .expect("retired again");

    assert!(!emulator.registry.is_attached("device-5", &ids[0]));
    assert_eq!(
        emulator.registry.certificate_status(&ids[0]),
        Some(CertificateStatus::Revoked)
    );
    assert_eq!(
        emulator.registry.certificate_status(&ids[1]),
        Some(CertificateStatus::Active)
    );
}

#[tokio::test]
async fn attaching_a_policy_that_does_not_exist_is_resource_not_found() {
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Active);

    let error = emulator
        .control
        .client()
        .attach_policy()
        .policy_name("missing-policy")
        .target(emulator.certificate_arn(&id))
        .send()
        .await
        .expect_err("refused");

    assert!(
        error
            .as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception())
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error_with_a_short_cause() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let control = ControlPlane::for_endpoint(&format!("http://127.0.0.1:{port}"), REGION);

    let error = control
        .describe_certificate(&"cd".repeat(32))
        .await
        .expect_err("unreachable");

    assert!(matches!(error, ControlError::Transport { .. }), "{error}");
    assert!(!error.to_string().contains("DispatchFailure"), "{error}");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_stops_answering() {
    let emulator = emulator().await;
    let control = emulator.control.clone();
    let id = emulator.certificate(CertificateStatus::Active);
    control
        .describe_certificate(&id)
        .await
        .expect("served before shutdown");

    tokio::time::timeout(Duration::from_secs(10), emulator.api.shutdown())
        .await
        .expect("shutdown does not wait for idle connections");
    let error = control
        .describe_certificate(&id)
        .await
        .expect_err("stopped");

    assert!(matches!(error, ControlError::Transport { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_from_one_shared_client_are_all_answered() {
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Active);

    let calls: Vec<_> = (0..32)
        .map(|_| {
            let control = emulator.control.clone();
            let id = id.clone();
            tokio::spawn(async move { control.describe_certificate(&id).await })
        })
        .collect();

    for call in calls {
        let summary = call.await.expect("task").expect("described");
        assert_eq!(summary.status, "ACTIVE");
    }
}

#[tokio::test]
async fn requests_are_counted_by_operation_and_outcome() {
    // The test runtime is single-threaded, so the server's tasks record
    // into this thread's recorder.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let emulator = emulator().await;
    let id = emulator.certificate(CertificateStatus::Active);

    emulator
        .control
        .describe_certificate(&id)
        .await
        .expect("described");
    let _ = emulator
        .control
        .describe_certificate(&"ab".repeat(32))
        .await;

    let text = metrics.render();
    let counter = "fleetsim_emulator_control_requests_total";
    assert!(
        text.contains(&format!(
            "{counter}{{operation=\"DescribeCertificate\",outcome=\"ok\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{counter}{{operation=\"DescribeCertificate\",outcome=\"resource_not_found\"}} 1"
        )),
        "{text}"
    );
}

/// A loopback relay in front of the control API that holds every chunk a
/// client sends for `delay` before passing it on, so that requests overlap,
/// and records the most client connections it held open at once.
async fn slow_relay(upstream: SocketAddr, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let peak = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let recorded = Arc::clone(&peak);
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            recorded.fetch_max(now, Ordering::SeqCst);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                relay(client, upstream, delay).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, peak)
}

async fn relay(client: tokio::net::TcpStream, upstream: SocketAddr, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
            tokio::time::sleep(delay).await;
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let answers = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_retirements_opens_connections_by_the_in_flight_bound_not_by_its_size() {
    const DEVICES: usize = 300;
    let emulator = emulator().await;
    let (url, peak) = slow_relay(emulator.api.local_addr(), Duration::from_millis(20)).await;
    let control = ControlPlane::for_endpoint(&url, REGION);
    let certificates: Vec<(String, String)> = (0..DEVICES)
        .map(|i| {
            let thing = format!("wave-{i:03}");
            let id = emulator.thing_with_certificates(&thing, 1).remove(0);
            (thing, id)
        })
        .collect();

    let retirements: Vec<_> = certificates
        .iter()
        .cloned()
        .map(|(thing, id)| {
            let control = control.clone();
            tokio::spawn(async move { control.retire_certificate(&thing, &id).await })
        })
        .collect();
    for retirement in retirements {
        retirement.await.expect("task").expect("retired");
    }

    for (thing, id) in &certificates {
        assert!(!emulator.registry.is_attached(thing, id));
        assert_eq!(
            emulator.registry.certificate_status(id),
            Some(CertificateStatus::Revoked)
        );
    }
    // A connection goes back to the SDK's pool a moment after its answer
    // frees a place, so a few more than the places can be open at once;
    // without the bound there would be about one per retirement.
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 2 * fleetsim::control::MAX_IN_FLIGHT,
        "{peak} connections open at once for {DEVICES} retirements"
    );
    assert!(peak > 1, "the retirements overlapped ({peak} connections)");
}
