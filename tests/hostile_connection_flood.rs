//! 10,000 TCP connections opened at once and dropped at once, beside a few hundred TLS ones
//! that get further (a finished handshake, or a CONNACK) before they vanish. The plain TCP
//! sockets come from a Python child process, so that the test process's own file descriptor
//! limit holds only the broker's side. The broker keeps serving a normal client through the
//! storm, and afterwards its connection gauge, its open sockets and the counters show that
//! every dropped connection was seen to its end.

mod broker_support;

use std::process::Stdio;
use std::time::Duration;

use broker_support::*;
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CONNECTS: &str = "fleetsim_emulator_connects_total";
const DISCONNECTS: &str = "fleetsim_emulator_disconnects_total";

type Raw = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const PLAIN_TCP: usize = 10_000;
const TLS_ONLY: usize = 100;
const CONNECTED: usize = 100;

/// Opens `count` sockets to the port, says `open`, waits for stdin to close, drops them all.
const STORM: &str = r"
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
sockets = []
for _ in range(count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
    s.connect(('127.0.0.1', port))
    sockets.append(s)
print('open', len(sockets), flush=True)
sys.stdin.read()
for s in sockets:
    s.close()
";

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

/// The broker's live-connection gauge.
fn connection_gauge() -> f64 {
    metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("fleetsim_emulator_connections "))
        .map_or(0.0, |n| n.trim().parse().expect("gauge value"))
}

/// How a TLS connection that never sent CONNECT ends: dropped by the client
/// (`protocol_error`), or past the connect timeout on a slow machine (`timeout`).
fn silent_ends() -> u64 {
    counter(CONNECTS, "outcome", "protocol_error") + counter(CONNECTS, "outcome", "timeout")
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `TLS_ONLY` connections past the handshake that never send CONNECT, and `CONNECTED` ones
/// past CONNACK; both kept open until the caller drops them.
async fn tls_clients(emulator: &Emulator, device: &Credentials) -> (Vec<Raw>, Vec<Raw>) {
    let mut handshaken = Vec::with_capacity(TLS_ONLY);
    for _ in 0..TLS_ONLY {
        handshaken.push(raw_tls(emulator.addr(), device).await);
    }
    let mut connected = Vec::with_capacity(CONNECTED);
    for n in 0..CONNECTED {
        let mut stream = raw_tls(emulator.addr(), device).await;
        stream
            .write_all(&connect_packet(&format!("flood-{n}"), 60))
            .await
            .expect("connect");
        connected.push(stream);
    }
    (handshaken, connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_dropped_at_once_leave_no_connection_behind() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let baseline_descriptors = open_descriptors();
    let refused = counter(CONNECTS, "outcome", "tls_refused");
    let unfinished = silent_ends();
    let lost = counter(DISCONNECTS, "reason", "connection_lost");

    let mut storm = Command::new("python3")
        .args(["-c", STORM, &emulator.addr().port().to_string()])
        .arg(PLAIN_TCP.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut said = String::new();
    let stdout = storm.stdout.take().expect("stdout piped");
    BufReader::new(stdout)
        .read_line(&mut said)
        .await
        .expect("storm reports");
    assert_eq!(said.trim(), format!("open {PLAIN_TCP}"));
    let (handshaken, connected) = tls_clients(&emulator, &device).await;
    wait_for("every TLS client connected", || {
        emulator.broker.connection_count() == CONNECTED
    })
    .await;

    let mut normal = TestClient::connect(emulator.addr(), "normal", &device).await;
    normal.subscribe("normal/x", QoS::AtLeastOnce).await;
    normal.client.disconnect().await.expect("queue disconnect");
    normal.closed().await;
    drop(storm.stdin.take());
    drop((handshaken, connected));
    let status = storm.wait().await.expect("storm exits");
    assert!(status.success(), "{status}");

    let expected = refused + u64::try_from(PLAIN_TCP).expect("fits");
    wait_for("every plain TCP socket refused", || {
        counter(CONNECTS, "outcome", "tls_refused") == expected
    })
    .await;
    let tls_only = u64::try_from(TLS_ONLY).expect("fits");
    wait_for("every silent TLS socket ended", || {
        silent_ends() == unfinished + tls_only
    })
    .await;
    let gone = u64::try_from(CONNECTED).expect("fits");
    wait_for("every connected socket lost", || {
        counter(DISCONNECTS, "reason", "connection_lost") == lost + gone
    })
    .await;
    wait_for("the gauge back at zero", || connection_gauge() == 0.0).await;
    wait_for("descriptors back at the baseline", || {
        open_descriptors() <= baseline_descriptors
    })
    .await;
    assert_eq!(emulator.broker.connection_count(), 0);

    let mut after = TestClient::connect(emulator.addr(), "after", &device).await;
    after.subscribe("after/x", QoS::AtLeastOnce).await;
    after.publish("after/x", QoS::AtLeastOnce, b"served").await;
    assert_eq!(after.next_publish().await.payload, &b"served"[..]);
}
