//! The end-of-run check against a real emulator: a certificate that was
//! valid when the fleet stopped and expired before the check reached it is
//! judged by the registry (active: the device had a working identity;
//! revoked: bricked), while one that expired while the fleet still ran is
//! a bricked device.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_iot::types::CertificateStatus;
use fleetsim::check::{Checker, final_check};
use fleetsim::device::DeviceOutcome;
use fleetsim::emulator::registry::{CertificateStatus as RegistryStatus, NewCertificate};
use fleetsim::identity::Credentials;
use fleetsim::identity::tls::{KeyExchange, TlsSettings};
use support::Target;

const VALIDITY: Duration = Duration::from_secs(2);

/// A thing with an active certificate of `VALIDITY` and the fleet's
/// device policy, as a device ends a run holding it.
async fn device(target: &Target, thing: &str) -> (String, DeviceOutcome) {
    let (issued, key_pem) = target.emulator.ca().issue_client(thing, VALIDITY).unwrap();
    let registry = target.emulator.registry();
    registry.insert_certificate(NewCertificate {
        id: issued.id.clone(),
        pem: issued.pem.clone(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        status: RegistryStatus::Active,
    });
    registry.ensure_thing(thing, &BTreeMap::new());
    registry.attach_thing_principal(thing, &issued.id).unwrap();
    registry
        .attach_policy("fleetsim-device", &issued.id)
        .unwrap();
    let current = Credentials {
        certificate_pem: issued.pem,
        private_key_pem: key_pem,
    };
    let outcome = DeviceOutcome {
        serial: thing.to_owned(),
        thing_name: Some(thing.to_owned()),
        current: Some(current),
        retired: Vec::new(),
        rotations: 0,
        failure: None,
    };
    (issued.id, outcome)
}

fn checker(target: &Target) -> Arc<Checker> {
    Arc::new(Checker {
        connect: target.settings(),
        tls: TlsSettings {
            root_pem: target.emulator.root_pem().to_owned(),
            key_exchange: KeyExchange::default(),
        },
        control: Arc::new(target.control.clone()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_expire_before_the_check_are_judged_by_when_they_expired() {
    let target = support::configured_emulator(VALIDITY).await;
    let (_, kept) = device(&target, "check-kept").await;
    let (revoked_id, revoked) = device(&target, "check-revoked").await;
    let checker = checker(&target);
    let outcomes = [kept.clone(), revoked];

    // While both are valid, the handshake proves one working.
    let stopped_at = SystemTime::now();
    let fresh = final_check(&checker, &outcomes[..1], 1, stopped_at).await;
    assert_eq!((fresh.provisioned, fresh.expired_after_stop), (1, 0));

    // After the fleet stopped, one is revoked; then both expire.
    let revoke = target.control.client().update_certificate();
    let revoke = revoke.certificate_id(&revoked_id);
    revoke
        .new_status(CertificateStatus::Revoked)
        .send()
        .await
        .unwrap();
    // X.509 and the handshake's clock count whole seconds: a certificate
    // is still accepted during the second its notAfter names.
    tokio::time::sleep(VALIDITY + Duration::from_millis(1500)).await;

    let check = final_check(&checker, &outcomes, 2, stopped_at).await;
    assert_eq!(check.provisioned, 1, "{check:?}");
    assert_eq!(check.expired_after_stop, 1, "{check:?}");
    assert_eq!(check.bricked, 1, "the revoked one: {check:?}");
    assert_eq!(check.unverified_devices(), 0, "{check:?}");

    // Had the fleet still been running when it expired, the device let its
    // certificate lapse: bricked, whatever the registry says.
    let check = final_check(&checker, &[kept], 1, SystemTime::now()).await;
    assert_eq!((check.provisioned, check.bricked), (0, 1), "{check:?}");
    assert_eq!(check.expired_after_stop, 0);
}
