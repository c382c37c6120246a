//! A real headless Chromium, driven over the DevTools protocol (chromiumoxide), for the
//! tests of the web pages the CDN serves. Every JavaScript exception, `console.error` and
//! error-level browser log entry (a failed resource load, a CSP refusal) the page causes
//! is collected, so a test can assert there were none.
//!
//! The system's `chromium` is used (`apt-get install chromium`; `.ci/run` installs it);
//! nothing is ever downloaded. Without it, [`Headless::open`] says so and returns `None`,
//! and the test returns early.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::log::{EventEntryAdded, LogEntryLevel};
use chromiumoxide::cdp::js_protocol::runtime::{
    ConsoleApiCalledType, EventConsoleApiCalled, EventExceptionThrown,
};
use chromiumoxide::{Browser, BrowserConfig, Page};
use futures_util::StreamExt;
use tokio::task::JoinSet;

/// A browser with one page open.
pub struct Headless {
    browser: Browser,
    pub page: Page,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
    _profile: tempfile::TempDir,
}

/// The `chromium` executable on the `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
}

impl Headless {
    /// Starts Chromium and opens `url`, collecting the page's errors from before its
    /// first byte. `None` (after saying why on stderr) when there is no `chromium`.
    pub async fn open(test: &str, url: &str) -> Option<Self> {
        let Some(executable) = chromium() else {
            eprintln!(
                "SKIPPED {test}: no `chromium` on the PATH to drive; install it with \
                 `apt-get install -y chromium` (.ci/run does) to run this test"
            );
            return None;
        };
        // A profile of its own: tests run in parallel, and Chromium locks its profile.
        let profile = tempfile::Builder::new()
            .prefix("cdn-test-chromium-")
            .tempdir()
            .expect("a profile directory");
        let config = BrowserConfig::builder()
            .chrome_executable(executable)
            .new_headless_mode()
            .no_sandbox()
            .user_data_dir(profile.path())
            .args(["--disable-gpu", "--disable-dev-shm-usage"])
            .launch_timeout(Duration::from_secs(20))
            .build()
            .expect("a browser config");
        let (browser, mut handler) = Browser::launch(config)
            .await
            .expect("chromium starts (run as root it needs --no-sandbox, which is given)");
        let mut tasks = JoinSet::new();
        tasks.spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page("about:blank").await.expect("a page");
        let errors = Arc::new(Mutex::new(Vec::new()));

        let mut thrown = page
            .event_listener::<EventExceptionThrown>()
            .await
            .expect("exceptions");
        let mut console = page
            .event_listener::<EventConsoleApiCalled>()
            .await
            .expect("console calls");
        let mut log = page
            .event_listener::<EventEntryAdded>()
            .await
            .expect("log entries");
        page.execute(chromiumoxide::cdp::browser_protocol::log::EnableParams::default())
            .await
            .expect("the Log domain");
        page.execute(chromiumoxide::cdp::js_protocol::runtime::EnableParams::default())
            .await
            .expect("the Runtime domain");
        let sink = errors.clone();
        tasks.spawn(async move {
            while let Some(event) = thrown.next().await {
                let details = &event.exception_details;
                let exception = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.description.clone())
                    .unwrap_or_default();
                sink.lock().unwrap().push(format!(
                    "exception at {}:{}: {} {exception}",
                    details.url.as_deref().unwrap_or("?"),
                    details.line_number,
                    details.text
                ));
            }
        });
        let sink = errors.clone();
        tasks.spawn(async move {
            while let Some(event) = console.next().await {
                if matches!(
                    event.r#type,
                    ConsoleApiCalledType::Error | ConsoleApiCalledType::Assert
                ) {
                    let args: Vec<String> = event
                        .args
                        .iter()
                        .map(|a| {
                            a.value
                                .as_ref()
                                .map(ToString::to_string)
                                .or_else(|| a.description.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    sink.lock().unwrap().push(format!(
                        "console.{:?}: {}",
                        event.r#type,
                        args.join(" ")
                    ));
                }
            }
        });
        let sink = errors.clone();
        tasks.spawn(async move {
            while let Some(event) = log.next().await {
                if event.entry.level == LogEntryLevel::Error {
                    sink.lock().unwrap().push(format!(
                        "log error ({:?}) {}: {}",
                        event.entry.source,
                        event.entry.url.as_deref().unwrap_or(""),
                        event.entry.text
                    ));
                }
            }
        });
        page.goto(url).await.expect("the page loads");
        Some(Self {
            browser,
            page,
            errors,
            tasks,
            _profile: profile,
        })
    }

    /// Every error the page caused so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// The value of the JavaScript expression `js`.
    pub async fn eval(&self, js: &str) -> serde_json::Value {
        self.page
            .evaluate(js)
            .await
            .unwrap_or_else(|e| panic!("evaluating {js}: {e}"))
            .into_value()
            .unwrap_or(serde_json::Value::Null)
    }

    /// Evaluates `js` until it is `true`, for at most `within`; panics saying `what` did
    /// not happen, with the last value of `shown` (an expression describing the page's
    /// state) and the page's errors.
    pub async fn until(&self, what: &str, within: Duration, js: &str, shown: &str) {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(js).await == serde_json::Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}; the page shows {}; page errors: {:?}",
                    self.eval(shown).await,
                    self.errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.tasks.abort_all();
    }
}
