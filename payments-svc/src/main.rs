use anyhow::Context;

use payments_svc::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if common::roles::asked() {
        return common::roles::provision_main("payments-svc", payments_svc::SCHEMA).await;
    }
    let config: Config = common::config::parse();
    common::telemetry::init(config.common.log_format, "payments-svc");
    let listener = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", config.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "payments-svc listening");
    let served = payments_svc::run(config, listener, common::shutdown::signal()).await;
    tokio::task::spawn_blocking(common::telemetry::shutdown).await?;
    served
}
