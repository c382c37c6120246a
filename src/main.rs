//! `cdn`: one binary, a subcommand per component.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use cdn::demo_origin::DemoOrigin;
use cdn::up::{DEFAULT_CONFIG, DEFAULT_ORIGIN, Up};
use clap::{Parser, Subcommand};
use edge::{EdgeConfig, EdgeServer};
use geodns::{GeoDnsConfig, GeoDnsServer};
use origin_shield::ShieldServer;
use purge_api::{PurgeApiConfig, PurgeApiServer};

#[derive(Debug, Parser)]
#[command(name = "cdn", version, about = "A multi-region edge cache and CDN")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole local CDN (demo origin + edge) from the embedded default config.
    Up {
        /// Edge config to use instead of the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the demo origin listens (the default config's sites point here).
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        origin: SocketAddr,
    },
    /// Run one edge cache node.
    Edge {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one origin shield node (the mid tier: its sites fetch from origin pools).
    Shield {
        /// TOML config file, in the edge's format (see README.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the authoritative GeoDNS server (reloads its config on SIGHUP or file change).
    Geodns {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the publishers' purge API (durable log, fan-out to every node).
    PurgeApi {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the demo origin alone.
    Origin {
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Up { config, origin } => {
            let config = match config {
                Some(path) => EdgeConfig::from_file(&path)?,
                None => EdgeConfig::from_toml(DEFAULT_CONFIG)
                    .context("the embedded default config is invalid")?,
            };
            let up = Up::start(config, origin).await?;
            println!("{}", up.banner());
            shutdown_signal().await;
            up.shutdown().await;
        }
        Command::Edge { config } => {
            let config = EdgeConfig::from_file(&config)?;
            let server = EdgeServer::start(config).await?;
            shutdown_signal().await;
            server.shutdown().await;
        }
        Command::Shield { config } => {
            let config = EdgeConfig::from_file(&config)?;
            let server = ShieldServer::start(config).await?;
            shutdown_signal().await;
            server.shutdown().await;
        }
        Command::Geodns { config: path } => {
            let config = GeoDnsConfig::from_file(&path)?;
            let server = GeoDnsServer::start(config, Some(path)).await?;
            println!(
                "geodns answering on {} (UDP and TCP), admin on http://{}",
                server.dns_addr(),
                server.admin_addr()
            );
            shutdown_signal().await;
            server.shutdown().await;
        }
        Command::PurgeApi { config } => {
            let config = PurgeApiConfig::from_file(&config)?;
            let server = PurgeApiServer::start(config).await?;
            println!("purge API on http://{}", server.addr());
            shutdown_signal().await;
            server.shutdown().await;
        }
        Command::Origin { listen } => {
            let origin = DemoOrigin::start(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("demo origin on http://{}", origin.addr());
            shutdown_signal().await;
            origin.shutdown().await;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
