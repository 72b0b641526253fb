//! A real headless Chromium (Debian's `chromium`), driven over its
//! DevTools protocol: open a page, read its DOM as it changes, take
//! screenshots. Started per test on a free port with a fresh profile, and
//! killed when dropped. Without `chromium` on `PATH` the tests that need it
//! show as ignored (`cfg(missing_chromium)`); under `CI=true` they run
//! (`.ci/run` installs it).

use std::{path::PathBuf, process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A page open in a headless Chromium.
pub struct Browser {
    _child: Child,
    socket: Socket,
    session: String,
    next: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium and opens `url` in a `width` x `height` window.
    pub async fn open(url: &str, width: u32, height: u32) -> Self {
        let profile = super::temp_dir();
        // Flags for a closed network: no background fetches to Google.
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ws = loop {
            let line = lines
                .next_line()
                .await
                .expect("chromium's stderr")
                .expect("chromium ended before its DevTools address");
            if let Some(at) = line.find("ws://") {
                break line[at..].trim().to_owned();
            }
        };
        // Keep reading its stderr, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(ws.as_str())
            .await
            .expect("DevTools socket");
        let mut browser = Self {
            _child: child,
            socket,
            session: String::new(),
            next: 0,
            profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        browser.resize(width, height).await;
        browser.call("Page.enable", json!({})).await;
        browser.call("Page.navigate", json!({ "url": url })).await;
        browser
    }

    /// Sends one command (to the page once attached); its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("DevTools send");
        loop {
            let Some(frame) = self.socket.next().await else {
                panic!("DevTools socket closed");
            };
            let Ok(Message::Text(text)) = frame else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The page's viewport becomes `width` x `height` CSS pixels.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        )
        .await;
    }

    /// The value of the JavaScript expression `expr` in the page.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(result.get("exceptionDetails").is_none(), "{expr}: {result}");
        result["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page (bounded: a failure, not a
    /// wait, is what the bound is for).
    pub async fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.eval(expr).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("base64 data"))
            .expect("a PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
