//! A real headless Chromium, driven through its WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them).

use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

/// A browser session; its chromedriver is killed when it is dropped.
pub struct Browser {
    pub client: Client,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless
    /// session, `width` pixels wide (below 500, Chromium's narrowest
    /// window, as a phone's screen, through its device emulation).
    pub async fn start(width: u32) -> Self {
        // A free port: chromedriver takes no port 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver: install Debian's chromium and chromium-driver (.ci/run does)");
        let url = format!("http://127.0.0.1:{port}");
        let mut options = json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={},1000", width.max(500)),
        ] });
        if width < 500 {
            options["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": width, "height": 844, "pixelRatio": 1.0 } });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = testkit::eventually("chromedriver to answer", Duration::from_secs(20), || {
            let (url, capabilities) = (url.clone(), capabilities.clone());
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        Self {
            client,
            _driver: driver,
        }
    }

    /// Saves a screenshot of the page as it is, as `{name}.png` in
    /// `target/screenshots`, or in `SCREENSHOTS_DIR` when set (the README's
    /// are made with `SCREENSHOTS_DIR=$PWD/docs/img`).
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = match std::env::var_os("SCREENSHOTS_DIR") {
            Some(dir) => std::path::PathBuf::from(dir),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"),
        };
        std::fs::create_dir_all(&dir).expect("the screenshots' folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
    }

    /// The element `css` selects, once there is one (a script may add it).
    pub async fn element(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"))
    }

    /// The text of the element `css` selects, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// The text of the element `css` selects, once it has some.
    pub async fn text_when_any(&self, css: &str) -> String {
        testkit::eventually(css, Duration::from_secs(10), || async {
            self.text(css).await.filter(|text| !text.is_empty())
        })
        .await
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.element(css).await.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Marks the page's document: a reload (a new document) loses the mark.
    pub async fn mark_document(&self) {
        let script = "window.sameDocument = true; return null;";
        self.client.execute(script, vec![]).await.unwrap();
    }

    /// Whether the page is still the document [`Browser::mark_document`]
    /// marked: it was updated in place, not reloaded.
    pub async fn same_document(&self) -> bool {
        let script = "return window.sameDocument === true;";
        self.client.execute(script, vec![]).await.unwrap() == json!(true)
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
