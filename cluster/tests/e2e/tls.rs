//! TLS on the orchestrator's way out: an https participant URL is called
//! over TLS, its certificate checked (against `PARTICIPANT_CA_FILE` for a
//! private CA); and a database URL's `sslmode` is honoured.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::{Env, step};

/// A private CA, and a certificate for `localhost` it signed.
struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "saga tests CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A TLS front on 127.0.0.1, port 0: each connection's TLS is ended here
/// and its bytes go to `upstream` (`host:port`, once set). Answers its
/// port and the number of handshakes completed.
async fn tls_front(pki: &Pki, upstream: Arc<OnceLock<String>>) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream, counted) = (
                acceptor.clone(),
                Arc::clone(&upstream),
                Arc::clone(&counted),
            );
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Some(upstream) = upstream.get() else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, handshakes)
}

#[tokio::test]
async fn an_https_participant_is_called_over_tls_and_an_untrusted_certificate_fails_the_step() {
    let pki = pki();
    let ca_file = std::env::temp_dir().join(format!("saga-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let upstream = Arc::new(OnceLock::new());
    let (port, handshakes) = tls_front(&pki, Arc::clone(&upstream)).await;
    let https = format!("https://localhost:{port}");

    let (front, trusted) = (https.clone(), ca_file.clone());
    let mut env = Env::start_with(&[], move |config| {
        let plain = config.flights_url.trim_start_matches("http://");
        upstream.set(plain.to_owned()).unwrap();
        config.flights_url = front;
        config.participant_ca_file = Some(trusted);
    })
    .await;
    let answer = env.get("/trip?runType=success&tripID=tls-1&wait=20").await;
    assert_eq!(answer.body["status"], "succeeded", "{}", answer.body);
    assert_eq!(env.rows("tls-1").await[0].as_deref(), Some("confirmed"));
    assert!(
        handshakes.load(Ordering::SeqCst) >= 1,
        "flights was called through the TLS front"
    );

    // Without the CA file the same certificate is not trusted: no call
    // reaches flights, each attempt's error says why, and the saga goes on
    // by its rules (the reservation's cancel is tried, as a call that may
    // have reached it must be undone).
    let before = handshakes.load(Ordering::SeqCst);
    let untrusting = env
        .spawn_orchestrator(move |config| config.flights_url = https)
        .await;
    env.get_at(&untrusting, "/trip?runType=success&tripID=tls-2&wait=0")
        .await;
    let saga = env
        .saga_when(
            "tls-2",
            "the reservation failed and its cancel was tried",
            |saga| {
                step(saga, "ReserveFlight").is_some_and(|s| s["status"] == "failed")
                    && step(saga, "CancelFlightReservation")
                        .is_some_and(|s| s["attempts"].as_i64() > Some(1))
            },
        )
        .await;
    for name in ["ReserveFlight", "CancelFlightReservation"] {
        let error = &step(&saga, name).unwrap()["last_error"];
        assert_eq!(error["error"], "connection failed", "{saga}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid peer certificate")),
            "{saga}"
        );
    }
    assert_eq!(env.rows("tls-2").await, [None, None, None]);
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        before,
        "no TLS session was set up"
    );
    std::fs::remove_file(&ca_file).ok();
    env.finish().await;
}

/// The test database's URL with `sslmode` set.
fn with_sslmode(url: &str, mode: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.query_pairs_mut().append_pair("sslmode", mode);
    url.to_string()
}

#[tokio::test]
async fn a_database_url_that_requires_tls_gets_a_tls_connection_and_one_that_verifies_checks_the_certificate()
 {
    // PostgreSQL here serves TLS with a certificate no public root signed
    // (Debian's snakeoil one): `require` encrypts without checking it,
    // `verify-full` checks it and refuses.
    let db = testkit::TestDb::new().await;
    let pool = common::db::connect(
        &with_sslmode(db.url(), "require"),
        "orchestrator",
        Default::default(),
    )
    .await
    .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "sslmode=require connected without TLS");
    pool.close().await;

    let refused = PgConnectOptions::from_str(&with_sslmode(db.url(), "verify-full"))
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.to_lowercase().contains("certificate"),
        "verify-full was not refused for the certificate: {refused}"
    );
}
