//! How `cdn drill` and `cdn warm` show their progress in a terminal.

use std::time::Duration;

use cdn::drill::{self, DrillOptions, Progress};
use cdn::endpoints::Endpoints;
use cdn::warm::{self, Source, WarmOptions};
use indicatif::{ProgressBar, ProgressStyle};

/// Runs a drill, with a live line while it waits and a summary at the end.
pub async fn drill(
    endpoints: &Endpoints,
    region: &str,
    options: &DrillOptions,
    report_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let stamp = move || format!("{:>7.2}s", started.elapsed().as_secs_f64());
    // Without a terminal the spinner is hidden and so would be its lines: print them.
    let say = |line: String| {
        if spinner.is_hidden() {
            println!("{line}");
        } else {
            spinner.println(line);
        }
    };
    let report = drill::run(endpoints, region, options, |event| match event {
        Progress::Baseline(answer) => say(format!(
            "{} clients of {region} are answered with {} ({})",
            stamp(),
            answer.region,
            list(&answer.addresses)
        )),
        Progress::Loading { clients, rate } => say(format!(
            "{} {clients} clients of {region} fetching at {rate} requests/s",
            stamp()
        )),
        Progress::Drained { edges } => {
            say(format!("{} drained {}", stamp(), edges.join(", ")));
        }
        Progress::Killed { edges } => {
            say(format!("{} killed {}", stamp(), edges.join(", ")));
        }
        Progress::Partitioned { region } => {
            say(format!("{} cut {region} off the network", stamp()));
        }
        Progress::Healed { region } => {
            say(format!("{} reconnected {region}", stamp()));
        }
        Progress::Restarted { edges } => {
            say(format!("{} {} run again", stamp(), edges.join(", ")));
        }
        Progress::Warmed(warmed) => say(format!(
            "{} warmed {} URLs into the region ({} filled, {} already cached, {} failed)",
            stamp(),
            warmed.urls,
            warmed.filled,
            warmed.already_cached,
            warmed.failed
        )),
        Progress::Waiting { elapsed, answer } => spinner.set_message(format!(
            "waiting {:.1}s: still answered {} ({})",
            elapsed.as_secs_f64(),
            answer.region,
            list(&answer.addresses)
        )),
        Progress::FailedOver(leg) => say(format!(
            "{} failed over to {} after {} ms ({} answers while waiting)",
            stamp(),
            leg.region,
            leg.took.as_millis(),
            leg.answers
        )),
        Progress::Settled { answers, dead } => say(format!(
            "{} {answers} answers checked after failover: {dead} held a drained edge",
            stamp()
        )),
        Progress::Resumed => say(format!(
            "{} the region's edges are back in rotation",
            stamp()
        )),
        Progress::Recovered(leg) => say(format!(
            "{} clients are back on {} after {} ms",
            stamp(),
            leg.region,
            leg.took.as_millis()
        )),
    })
    .await;
    spinner.finish_and_clear();
    let report = report?;
    println!(
        "drill {}: failover {} ms (to {}), dead answers {} of {}, recovery {} ms",
        report.region,
        report.failover.took.as_millis(),
        report.failover.region,
        report.dead_answers,
        report.settled_answers,
        report.recovery.took.as_millis()
    );
    if let Some(window) = report.failure_window {
        println!(
            "clients saw failures for {} ms (answer TTL {} s)",
            window.as_millis(),
            report.ttl
        );
    }
    for phase in &report.phases {
        let c = &phase.clients;
        println!(
            "  {:<12} {:>6} requests {:>5} failed  p50 {:>7.1} ms  p99 {:>7.1} ms  hits {:>5.1}%  served by {}{}",
            phase.name,
            c.requests,
            c.failed(),
            c.p50_ms,
            c.p99_ms,
            c.hit_ratio * 100.0,
            c.served_by
                .iter()
                .map(|(region, n)| format!("{region} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            phase
                .origin_requests
                .map_or(String::new(), |n| format!("  origin {n}"))
        );
    }
    if let Some(path) = report_file {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
    }
    if report.dead_answers > 0 {
        anyhow::bail!("GeoDNS answered with a drained edge after failing over");
    }
    Ok(())
}

/// Runs warming with a progress bar.
pub async fn warm(
    endpoints: &Endpoints,
    source: &Source,
    to: &str,
    options: &WarmOptions,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} warming {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(to.to_owned());
    let report = warm::run(endpoints, source, to, options, |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.failed > 0 {
            bar.set_message(format!("{to} ({} failed)", p.failed));
        }
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "warmed {to}: {} URLs x {} edges = {} requests in {:.1}s: {} filled, {} already cached, {} failed, {} bytes",
        report.urls,
        endpoints.region(to).map_or(0, |r| r.edges.len()),
        report.requests,
        report.elapsed.as_secs_f64(),
        report.filled,
        report.already_cached,
        report.failed,
        report.bytes
    );
    for failure in &report.failures {
        println!("  failed: {failure}");
    }
    if report.failed > 0 {
        anyhow::bail!("{} warming requests failed", report.failed);
    }
    Ok(())
}

fn list(addresses: &[std::net::IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
