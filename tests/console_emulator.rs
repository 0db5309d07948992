//! The web console of a standalone `fleetsim emulator`: its registry view,
//! behind the same token as a run's console.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const TOKEN: &str = "emulator-console-test-token";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the emulator with a console on a free port; returns its address.
fn start(state: &std::path::Path) -> (Process, SocketAddr) {
    let mut child = Command::new(BINARY)
        .args(["emulator", "--mqtt-port", "0", "--control-port", "0"])
        .args(["--console", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("FLEETSIM_CONSOLE_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("console: http://") {
                let addr = rest.split('/').next().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let process = Process(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the console announces its address");
    (process, addr.parse().expect("a socket address"))
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn the_standalone_emulator_serves_its_registry_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_emulator, addr) = start(&dir.path().join("state"));

    assert_eq!(get(addr, "/api/registry", None).0, 401);
    assert_eq!(
        get(addr, "/api/registry", Some("wrong-token-wrong-token")).0,
        401
    );
    let (status, body) = get(addr, "/api/registry", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"certificates_by_status\""), "{body}");
    assert!(
        body.contains("\"ACTIVE\":1"),
        "the claim certificate: {body}"
    );
    assert_eq!(get(addr, "/", None).0, 200, "the page itself holds no data");
}
