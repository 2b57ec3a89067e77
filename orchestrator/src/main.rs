use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use orchestrator::Config;
use orchestrator::cli::{self, Tool};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<ExitCode> {
    if cli::is_tool(std::env::args().nth(1).as_deref()) {
        return cli::main(Tool::parse());
    }
    if common::roles::asked() {
        tokio::runtime::Runtime::new()?.block_on(common::roles::provision_main(
            "orchestrator",
            orchestrator::SCHEMA,
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut config: Config = common::config::parse();
    // The environment's participants first: the flags override them.
    config
        .participants
        .splice(0..0, orchestrator::participant_urls_from_env());
    config
        .participant_keys
        .splice(0..0, orchestrator::participant_keys_from_env()?);
    serve(config)?;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    common::telemetry::init(config.common.log_format, "orchestrator");
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", config.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "orchestrator listening");
    let served = orchestrator::run(config, listener, async {
        common::shutdown::signal().await;
        orchestrator::StopMode::Graceful
    })
    .await;
    tokio::task::spawn_blocking(common::telemetry::shutdown).await?;
    served
}
