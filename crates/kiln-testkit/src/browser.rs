//! A headless Chromium for dashboard tests, driven over WebDriver through `chromedriver`.
//!
//! Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them); never a
//! browser a tool downloads. Our own client on the testkit's hyper instead of a WebDriver
//! crate: the few commands a test needs fit in this file, and the crates made for it bring
//! a second `http` and ICU and an MPL-2.0 dependency (ADR 0016).
//!
//! Each [`Browser`] runs its own `chromedriver --port=0` (it picks a free port and prints
//! it) in a process group of its own, with `HOME` and `TMPDIR` in a temporary directory
//! (Chromium writes its profile and caches there); dropping it kills the whole group.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest a single WebDriver command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// The viewport a browser emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 1280 × 900.
    Desktop,
    /// A phone: 390 × 844 CSS pixels, through Chromium's mobile emulation.
    Phone,
}

impl Width {
    /// `desktop` or `phone`, for screenshot names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Phone => "phone",
        }
    }
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// One Chromium session.
pub struct Browser {
    driver: tokio::process::Child,
    pgid: Option<u32>,
    base: String,
    session: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    home: tempfile::TempDir,
}

/// The command that installs what the browser tests need, for failure messages.
pub const INSTALL: &str = "apt-get install --no-install-recommends chromium chromium-driver";

impl Browser {
    /// Starts chromedriver and a headless Chromium at `width`.
    ///
    /// # Panics
    /// If chromedriver is not installed (the message says how to install it) or Chromium
    /// does not start.
    pub async fn start(width: Width) -> Self {
        let home = tempfile::tempdir().expect("a temp dir for the browser");
        let mut cmd = tokio::process::Command::new("chromedriver");
        cmd.arg("--port=0")
            .env("HOME", home.path())
            .env("TMPDIR", home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut driver = cmd.spawn().unwrap_or_else(|e| {
            panic!("chromedriver does not start ({e}); the dashboard tests need `{INSTALL}`")
        });
        let pgid = driver.id();
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(COMMAND_LIMIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    return digits.parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromedriver prints the port it listens on");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut browser = Self {
            driver,
            pgid,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            home,
        };
        let mut options = json!({
            "binary": std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--window-size=1280,900"],
        });
        if width == Width::Phone {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0}});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = browser.call(Method::POST, "/session", Some(caps)).await;
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    /// Sends one WebDriver command (`path` below the driver's root) and returns `value`.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a WebDriver request");
        let round_trip = async {
            let resp = self.http.request(req).await.expect("chromedriver answers");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("a body").to_bytes();
            (status, bytes)
        };
        let (status, bytes) = tokio::time::timeout(COMMAND_LIMIT, round_trip)
            .await
            .unwrap_or_else(|_| panic!("WebDriver {method} {path} took over {COMMAND_LIMIT:?}"));
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {value}"
        );
        value["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call(Method::POST, &self.at("/url"), Some(json!({"url": url})))
            .await;
    }

    /// The page's URL now.
    pub async fn url(&self) -> String {
        let v = self.call(Method::GET, &self.at("/url"), None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Every element matching the CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({"using": "css selector", "value": css});
        let found = self
            .call(Method::POST, &self.at("/elements"), Some(body))
            .await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned())))
            .collect()
    }

    /// The first element matching the CSS selector, waiting up to 30 s for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let what = format!("an element `{css}`");
        crate::wait_until(&what, Duration::from_secs(30), || async {
            self.find_all(css).await.into_iter().next().ok_or(())
        })
        .await
    }

    /// Clicks the element.
    pub async fn click(&self, el: &Element) {
        let path = self.at(&format!("/element/{}/click", el.0));
        self.call(Method::POST, &path, Some(json!({}))).await;
    }

    /// Types `text` into the element.
    pub async fn type_into(&self, el: &Element, text: &str) {
        let path = self.at(&format!("/element/{}/value", el.0));
        self.call(Method::POST, &path, Some(json!({"text": text})))
            .await;
    }

    /// Runs a Chrome DevTools Protocol command (`Network.clearBrowserCache`, …) through
    /// chromedriver and returns its result.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let body = json!({"cmd": cmd, "params": params});
        self.call(Method::POST, &self.at("/goog/cdp/execute"), Some(body))
            .await
    }

    /// Empties an input or textarea.
    pub async fn clear(&self, el: &Element) {
        let path = self.at(&format!("/element/{}/clear", el.0));
        self.call(Method::POST, &path, Some(json!({}))).await;
    }

    /// The element's rendered text.
    pub async fn text(&self, el: &Element) -> String {
        let path = self.at(&format!("/element/{}/text", el.0));
        let v = self.call(Method::GET, &path, None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its result.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        let body = json!({"script": script, "args": args});
        self.call(Method::POST, &self.at("/execute/sync"), Some(body))
            .await
    }

    /// Runs `script`, whose last argument is a callback, and returns what it passes to it.
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        let body = json!({"script": script, "args": args});
        self.call(Method::POST, &self.at("/execute/async"), Some(body))
            .await
    }

    /// Waits up to `within` until `script` returns something truthy, and returns it.
    pub async fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        crate::wait_until(what, within, || async {
            let v = self.execute(script, json!([])).await;
            match &v {
                Value::Null | Value::Bool(false) => Err(v),
                Value::String(s) if s.is_empty() => Err(v),
                Value::Number(n) if n.as_f64() == Some(0.0) => Err(v),
                _ => Ok(v),
            }
        })
        .await
    }

    /// Writes a PNG of the viewport to `target/screenshots/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(Method::GET, &self.at("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// The browser console's entries since the last call (`{level, source, message}`;
    /// CSP violations come with `source: "security"`).
    pub async fn log(&self) -> Vec<Value> {
        let body = json!({"type": "browser"});
        let v = self
            .call(Method::POST, &self.at("/se/log"), Some(body))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// The cookies the browser holds for the page's site (`{name, value, httpOnly, secure,
    /// sameSite, …}`), as WebDriver reports them (HttpOnly ones included).
    pub async fn cookies(&self) -> Vec<Value> {
        let v = self.call(Method::GET, &self.at("/cookie"), None).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Runs axe-core (its `axe.min.js` text in `axe_source`) on the page and returns the
    /// violations of WCAG 2.1 A and AA rules.
    pub async fn axe(&self, axe_source: &str) -> Vec<Value> {
        self.execute(axe_source, json!([])).await;
        let run = "const done = arguments[arguments.length - 1];
            axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
              .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.map(n => n.html).slice(0, 3)}))))
              .catch(e => done([{id: 'axe-error', help: String(e)}]));";
        let v = self.execute_async(run, json!([])).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Ends the session and stops the browser.
    pub async fn close(mut self) {
        let path = self.at("");
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.call(Method::DELETE, &path, None),
        )
        .await;
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The whole group: chromedriver and every Chromium process it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
            let _ = self.driver.start_kill();
            // A renderer that left the group still names the profile under our temp dir.
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-f", &self.home.path().display().to_string()])
                .status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where screenshots go: `target/screenshots/` of the workspace (or `$CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("screenshots")
}
