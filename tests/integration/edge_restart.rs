//! What an edge remembers across a restart with a state directory (`[cache] state_dir`):
//! it resumes reading the purge log from its persisted watermark (not from the head,
//! although its memory is empty), its persisted state knows the purges it missed while it
//! was down (what a disk tier will check every entry it reads against), a generation
//! bump survives the restart, and a node whose missed purges left the log counts
//! everything it stored before as gone. Without a state directory an empty node still
//! takes the log's head, as before.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::cache::key::CacheKey;
use edge::node::server::CATCH_UP_PAGE;
use edge::node::state::Verdict;
use edge::{EdgeServer, MemoryStore, Storage};
use http::{Method, StatusCode};
use purge_api::PurgeApiServer;
use purge_api::log::Retention;
use support::purge_log::{NODE_TOKEN, RecordingLog, TOKEN, api_config};
use support::{HOST, api_call, client, eventually, json, loopback, send, send_with};

fn edge_config(
    origin: SocketAddr,
    state_dir: Option<&Path>,
    api: Option<SocketAddr>,
    listen: Option<(SocketAddr, SocketAddr)>,
) -> edge::EdgeConfig {
    let api = api.map_or(String::new(), |a| format!("api = \"http://{a}\""));
    let state_dir = state_dir.map_or(String::new(), |dir| {
        format!("state_dir = \"{}\"", dir.display())
    });
    let (public, admin) = listen.map_or(
        ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
        |(p, a)| (p.to_string(), a.to_string()),
    );
    let text = format!(
        r#"
        [node]
        name = "edge-restart"
        listen = "{public}"
        admin_listen = "{admin}"
        [cache]
        {state_dir}
        [purge]
        node_token = "{NODE_TOKEN}"
        {api}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        "#
    );
    edge::EdgeConfig::from_toml(&text).expect("edge config")
}

/// An origin, an edge with a state directory, and the purge API pushing to it over a log
/// that records where it is read from.
struct Restarting {
    origin: DemoOrigin,
    state_dir: PathBuf,
    log: Arc<RecordingLog>,
    api: PurgeApiServer,
    edge: Option<EdgeServer>,
    listen: (SocketAddr, SocketAddr),
    _dir: tempfile::TempDir,
}

impl Restarting {
    async fn start(retention: Retention) -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin");
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dir = dir.path().join("edge-state");
        let edge = EdgeServer::start_with_store(
            edge_config(origin.addr(), Some(&state_dir), None, None),
            Arc::new(MemoryStore::new(64 << 20)),
        )
        .await
        .expect("edge");
        let log = Arc::new(RecordingLog::open(
            &dir.path().join("purges.redb"),
            retention,
        ));
        let api = PurgeApiServer::start_with_log(
            api_config("edge-restart", Some(edge.admin_addr())),
            log.clone(),
        )
        .await
        .expect("purge API");
        Self {
            origin,
            state_dir,
            log,
            api,
            listen: (edge.public_addr(), edge.admin_addr()),
            edge: Some(edge),
            _dir: dir,
        }
    }

    fn edge(&self) -> &EdgeServer {
        self.edge.as_ref().expect("the edge is running")
    }

    /// Submits a purge; returns its sequence number once the log has it.
    async fn submit(&self, body: &str) -> u64 {
        let reply = api_call(
            self.api.addr(),
            Method::POST,
            "/v1/purge",
            Some(TOKEN),
            body,
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        json(&reply)["seq"].as_u64().expect("seq")
    }

    /// Submits a purge and waits until the edge acknowledged it.
    async fn purge(&self, body: &str) -> u64 {
        let seq = self.submit(body).await;
        let status = api_call(
            self.api.addr(),
            Method::GET,
            &format!("/v1/purges/{seq}?wait=10s"),
            Some(TOKEN),
            "",
        )
        .await;
        assert_eq!(json(&status)["state"], "done", "{}", status.text());
        seq
    }

    /// Stops the edge and waits until nothing holds it any more, so its state file is
    /// closed (a state is open in one node at a time).
    async fn stop(&mut self) {
        let edge = self.edge.take().expect("the edge is running");
        let held = Arc::downgrade(edge.edge());
        edge.shutdown().await;
        assert!(
            eventually(Duration::from_secs(10), || held.strong_count() == 0).await,
            "the stopped edge is still held: its state stays open"
        );
    }

    /// Starts the edge again on its addresses and state directory, with an empty memory
    /// (as a new process has), catching up from the purge API before it serves.
    async fn restart(&mut self) {
        let config = edge_config(
            self.origin.addr(),
            Some(&self.state_dir),
            Some(self.api.addr()),
            Some(self.listen),
        );
        let edge = EdgeServer::start_with_store(config, Arc::new(MemoryStore::new(64 << 20)))
            .await
            .expect("edge restarts");
        self.edge = Some(edge);
    }

    fn generation(&self) -> u64 {
        self.edge()
            .edge()
            .live()
            .sites
            .by_name("assets")
            .expect("site")
            .generation()
    }

    /// The edge's persisted verdict on an entry of `target` stored at `valid_as_of`.
    fn check(&self, target: &str, tags: &[&str], valid_as_of: u64) -> Verdict {
        let state = self.edge().edge().state().expect("a state");
        let key = CacheKey::new(self.generation(), "http", HOST, target);
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        state.check("assets", &key, &tags, valid_as_of)
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = send_with(self.edge().admin_addr(), "/metrics", &[])
            .await
            .text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {series} in\n{text}"))
            .trim()
            .parse()
            .expect("numeric metric")
    }
}

fn url(target: &str) -> String {
    format!("https://{HOST}{target}")
}

#[tokio::test]
async fn a_restarted_edge_resumes_from_its_persisted_watermark_and_knows_the_purges_it_missed() {
    let mut r = Restarting::start(Retention::default()).await;
    assert_eq!(r.generation(), 1);
    r.purge(&format!(
        r#"{{"site":"assets","urls":["{}"]}}"#,
        url("/r/early.bin")
    ))
    .await;
    let bump = r.purge(r#"{"site":"assets","everything":true}"#).await;
    assert_eq!(r.generation(), 2, "everything-hard bumps the generation");
    assert_eq!(
        r.metric("edge_purge_persisted_watermark").await,
        bump as f64
    );
    assert_eq!(r.metric("edge_purge_journal_entries").await, 2.0);
    // What a disk tier would have stored just before the stop.
    let stored_at = bump;

    r.stop().await;
    let gone = r
        .submit(&format!(
            r#"{{"site":"assets","urls":["{}"]}}"#,
            url("/r/gone.bin")
        ))
        .await;
    r.submit(r#"{"site":"assets","tags":["grp"],"mode":"soft"}"#)
        .await;
    let last = r
        .submit(&format!(
            r#"{{"site":"assets","prefixes":["{}"]}}"#,
            url("/r/dir/")
        ))
        .await;
    assert_eq!(gone, stored_at + 1);
    r.log.take_reads();

    r.restart().await;
    // Checked before anything else runs: the catch-up alone did this.
    let reads = r.log.take_reads();
    assert!(
        reads.contains(&(stored_at, CATCH_UP_PAGE)),
        "read from the persisted watermark {stored_at}: {reads:?}"
    );
    assert!(
        !reads.iter().any(|&(_, limit)| limit == 0),
        "an empty memory took the log's head: {reads:?}"
    );
    let edge = r.edge().edge();
    let state = edge.state().expect("a state");
    assert_eq!(edge.store().purge_watermark(), last);
    assert_eq!(state.watermark(), last, "the missed purges are committed");
    assert_eq!(state.journal_len(), last);
    assert_eq!(
        r.generation(),
        2,
        "the bump survived a restart with the same config"
    );

    assert_eq!(r.check("/r/gone.bin", &[], stored_at), Verdict::Gone);
    assert_eq!(
        r.check("/r/tagged.bin", &["grp"], stored_at),
        Verdict::Stale
    );
    assert_eq!(r.check("/r/dir/a.bin", &[], stored_at), Verdict::Gone);
    assert_eq!(
        r.check("/r/kept.bin", &["other"], stored_at),
        Verdict::Fresh
    );
    assert_eq!(
        r.check("/r/kept.bin", &[], stored_at - 1),
        Verdict::Gone,
        "stored before the everything purge"
    );
    assert_eq!(r.check("/r/gone.bin", &[], last), Verdict::Fresh);

    // It serves, and reports the watermark the purge API waits for.
    let reply = send(
        &client(),
        r.edge().public_addr(),
        Method::GET,
        "/r/kept.bin",
        HOST,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        r.metric("edge_purge_persisted_watermark").await,
        last as f64
    );
    assert_eq!(r.metric("edge_purge_journal_entries").await, last as f64);
    let status = api_call(
        r.api.addr(),
        Method::GET,
        &format!("/v1/purges/{last}?wait=10s"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(json(&status)["state"], "done", "{}", status.text());
    r.stop().await;
}

#[tokio::test]
async fn a_restarted_edge_whose_missed_purges_left_the_log_counts_everything_it_stored_as_gone() {
    let mut r = Restarting::start(Retention {
        max_entries: 2,
        ..Retention::default()
    })
    .await;
    let stored_at = r
        .purge(&format!(
            r#"{{"site":"assets","urls":["{}"]}}"#,
            url("/t/early.bin")
        ))
        .await;
    r.stop().await;
    let mut head = 0;
    for n in 0..3 {
        head = r
            .submit(&format!(
                r#"{{"site":"assets","urls":["{}"]}}"#,
                url(&format!("/t/{n}.bin"))
            ))
            .await;
    }
    r.log.take_reads();

    r.restart().await;
    let reads = r.log.take_reads();
    assert!(
        reads.contains(&(stored_at, CATCH_UP_PAGE)),
        "asked for what it missed: {reads:?}"
    );
    let state = r.edge().edge().state().expect("a state").clone();
    assert_eq!(
        (state.floor(), state.watermark(), state.journal_len()),
        (head, head, 0),
        "the floor rose to the head"
    );
    assert_eq!(r.generation(), 2, "forgetting bumped the generation");
    assert_eq!(r.check("/t/kept.bin", &[], stored_at), Verdict::Gone);
    assert_eq!(r.check("/t/kept.bin", &[], head), Verdict::Fresh);
    drop(state);

    // The forgetting itself survives a restart (without the API this time). The API may
    // have reset the node once more meanwhile (it still held the node's old position),
    // which bumps again and keeps the floor above what was stored before.
    r.stop().await;
    let Restarting {
        origin,
        state_dir,
        api,
        _dir: dir,
        ..
    } = r;
    api.shutdown().await;
    let edge = EdgeServer::start_with_store(
        edge_config(origin.addr(), Some(&state_dir), None, None),
        Arc::new(MemoryStore::new(64 << 20)),
    )
    .await
    .expect("edge restarts");
    let state = edge.edge().state().expect("a state");
    assert!(state.floor() > stored_at, "floor {}", state.floor());
    let generation = edge
        .edge()
        .live()
        .sites
        .by_name("assets")
        .expect("site")
        .generation();
    assert!(generation >= 2, "generation {generation}");
    let key = CacheKey::new(generation, "http", HOST, "/t/kept.bin");
    assert_eq!(state.check("assets", &key, &[], stored_at), Verdict::Gone);
    edge.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn an_empty_edge_without_a_state_dir_still_takes_the_log_head() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(RecordingLog::open(
        &dir.path().join("purges.redb"),
        Retention::default(),
    ));
    let api = PurgeApiServer::start_with_log(api_config("edge-restart", None), log.clone())
        .await
        .expect("purge API");
    let mut head = 0;
    for n in 0..3 {
        let body = format!(
            r#"{{"site":"assets","urls":["{}"]}}"#,
            url(&format!("/{n}"))
        );
        let reply = api_call(api.addr(), Method::POST, "/v1/purge", Some(TOKEN), &body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        head = json(&reply)["seq"].as_u64().expect("seq");
    }
    log.take_reads();
    let store = Arc::new(MemoryStore::new(64 << 20));
    let edge = EdgeServer::start_with_store(
        edge_config(origin.addr(), None, Some(api.addr()), None),
        store.clone(),
    )
    .await
    .expect("edge");
    assert_eq!(log.take_reads(), vec![(0, 0)], "a look at the head only");
    assert_eq!(store.purge_watermark(), head);
    assert!(edge.edge().state().is_none());
    edge.shutdown().await;
    api.shutdown().await;
}
