//! The web console's HTTP API against a real run: the token, the fleet
//! view and its event stream, the device view, and every hands-on action,
//! including the ones the console must refuse.

mod console_support;

use std::net::SocketAddr;
use std::time::Duration;

use console_support::{ConsoleRun, TOKEN, first_event, raw_request};
use fleetsim::console::{self, Access, ConsoleError, ConsoleSources};
use serde_json::{Value, json};

fn token_access() -> Access {
    Access::Token(TOKEN.to_owned())
}

/// Polls a device until `done` says yes, for up to `seconds`.
async fn device_until(
    run: &ConsoleRun,
    serial: &str,
    seconds: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..seconds * 10 {
        let (_, device) = run
            .get(&format!("/api/devices/{serial}"), Some(TOKEN))
            .await;
        if done(&device) {
            return device;
        }
        last = device;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("device {serial} never reached the expected state: {last:#}");
}

fn step_names(device: &Value) -> Vec<String> {
    device["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_the_exact_token_but_the_page_itself_holds_no_data() {
    let run = ConsoleRun::start(token_access()).await;
    let (status, body) = run.get("/api/fleet", None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("missing token"));
    assert_eq!(
        run.get("/api/fleet", Some("console-test-token-012345678X"))
            .await
            .0,
        401
    );
    assert_eq!(
        run.get("/api/fleet", Some(&TOKEN[..TOKEN.len() - 1]))
            .await
            .0,
        401
    );
    assert_eq!(run.get("/api/fleet", Some(TOKEN)).await.0, 200);
    let (status, _) = run
        .post(
            "/api/hands-on",
            Some("wrong-token-wrong-token"),
            json!({"serial": "nope-1"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        run.get("/api/devices/nope-1", Some(TOKEN)).await.0,
        404,
        "a refused request creates nothing"
    );
    assert_eq!(first_event(run.addr, None, "fleet").await.unwrap_err(), 401);
    let (head, page) = raw_request(run.addr, "GET", "/", None, None).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
    assert!(
        page.contains("<script src=\"/app.js\""),
        "assets are served from the binary"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing is fetched from elsewhere"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_view_event_stream_and_device_view_show_the_running_fleet() {
    let run = ConsoleRun::start(token_access()).await;
    run.wait_for_fleet().await;
    let event = first_event(run.addr, Some(TOKEN), "fleet").await.unwrap();
    let fleet = &event["fleet"];
    assert_eq!(fleet["run"], "console");
    assert_eq!(fleet["size"], 3);
    assert_eq!(
        fleet["states"]["online"].as_u64().unwrap() + fleet["states"]["rotating"].as_u64().unwrap(),
        3
    );
    let ops: Vec<_> = fleet["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["op"].clone())
        .collect();
    assert!(ops.contains(&json!("provision")) && ops.contains(&json!("connect")));
    assert!(
        fleet["slo"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "connect_p99")
    );
    let by_serial = run.get("/api/devices/con-01", Some(TOKEN)).await.1;
    let by_thing = run.get("/api/devices/fleetsim-con-01", Some(TOKEN)).await.1;
    assert_eq!(by_serial["serial"], "con-01");
    assert_eq!(by_thing["serial"], "con-01");
    assert_eq!(by_serial["kind"], "fleet");
    assert_eq!(by_serial["current"]["key_type"], "EC P-256");
    assert_eq!(by_serial["current"]["registry_status"], "ACTIVE");
    assert!(step_names(&by_serial).starts_with(&[
        "claim_connect".into(),
        "create_certificate".into(),
        "register_thing".into()
    ]));
    let found = run.get("/api/devices?q=con-", Some(TOKEN)).await.1;
    assert_eq!(found["devices"].as_array().unwrap().len(), 3);
    assert_eq!(run.get("/api/devices/con-99", Some(TOKEN)).await.0, 404);
    let registry = run.get("/api/registry", Some(TOKEN)).await.1;
    assert!(registry["things"].as_u64().unwrap() >= 3);
    let summary = run.finish().await;
    assert!(
        summary.report.passed(),
        "the console does not disturb the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hands_on_device_provisions_publishes_receives_rotates_and_reconnects() {
    let run = ConsoleRun::start(token_access()).await;
    let (status, created) = run
        .post("/api/hands-on", Some(TOKEN), json!({"serial": "demo-1"}))
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["ok"], true);
    let names: Vec<_> = created["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "claim_connect",
            "create_certificate",
            "register_thing",
            "connect",
            "provision"
        ]
    );
    assert!(
        created["steps"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("accepted: thing fleetsim-demo-1")
    );

    let topic = "fleetsim/fleetsim-demo-1/console";
    let act = |action: &str| format!("/api/hands-on/demo-1/{action}");
    let (status, subscribed) = run
        .post(
            &act("subscribe"),
            Some(TOKEN),
            json!({"topic": "fleetsim/fleetsim-demo-1/#"}),
        )
        .await;
    assert_eq!(
        (status, &subscribed["ok"]),
        (200, &json!(true)),
        "{subscribed}"
    );
    let (status, published) = run
        .post(
            &act("publish"),
            Some(TOKEN),
            json!({"topic": topic, "payload": "hello console"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        published["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("PUBACK")
    );
    let received = device_until(&run, "demo-1", 5, |d| {
        step_names(d).contains(&"message".into())
    })
    .await;
    let message = received["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "message")
        .unwrap();
    assert!(
        message["detail"]
            .as_str()
            .unwrap()
            .contains("hello console")
    );

    let before = received["current"]["id"].as_str().unwrap().to_owned();
    let (status, rotated) = run.post(&act("rotate"), Some(TOKEN), json!({})).await;
    assert_eq!((status, &rotated["ok"]), (200, &json!(true)), "{rotated}");
    let device = run.get("/api/devices/demo-1", Some(TOKEN)).await.1;
    assert_ne!(device["current"]["id"], before.as_str());
    assert_eq!(device["retired"][0]["id"], before.as_str());
    assert_eq!(device["retired"][0]["registry_status"], "REVOKED");
    assert!(
        device["current"].get("private_key").is_none()
            && !device.to_string().contains("PRIVATE KEY")
    );

    assert_eq!(
        run.post(&act("disconnect"), Some(TOKEN), json!({})).await.0,
        200
    );
    assert_eq!(
        run.get("/api/devices/demo-1", Some(TOKEN)).await.1["state"],
        "offline"
    );
    assert_eq!(
        run.post(&act("publish"), Some(TOKEN), json!({"topic": topic}))
            .await
            .0,
        409
    );
    let (status, connected) = run.post(&act("connect"), Some(TOKEN), json!({})).await;
    assert_eq!(
        (status, &connected["ok"]),
        (200, &json!(true)),
        "{connected}"
    );
    let resubscribed = connected["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "subscribe");
    assert!(resubscribed, "subscriptions are renewed after a reconnect");

    // A renewal window longer than the validity: every check rotates.
    let auto = json!({"enabled": true, "check_every": "1s", "renew_before": "30d"});
    assert_eq!(
        run.post(&act("auto-rotation"), Some(TOKEN), auto).await.0,
        200
    );
    device_until(&run, "demo-1", 15, |d| d["rotations"].as_u64() >= Some(2)).await;
    let off = run
        .post(
            &act("auto-rotation"),
            Some(TOKEN),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(off.0, 200);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_on_actions_with_bad_serials_topics_or_settings_are_refused() {
    let run = ConsoleRun::start(token_access()).await;
    let create = |serial: &str| json!({ "serial": serial });
    for (serial, expected) in [
        ("a b", 400),
        ("../escape", 400),
        ("..", 400),
        ("x/y", 400),
        ("", 400),
        ("con-01", 409),
    ] {
        let (status, body) = run.post("/api/hands-on", Some(TOKEN), create(serial)).await;
        assert_eq!(status, expected, "serial {serial:?}: {body}");
    }
    let parent = run.dir.path();
    assert!(!parent.join("escape").exists() && !parent.join("certs").join("escape").exists());
    let (status, _) = run
        .post(
            "/api/hands-on/..%2F..%2Fescape/connect",
            Some(TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "a path-like serial in the URL is refused");
    assert_eq!(
        run.post("/api/hands-on/ghost/connect", Some(TOKEN), json!({}))
            .await
            .0,
        404
    );

    assert_eq!(
        run.post("/api/hands-on", Some(TOKEN), create("demo-2"))
            .await
            .0,
        200
    );
    assert_eq!(
        run.post("/api/hands-on", Some(TOKEN), create("demo-2"))
            .await
            .0,
        409
    );
    let act = |action: &str| format!("/api/hands-on/demo-2/{action}");
    for topic in ["a/#/b", "$aws/things/x/shadow/get", "a\u{1}b", "", "a/+"] {
        let (status, body) = run
            .post(&act("publish"), Some(TOKEN), json!({"topic": topic}))
            .await;
        assert_eq!(status, 400, "topic {topic:?}: {body}");
    }
    let (status, _) = run
        .post(&act("subscribe"), Some(TOKEN), json!({"topic": "a/#/b"}))
        .await;
    assert_eq!(status, 400);
    let big = "x".repeat(128 * 1024 + 1);
    let (status, _) = run
        .post(
            &act("publish"),
            Some(TOKEN),
            json!({"topic": "fleetsim/fleetsim-demo-2/t", "payload": big}),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(
        run.post(&act("connect"), Some(TOKEN), json!({})).await.0,
        409,
        "already connected"
    );
    assert_eq!(
        run.post(&act("teleport"), Some(TOKEN), json!({})).await.0,
        404
    );
    let bad_interval = json!({"enabled": true, "check_every": "soon", "renew_before": "1d"});
    assert_eq!(
        run.post(&act("auto-rotation"), Some(TOKEN), bad_interval)
            .await
            .0,
        400
    );
    let too_fast = json!({"enabled": true, "check_every": "1ms", "renew_before": "1d"});
    assert_eq!(
        run.post(&act("auto-rotation"), Some(TOKEN), too_fast)
            .await
            .0,
        400
    );

    // The policy allows only the thing's own topics: the broker closes the
    // connection, and the console says so.
    let (status, denied) = run
        .post(
            &act("publish"),
            Some(TOKEN),
            json!({"topic": "fleetsim/someone-else/t"}),
        )
        .await;
    assert_eq!(status, 200);
    let device = device_until(&run, "demo-2", 5, |d| d["state"] == "offline").await;
    assert!(
        denied["ok"] == false || !device["errors"].as_array().unwrap().is_empty(),
        "{denied}"
    );
    run.finish().await;
}

#[tokio::test]
async fn a_console_without_a_token_is_refused_off_loopback_and_open_on_it() {
    let everywhere = SocketAddr::from(([0, 0, 0, 0], 0));
    let refused = console::start(everywhere, Access::Open, ConsoleSources::default()).await;
    assert!(matches!(refused, Err(ConsoleError::OpenToNetwork { .. })));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let open = console::start(loopback, Access::Open, ConsoleSources::default())
        .await
        .unwrap();
    let (status, body) =
        console_support::request(open.local_addr(), "GET", "/api/overview", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"fleet\":false"));
    let (status, _) = console_support::request(
        open.local_addr(),
        "POST",
        "/api/hands-on",
        None,
        Some("{\"serial\":\"x\"}"),
    )
    .await;
    assert_eq!(status, 404, "a console without hands-on devices says so");
    open.shutdown().await;
}
