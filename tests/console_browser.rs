//! The console in a real browser: Debian's headless Chromium driven by
//! chromedriver over the WebDriver protocol. It loads the console with a
//! token, provisions a hands-on device, publishes a message and sees it
//! arrive, rotates the certificate and sees the new id with the old one
//! revoked, and saves a screenshot. Chromium and chromedriver must be
//! installed (`.ci/run` installs them); without them this test fails.

mod console_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use console_support::{ConsoleRun, TOKEN, request};
use fleetsim::console::Access;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(driver.addr).await.is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen within 10 s");
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then(|| body.to_string());
        let (status, text) = request(self.addr, method, path, None, body.as_deref()).await;
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path}: {text}");
        reply["value"].clone()
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Browser<'_> {
    async fn open<'a>(driver: &'a Driver, profile: &Path) -> Browser<'a> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1400",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let created = driver.call("POST", "/session", capabilities).await;
        Browser {
            driver,
            session: created["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.driver.call(method, &path, body).await
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found[ELEMENT].as_str().expect("an element id").to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        let text = self
            .call("GET", &format!("/element/{id}/text"), Value::Null)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Waits until the text of `css` satisfies `done`, and returns it.
    async fn wait_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            last = self.text(css).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: {css} never showed it; last text: {last:?}");
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(path, bytes).unwrap();
    }

    async fn close(self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.session), Value::Null)
            .await;
    }
}

/// The certificate id shown in the hands-on certificate table.
fn shown_id(table: &str) -> String {
    table
        .lines()
        .find_map(|line| line.strip_prefix("id "))
        .expect("the table shows an id")
        .trim()
        .to_owned()
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("FLEETSIM_CONSOLE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_device_is_provisioned_publishes_and_rotates_from_the_console() {
    let run = ConsoleRun::start(Access::Token(TOKEN.to_owned())).await;
    run.wait_for_fleet().await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::open(&driver, profile.path()).await;
    browser
        .go(&format!("http://{}/#token={TOKEN}", run.addr))
        .await;
    browser
        .wait_text("#feed-status", "live feed", |t| t == "live")
        .await;
    browser
        .wait_text("#states", "fleet states", |t| t.contains("online"))
        .await;

    browser.type_into("#serial-input", "browser-1").await;
    browser.click("#create-btn").await;
    let certificate = browser
        .wait_text("#hands-on-cert", "provisioned", |t| t.contains("ACTIVE"))
        .await;
    let first_id = shown_id(&certificate);
    assert_eq!(first_id.len(), 64);
    browser
        .wait_text("#wire-log", "provisioning steps", |t| {
            t.contains("accepted: thing fleetsim-browser-1")
        })
        .await;

    browser.click("#subscribe-btn").await;
    browser
        .wait_text("#wire-log", "subscribed", |t| t.contains("SUBACK"))
        .await;
    browser
        .type_into("#payload-input", r#"{"hello":"from the browser"}"#)
        .await;
    browser.click("#publish-btn").await;
    let arrived = "message on fleetsim/fleetsim-browser-1/console";
    browser
        .wait_text("#wire-log", "message arrived", |t| {
            t.contains(arrived) && t.contains("from the browser")
        })
        .await;

    browser.click("#rotate-btn").await;
    let certificate = browser
        .wait_text("#hands-on-cert", "new certificate", |t| {
            t.contains("ACTIVE") && shown_id(t) != first_id
        })
        .await;
    let retired = browser
        .wait_text("#hands-on-retired", "old certificate revoked", |t| {
            t.contains("REVOKED")
        })
        .await;
    assert!(
        retired.contains(&first_id[..16]),
        "the retired one is the first: {retired}"
    );
    assert_ne!(shown_id(&certificate), first_id);

    browser.type_into("#search-input", "con-01").await;
    browser.click("#search-btn").await;
    browser
        .wait_text("#device-detail", "fleet device view", |t| {
            t.contains("Timeline")
        })
        .await;
    browser.screenshot(&screenshot_path()).await;
    browser.close().await;
    run.finish().await;
}
