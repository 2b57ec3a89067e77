use anyhow::Context;
use clap::Parser;

use orchestrator::Config;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    common::telemetry::init(config.common.log_format);
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", config.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "orchestrator listening");
    orchestrator::run(config, listener, async {
        common::shutdown::signal().await;
        orchestrator::StopMode::Graceful
    })
    .await
}
