//! Credential files on disk, as a person hands them over: keys in PKCS#1, SEC1 and PKCS#8
//! made by the `openssl` command line, certificates signed by the emulator's CA, files
//! with CRLF line ends or a byte-order mark (accepted, and they connect), and files that
//! are truncated, empty, binary, encrypted, swapped between two devices, readable by others
//! or unreadable (refused by name). The end-to-end case is a real `fleetsim run --emulator`
//! whose claim key was swapped: it exits 2 naming the file, before any device starts.

mod broker_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use broker_support::Emulator;
use fleetsim::device::mqtt::{ConnectSettings, Endpoint, Session};
use fleetsim::emulator::registry::{CertificateStatus, NewCertificate};
use fleetsim::identity::files::{read_pair, read_private_key};
use fleetsim::identity::{Credentials, IdentityError};
use support::standalone::StandaloneProcess;

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl {args:?}: {stderr}");
}

/// Key formats as `openssl` writes them, with the header that names each.
const FORMATS: [(&str, &[&str], &str); 3] = [
    (
        "pkcs1",
        &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"],
        "BEGIN RSA PRIVATE KEY",
    ),
    (
        "sec1",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
        "BEGIN EC PRIVATE KEY",
    ),
    (
        "pkcs8",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "pkcs8.key",
        ],
        "BEGIN PRIVATE KEY",
    ),
];

/// A key made by openssl in `format` and a certificate for it signed by the emulator's CA
/// and registered ACTIVE with `allow-all`; returns the two files.
fn device_files(emulator: &Emulator, dir: &Path, format: usize) -> (PathBuf, PathBuf) {
    let (name, generate, header) = FORMATS[format];
    openssl(dir, generate);
    let key = dir.join(format!("{name}.key"));
    let text = std::fs::read_to_string(&key).expect("key");
    assert!(text.contains(header), "{name}: {text}");
    let csr = format!("{name}.csr");
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &subject,
            "-out",
            &csr,
        ],
    );
    let csr_pem = std::fs::read_to_string(dir.join(&csr)).expect("csr");
    let issued = emulator
        .ca
        .sign_csr(&csr_pem, Duration::from_secs(3600))
        .expect("the CA signs");
    emulator.registry.insert_certificate(NewCertificate {
        id: issued.id.clone(),
        pem: issued.pem.clone(),
        not_before: std::time::SystemTime::now(),
        not_after: std::time::SystemTime::now() + Duration::from_secs(3600),
        status: CertificateStatus::Active,
    });
    emulator
        .registry
        .attach_policy("allow-all", &issued.id)
        .expect("attach");
    let certificate = dir.join(format!("{name}.pem"));
    std::fs::write(&certificate, issued.pem).expect("write certificate");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (certificate, key)
}

/// Connects to the broker with fleetsim's own client, presenting `credentials`.
async fn connects(emulator: &Emulator, client_id: &str, credentials: &Credentials) {
    let tls = fleetsim::identity::tls::client_config(emulator.ca.root_pem(), credentials)
        .expect("tls config");
    let settings = ConnectSettings {
        endpoint: Endpoint {
            host: "localhost".to_owned(),
            port: emulator.addr().port(),
        },
        keep_alive: Duration::from_secs(60),
        step_timeout: Duration::from_secs(10),
        sources: Default::default(),
    };
    let session = Session::connect(&settings, client_id, tls).await;
    assert!(session.is_ok(), "{client_id}: {:?}", session.err());
}

fn refusal(result: Result<Credentials, IdentityError>) -> String {
    result.expect_err("refused").to_string()
}

#[tokio::test]
async fn pkcs1_sec1_and_pkcs8_keys_are_read_and_connect() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().expect("dir");

    for (format, (name, _, _)) in FORMATS.iter().enumerate() {
        let (certificate, key) = device_files(&emulator, dir.path(), format);
        let credentials = read_pair(&certificate, &key).expect(name);
        connects(&emulator, name, &credentials).await;
    }
}

#[tokio::test]
async fn crlf_line_ends_and_a_byte_order_mark_are_read_as_pem() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().expect("dir");
    let (certificate, key) = device_files(&emulator, dir.path(), 1);

    for path in [&certificate, &key] {
        let text = std::fs::read_to_string(path).expect("read");
        std::fs::write(path, format!("\u{feff}{}", text.replace('\n', "\r\n"))).expect("write");
    }

    let credentials = read_pair(&certificate, &key).expect("CRLF and BOM");
    assert!(!credentials.certificate_pem.contains('\r'));
    connects(&emulator, "crlf", &credentials).await;
}

#[tokio::test]
async fn truncated_empty_binary_and_encrypted_files_are_refused_by_name() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().expect("dir");
    let (certificate, key) = device_files(&emulator, dir.path(), 2);
    let cert_text = std::fs::read_to_string(&certificate).expect("read");
    let key_text = std::fs::read_to_string(&key).expect("read");
    let broken = |name: &str, contents: &[u8], mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    };
    let half_cert = broken(
        "half.pem",
        &cert_text.as_bytes()[..cert_text.len() / 2],
        0o644,
    );
    let half_key = broken(
        "half.key",
        &key_text.as_bytes()[..key_text.len() / 2],
        0o600,
    );
    let empty_cert = broken("empty.pem", b"", 0o644);
    let binary_key = broken("binary.key", &[0x30, 0x82, 0xFF, 0xFF, 0x00, 0xC3], 0o600);
    openssl(
        dir.path(),
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "pkcs8.key",
            "-passout",
            "pass:secret",
            "-out",
            "encrypted.key",
        ],
    );
    let encrypted = dir.path().join("encrypted.key");
    std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let show = |path: &Path| path.display().to_string();

    assert_eq!(
        refusal(read_pair(&half_cert, &key)),
        format!(
            "{}: certificate PEM is broken (truncated: a BEGIN line has no END line)",
            show(&half_cert)
        )
    );
    assert_eq!(
        refusal(read_pair(&certificate, &half_key)),
        format!(
            "{}: private key PEM is broken (truncated: a BEGIN line has no END line)",
            show(&half_key)
        )
    );
    assert_eq!(
        refusal(read_pair(&empty_cert, &key)),
        format!("{}: holds no CERTIFICATE block", show(&empty_cert))
    );
    assert_eq!(
        refusal(read_pair(&certificate, &binary_key)),
        format!("{}: is not PEM text", show(&binary_key))
    );
    assert_eq!(
        refusal(read_pair(&certificate, &encrypted)),
        format!(
            "{}: private key is encrypted; decrypt it first (openssl pkey -in <file>)",
            show(&encrypted)
        )
    );
    let cert_as_key = broken("cert-as.key", cert_text.as_bytes(), 0o600);
    assert_eq!(
        refusal(read_pair(&certificate, &cert_as_key)),
        format!(
            "{}: private key PEM is broken (no PEM block of the expected kind)",
            show(&cert_as_key)
        )
    );
}

#[tokio::test]
async fn the_key_of_one_device_with_the_certificate_of_another_is_refused() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().expect("dir");
    let (first_cert, first_key) = device_files(&emulator, dir.path(), 1);
    let (second_cert, second_key) = device_files(&emulator, dir.path(), 2);

    let error = refusal(read_pair(&first_cert, &second_key));

    assert_eq!(
        error,
        format!(
            "{}: private key does not belong to the certificate (a key of another device?)",
            second_key.display()
        )
    );
    read_pair(&first_cert, &first_key).expect("each pair on its own is fine");
    read_pair(&second_cert, &second_key).expect("each pair on its own is fine");
}

#[test]
fn a_key_file_others_may_read_is_refused_and_an_unreadable_one_names_the_os_error() {
    let dir = tempfile::tempdir().expect("dir");
    openssl(dir.path(), FORMATS[2].1);
    let key = dir.path().join("pkcs8.key");

    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let error = read_private_key(&key).expect_err("exposed key");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: private key is readable by group or others (mode {mode:04o}); chmod 600 it",
                key.display()
            )
        );
    }

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    // Root reads a mode-0000 file anyway; only an ordinary user sees the refusal.
    if std::fs::read(&key).is_err() {
        let error = read_private_key(&key).expect_err("unreadable");
        assert_eq!(
            error.to_string(),
            format!("{}: Permission denied (os error 13)", key.display())
        );
    } else {
        read_private_key(&key).expect("root reads a mode-0000 key that no one else can");
    }
}

fn scenario(dir: &Path) -> PathBuf {
    let path = dir.join("claim.yaml");
    let text = format!(
        "name: claim\nfleet:\n  size: 2\narrival:\n  rate: 10/s\nrun:\n  duration: 5s\n\
         credentials:\n  dir: {}\n",
        dir.join("certs").display()
    );
    std::fs::write(&path, text).expect("scenario");
    path
}

#[test]
fn a_run_against_a_standalone_emulator_with_a_swapped_claim_key_exits_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let emulator = StandaloneProcess::start(&state, "1h");
    let claim_key = emulator.info.claim_private_key.clone();
    openssl(dir.path(), FORMATS[1].1);
    std::fs::copy(dir.path().join("sec1.key"), &claim_key).expect("swap the claim key");
    std::fs::set_permissions(&claim_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let out = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .arg("run")
        .arg(scenario(dir.path()))
        .args(["--no-metrics", "--emulator"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "claim credentials: {}: private key does not belong to the certificate",
        claim_key.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        !dir.path().join("certs").join("claim").exists(),
        "no device started"
    );
    assert!(emulator.stop().success());
}
