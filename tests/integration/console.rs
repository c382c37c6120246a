//! The operator console in a real headless Chromium: `cdn up`'s default topology in
//! process, the console in front of it, and the page as an operator sees it. It loads
//! without a script error, shows every region and node, turns a drained edge red and
//! follows GeoDNS's answers as they change, and shows a purge reaching every node.
//! Skipped, saying so, where there is no `chromium` (CI installs it).

use crate::support;

use std::time::Duration;

use cdn::console::{ConsoleOptions, ConsoleServer};
use cdn::node_admin::NodeAdmin;
use http::{Method, StatusCode};
use support::browser::Headless;
use support::local_cdn::LocalCdn;

/// What a row of a node shows: its state and colours, as JSON.
fn row_js(node: &str) -> String {
    format!(
        r#"(() => {{
            const row = document.querySelector('tr[data-node="{node}"]');
            if (!row) return null;
            const badge = row.querySelector('.badge');
            return {{ health: row.dataset.health, row: getComputedStyle(row).backgroundColor,
                      badge: getComputedStyle(badge).backgroundColor, text: badge.textContent }};
        }})()"#
    )
}

/// `rgb(r, g, b)` as numbers.
fn rgb(colour: &serde_json::Value) -> (u32, u32, u32) {
    let text = colour.as_str().unwrap_or_default();
    let parts: Vec<u32> = text
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert!(parts.len() >= 3, "not a colour: {colour}");
    (parts[0], parts[1], parts[2])
}

fn is_red(colour: &serde_json::Value) -> bool {
    let (r, g, b) = rgb(colour);
    r >= 200 && r >= g + 40 && r >= b + 40
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_node_a_drained_edge_in_red_and_a_purge_reaching_every_node() {
    let cdn = LocalCdn::start(&[]).await;
    let options = ConsoleOptions {
        interval: Duration::from_millis(250),
        timeout: Duration::from_millis(500),
    };
    let console = ConsoleServer::start(
        cdn.endpoints().clone(),
        "127.0.0.1:0".parse().unwrap(),
        options,
    )
    .await
    .expect("the console starts");
    let Some(browser) = Headless::open(
        "console::the_console_shows_every_node_a_drained_edge_in_red_and_a_purge_reaching_every_node",
        &console.url(),
    )
    .await
    else {
        console.shutdown().await;
        cdn.shutdown().await;
        return;
    };

    // Every region and every node, each in its own row, all ready.
    let endpoints = cdn.endpoints().clone();
    let mut nodes: Vec<String> = endpoints.edges().map(|(_, e)| e.name.clone()).collect();
    nodes.extend(endpoints.shields.iter().map(|s| s.name.clone()));
    let regions: Vec<String> = endpoints.regions.iter().map(|r| r.name.clone()).collect();
    let shown = r#"[...document.querySelectorAll('tr[data-node]')].map(r => r.dataset.node + ':' + r.dataset.health)"#;
    browser
        .until(
            "every node shown ready",
            Duration::from_secs(10),
            &format!(
                "(() => {{ const want = {}; const rows = [...document.querySelectorAll('tr[data-node]')];
                    return rows.length === want.length && want.every(n => rows.some(r =>
                        r.dataset.node === n && r.dataset.health === 'ready' && r.textContent.includes(n))); }})()",
                serde_json::to_string(&nodes).unwrap()
            ),
            shown,
        )
        .await;
    let text = browser.eval("document.body.innerText").await;
    let text = text.as_str().expect("the page's text");
    for name in regions.iter().chain(&nodes) {
        assert!(
            text.contains(name.as_str()),
            "{name} is not on the page: {text}"
        );
    }
    let listed = browser
        .eval("[...document.querySelectorAll('.region[data-region]')].map(r => r.dataset.region)")
        .await;
    assert_eq!(listed, serde_json::json!(regions));
    let map = browser
        .eval("document.querySelectorAll('#map circle[data-region]').length")
        .await;
    assert_eq!(
        map,
        serde_json::json!(regions.len()),
        "one map marker per region"
    );
    let before = browser.eval(&row_js("eu-west-1")).await;
    assert!(
        !is_red(&before["row"]) && !is_red(&before["badge"]),
        "{before}"
    );

    // A drain (as `cdn drill` does it) turns the edge red, and GeoDNS stops answering it.
    let drained = endpoints.region("eu-west").expect("eu-west").edges[0].clone();
    NodeAdmin::new(&endpoints.node_token)
        .drain(&drained.name, drained.admin)
        .await
        .expect("the edge drains");
    browser
        .until(
            "the drained edge marked draining",
            Duration::from_secs(5),
            &format!("({})?.health === 'draining'", row_js(&drained.name)),
            &row_js(&drained.name),
        )
        .await;
    let row = browser.eval(&row_js(&drained.name)).await;
    assert!(is_red(&row["row"]), "the row is red: {row}");
    assert!(is_red(&row["badge"]), "the badge is red: {row}");
    assert_eq!(row["text"], "draining");
    let other = browser.eval(&row_js("eu-west-2")).await;
    assert_eq!(other["health"], "ready", "{other}");
    assert!(!is_red(&other["row"]), "{other}");
    browser
        .until(
            "GeoDNS's answer to eu-west's clients without the drained edge",
            Duration::from_secs(10),
            r#"document.querySelector('[data-dns-region="eu-west"]')?.dataset.edges === 'eu-west-2'"#,
            r#"document.querySelector('[data-dns-region="eu-west"]')?.textContent"#,
        )
        .await;
    let drill = browser
        .eval("document.getElementById('drill').hidden ? null : document.getElementById('drill').innerText")
        .await;
    assert!(
        drill
            .as_str()
            .is_some_and(|d| d.contains("eu-west-1 draining")),
        "the drill panel names the drained edge: {drill}"
    );
    let events = browser
        .eval("document.getElementById('events').innerText")
        .await;
    let events = events.as_str().unwrap_or_default();
    assert!(events.contains("eu-west-1 ready → draining"), "{events}");
    assert!(
        events.contains("clients of eu-west: eu-west (eu-west-1, eu-west-2) → eu-west (eu-west-2)"),
        "{events}"
    );

    // A purge shows as applied on every node.
    let body = format!(
        r#"{{"site":"demo","urls":["http://{}/obj/console.bin"]}}"#,
        cdn.site()
    );
    let accepted = cdn.purge_api(Method::POST, "/v1/purge", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text());
    let id: serde_json::Value = serde_json::from_slice(&accepted.body).expect("JSON");
    let id = id["id"].as_str().expect("an id").to_owned();
    let all = nodes.len();
    let purge_row = format!(r#"document.querySelector('tr[data-purge="{id}"]')"#);
    browser
        .until(
            "the purge applied on every node",
            Duration::from_secs(10),
            &format!(
                "(() => {{ const row = {purge_row}; return !!row && row.dataset.applied === '{all}'
                    && row.dataset.expected === '{all}' && row.textContent.includes('applied {all}/{all}')
                    && row.querySelectorAll('.dot.applied').length === {all}; }})()"
            ),
            &format!("{purge_row}?.textContent"),
        )
        .await;

    let errors = browser.errors();
    assert!(errors.is_empty(), "the page caused errors: {errors:?}");
    browser.close().await;
    console.shutdown().await;
    cdn.shutdown().await;
}
