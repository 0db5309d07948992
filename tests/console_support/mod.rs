//! A run with its console on a free loopback port, and a small HTTP/1.1
//! client over a real socket for the console's API, its event stream and
//! chromedriver's WebDriver API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleetsim::console::Access;
use fleetsim::run::{ConsoleOptions, RunError, RunOptions, RunSummary, execute};
use fleetsim::scenario::Scenario;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "console-test-token-0123456789";

/// Three fleet devices whose certificates last 20 real seconds and rotate
/// in their last 5; the run lasts until the test interrupts it.
fn scenario(dir: &Path) -> Scenario {
    let yaml = format!(
        r#"
name: console
fleet: {{ size: 3, serial_pattern: "con-{{seq:02}}" }}
arrival: {{ rate: 20/s }}
clock: {{ speedup: 86400 }}
certificates: {{ validity: 20d }}
rotation: {{ check_every: 1d, renew_before: 5d }}
telemetry: {{ interval: 1s }}
run: {{ duration: 300s }}
credentials: {{ storage: disk, dir: "{}" }}
slo: {{ connect_p99: 2s, max_failure_ratio: 0 }}
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("console.yaml")).expect("the test scenario is valid")
}

pub struct ConsoleRun {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    interrupt: CancellationToken,
    run: tokio::task::JoinHandle<Result<RunSummary, RunError>>,
}

impl ConsoleRun {
    pub async fn start(access: Access) -> ConsoleRun {
        let dir = tempfile::tempdir().unwrap();
        let scenario = scenario(&dir.path().join("certs"));
        let (announce, mut announced) = tokio::sync::mpsc::unbounded_channel();
        let options = RunOptions {
            console: Some(ConsoleOptions {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                access,
                print_token: false,
                announce: Some(announce),
            }),
            ..RunOptions::default()
        };
        let interrupt = CancellationToken::new();
        let run = tokio::spawn({
            let interrupt = interrupt.clone();
            async move { execute(&scenario, &options, interrupt).await }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), announced.recv())
            .await
            .expect("the console starts within 30 s")
            .expect("the run announces its console");
        ConsoleRun {
            addr,
            dir,
            interrupt,
            run,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (status, body) = request(self.addr, "GET", path, token, None).await;
        (status, json(&body))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (status, text) = request(self.addr, "POST", path, token, Some(&body.to_string())).await;
        (status, json(&text))
    }

    /// Polls the fleet view until every fleet device is provisioned.
    pub async fn wait_for_fleet(&self) {
        for _ in 0..150 {
            let (_, fleet) = self.get("/api/fleet", Some(TOKEN)).await;
            if fleet["fleet"]["provisioned"] == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the fleet did not provision within 15 s");
    }

    /// Ends the run; the console stops with it.
    pub async fn finish(self) -> RunSummary {
        self.interrupt.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.run)
            .await
            .expect("the run ends within 60 s of an interrupt")
            .unwrap()
            .expect("the run completes")
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// One request on a fresh connection (`Connection: close`); the status and
/// the body, de-chunked.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let (head, body) = raw_request(addr, method, path, token, body).await;
    (status_of(&head), body)
}

pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head(method, path, token, body).as_bytes())
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (head.to_owned(), body)
}

/// Reads one response: up to its Content-Length when it has one
/// (chromedriver keeps the socket open despite `Connection: close`), else
/// to the end of the stream.
async fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        if n == 0 {
            return response;
        }
        response.extend_from_slice(&buffer[..n]);
        if expected_length(&response).is_some_and(|total| response.len() >= total) {
            return response;
        }
    }
}

/// Head plus body length, once the head is complete and names a length.
fn expected_length(response: &[u8]) -> Option<usize> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse::<usize>()
        .ok()?;
    Some(end + length)
}

fn head(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Opens the event stream and returns the data of the first event named
/// `name`, or `None` when the server refused the stream (with its status).
pub async fn first_event(addr: SocketAddr, token: Option<&str>, name: &str) -> Result<Value, u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head("GET", "/api/events", token, None).as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    let wanted = format!("event: {name}\ndata: ");
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the stream sends within 10 s")
            .unwrap();
        if n == 0 {
            return Err(status_of(&seen));
        }
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        if !seen.starts_with("HTTP/1.1 200") {
            return Err(status_of(&seen));
        }
        if let Some(at) = seen.find(&wanted) {
            let rest = &seen[at + wanted.len()..];
            if let Some(end) = rest.find('\n') {
                return Ok(serde_json::from_str(&rest[..end]).unwrap());
            }
        }
    }
}
