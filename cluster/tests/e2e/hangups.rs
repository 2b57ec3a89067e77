//! A start never depends on its request: clients that hang up at once, or
//! whose timeout fires while the saga runs, leave their sagas driven at once
//! (they end within seconds), not left for recovery once the lease runs out.

use std::time::Duration;

use faultproxy::{Hold, HoldAt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::Env;

/// Far below the 30 s lease, after which recovery would resume a saga
/// nobody drives.
const WITHIN: Duration = Duration::from_secs(5);

async fn unfinished(env: &Env) -> i64 {
    env.count("SELECT count(*) FROM orchestrator.sagas WHERE status IN ('running', 'compensating')")
        .await
}

#[tokio::test]
async fn fifty_clients_that_hang_up_at_once_leave_no_saga_waiting() {
    let env = Env::start().await;
    let addr = env
        .cluster
        .orchestrator_url
        .trim_start_matches("http://")
        .to_owned();
    let sends = (0..50).map(|i| {
        let addr = addr.clone();
        async move {
            let mut stream = TcpStream::connect(&addr).await.expect("connect");
            let request = format!(
                "GET /trip?tripID=hangup-{i}&runType=failPayment HTTP/1.1\r\nhost: test\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("send");
            // Closed without reading a byte of the answer.
        }
    });
    futures::future::join_all(sends).await;
    testkit::eventually("every saga created to end", WITHIN, || async {
        let created = env.count("SELECT count(*) FROM orchestrator.sagas").await;
        (created > 0 && unfinished(&env).await == 0).then_some(())
    })
    .await;
    env.finish_clean().await;
}

#[tokio::test]
async fn a_client_whose_timeout_fires_while_its_saga_runs_leaves_it_driven() {
    let (env, proxies) = Env::start_proxied(|_| {}).await;
    proxies.payments.hold(Hold {
        path: "/payments".into(),
        at: HoldAt::Request,
        count: 1,
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = client
        .get(format!(
            "{}/trip?tripID=impatient",
            env.cluster.orchestrator_url
        ))
        .send()
        .await;
    assert!(
        gone.is_err_and(|err| err.is_timeout()),
        "the client gave up"
    );
    proxies.payments.release();
    let saga = testkit::eventually("the saga to end", WITHIN, || async {
        let answer = env.get("/trips/impatient").await;
        (answer.body["status"] == "succeeded").then_some(answer.body)
    })
    .await;
    assert_eq!(saga["steps"].as_array().unwrap().len(), 5, "{saga}");
    env.finish_clean().await;
}
