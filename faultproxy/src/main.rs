//! `faultproxy --listen 127.0.0.1:9081 --upstream http://127.0.0.1:8081
//! --lose-response-rate 0.2 --seed 42`: one fault proxy in front of one
//! participant.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "faultproxy", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Base URL of the participant behind the proxy.
    #[arg(long)]
    upstream: String,
    #[command(flatten)]
    faults: faultproxy::Faults,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::telemetry::init(common::telemetry::LogFormat::Text, env!("CARGO_PKG_NAME"));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let proxy = faultproxy::FaultProxy::start(listener, &args.upstream, args.faults)?;
    println!("fault proxy on {} -> {}", proxy.url, args.upstream);
    common::shutdown::signal().await;
    Ok(())
}
