//! AMQPS (issue 11): the TLS listener beside the plain one, with lapin and pika; server
//! certificates a client must trust, client certificates the broker verifies, the EXTERNAL
//! mechanism logging in as the certificate's common name, certificates reloaded while the
//! broker runs, and peers that never finish a TLS handshake. And the management API over
//! HTTPS with the same certificate (issue 12).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bourse::config::{Credential, TlsSettings, UserSeed};
use bourse_tests::connection::lapin_connect;
use bourse_tests::python::{require_pika, run_pika_checks};
use bourse_tests::raw::{reply_code, within};
use bourse_tests::{TempDir, TestBroker, bounded};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// A certificate authority of a test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key (PEM): a server's for 127.0.0.1 and localhost, or a
    /// client's with common name `cn`.
    fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "bourse tests");
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of one test: the server's certificate and key, the CA of client certificates.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: TempDir::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// Writes the server's certificate and key as signed by `ca`.
    fn server(&self, ca: &Ca) {
        let (cert, key) = ca.leaf("bourse", true);
        self.write("server.pem", &cert);
        self.write("server.key", &key);
    }

    fn settings(&self, client_ca: Option<&Ca>, require_cert: bool) -> TlsSettings {
        TlsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            ca_file: client_ca.map(|ca| self.write("clients-ca.pem", &ca.pem())),
            verify_peer: client_ca.is_some(),
            fail_if_no_peer_cert: require_cert,
            reload_poll_ms: 0,
        }
    }
}

/// A broker with a TLS listener, guest and the users `alice`/`pw` and `bob`/`pw`.
async fn broker(settings: TlsSettings) -> TestBroker {
    TestBroker::start_with(|config| {
        config.tls = Some(settings);
        config.users = vec![
            UserSeed::clear("guest", "guest"),
            UserSeed::clear("alice", "pw"),
            UserSeed {
                name: "nopass".into(),
                credential: Credential::Hash {
                    hash: String::new(),
                    algorithm: "rabbit_password_hashing_sha256".into(),
                },
                tags: vec![],
            },
        ];
    })
    .await
}

fn tls_addr(broker: &TestBroker) -> SocketAddr {
    broker
        .handle()
        .expect("in-process broker")
        .tls_addr()
        .expect("a TLS listener")
}

fn amqps_url(broker: &TestBroker, credentials: &str, query: &str) -> String {
    format!(
        "amqps://{credentials}127.0.0.1:{}/%2f{query}",
        tls_addr(broker).port()
    )
}

/// Connects over TLS trusting `trust`, presenting `identity` (certificate, key) if any.
async fn connect_tls(
    url: &str,
    trust: &Ca,
    identity: Option<&(String, String)>,
) -> Result<Connection, lapin::Error> {
    let config = OwnedTLSConfig {
        identity: identity.map(|(cert, key)| OwnedIdentity::PKCS8 {
            pem: cert.clone().into_bytes(),
            key: key.clone().into_bytes(),
        }),
        cert_chain: Some(trust.pem()),
    };
    within(Connection::connect_with_config(
        url,
        ConnectionProperties::default(),
        config,
        lapin::runtime::default_runtime().expect("runtime"),
    ))
    .await
}

/// Declares a queue, publishes to it and gets the message back.
async fn round_trip(conn: &Connection, what: &str) {
    let ch = within(conn.create_channel()).await.expect("channel");
    let queue = within(ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    within(ch.basic_publish(
        "".into(),
        queue.name().as_str().into(),
        BasicPublishOptions::default(),
        what.as_bytes(),
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    let mut got = None;
    for _ in 0..100 {
        got = within(ch.basic_get(
            queue.name().as_str().into(),
            BasicGetOptions { no_ack: true },
        ))
        .await
        .expect("get");
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let message = got.unwrap_or_else(|| panic!("{what}: the message never arrived"));
    assert_eq!(message.delivery.data, what.as_bytes(), "{what}");
}

#[tokio::test]
async fn amqps_round_trip_beside_the_plain_listener() {
    bounded(LIMIT, async {
        let ca = Ca::new("server CA");
        let files = Files::new();
        files.server(&ca);
        let broker = broker(files.settings(None, false)).await;

        let conn = connect_tls(&amqps_url(&broker, "alice:pw@", ""), &ca, None)
            .await
            .expect("AMQPS with PLAIN");
        round_trip(&conn, "over TLS").await;
        let listed = broker.handle().unwrap().connections();
        let tls: Vec<_> = listed.iter().filter_map(|c| c.tls.clone()).collect();
        assert_eq!(tls.len(), 1, "one TLS connection listed: {listed:?}");
        assert!(
            tls[0].protocol == "tlsv1.3" || tls[0].protocol == "tlsv1.2",
            "{:?}",
            tls[0]
        );
        assert_eq!(tls[0].peer_cn, None, "no client certificate was sent");

        // The plain listener serves as before, and speaks no TLS.
        let plain = lapin_connect(broker.url()).await.expect("plain AMQP");
        round_trip(&plain, "over plain TCP").await;
        assert!(
            connect_tls(
                &format!("amqps://guest:guest@{}/%2f", broker.addr()),
                &ca,
                None
            )
            .await
            .is_err(),
            "the plain port answered a TLS client"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_certificate_fails() {
    bounded(LIMIT, async {
        let ca = Ca::new("server CA");
        let stranger = Ca::new("another CA");
        let files = Files::new();
        files.server(&ca);
        let broker = broker(files.settings(None, false)).await;
        let error = connect_tls(&amqps_url(&broker, "alice:pw@", ""), &stranger, None)
            .await
            .expect_err("a server certificate from an untrusted CA was accepted");
        assert_eq!(
            reply_code(&error),
            None,
            "a TLS failure, not an AMQP one: {error}"
        );
        // The listener still serves clients that trust it.
        let conn = connect_tls(&amqps_url(&broker, "alice:pw@", ""), &ca, None)
            .await
            .expect("AMQPS");
        round_trip(&conn, "after a refused client").await;
    })
    .await;
}

#[tokio::test]
async fn required_client_certificates_are_verified() {
    bounded(LIMIT, async {
        let ca = Ca::new("server CA");
        let clients = Ca::new("clients CA");
        let stranger = Ca::new("another CA");
        let files = Files::new();
        files.server(&ca);
        let broker = broker(files.settings(Some(&clients), true)).await;
        let url = amqps_url(&broker, "alice:pw@", "");

        assert!(
            connect_tls(&url, &ca, None).await.is_err(),
            "a client without a certificate was accepted"
        );
        let foreign = stranger.leaf("alice", false);
        assert!(
            connect_tls(&url, &ca, Some(&foreign)).await.is_err(),
            "a client certificate from an unknown CA was accepted"
        );
        let good = clients.leaf("alice", false);
        let conn = connect_tls(&url, &ca, Some(&good))
            .await
            .expect("a verified client certificate with PLAIN");
        round_trip(&conn, "with a client certificate").await;
        let listed = broker.handle().unwrap().connections();
        let tls = listed[0].tls.clone().expect("a TLS connection");
        assert_eq!(tls.peer_cn.as_deref(), Some("alice"));
        let subject = tls.peer_cert_subject.expect("a subject");
        assert!(subject.contains("CN=alice"), "{subject}");
    })
    .await;
}

#[tokio::test]
async fn external_logs_in_as_the_certificate_common_name() {
    bounded(LIMIT, async {
        let ca = Ca::new("server CA");
        let clients = Ca::new("clients CA");
        let files = Files::new();
        files.server(&ca);
        // Certificates optional: EXTERNAL is offered only to clients that sent one.
        let broker = broker(files.settings(Some(&clients), false)).await;
        let external = amqps_url(&broker, "", "?auth_mechanism=external");

        let alice = clients.leaf("alice", false);
        let conn = connect_tls(&external, &ca, Some(&alice))
            .await
            .expect("EXTERNAL as alice");
        round_trip(&conn, "logged in by certificate").await;
        let users: Vec<String> = broker
            .handle()
            .unwrap()
            .connections()
            .iter()
            .map(|c| c.user.clone())
            .collect();
        assert_eq!(users, ["alice"]);

        // A user without a password logs in only by certificate.
        let nopass = clients.leaf("nopass", false);
        let conn2 = connect_tls(&external, &ca, Some(&nopass))
            .await
            .expect("EXTERNAL as a user without a password");
        round_trip(&conn2, "passwordless user").await;

        let mallory = clients.leaf("mallory", false);
        let error = connect_tls(&external, &ca, Some(&mallory))
            .await
            .expect_err("a certificate naming no user logged in");
        assert_eq!(reply_code(&error), Some(403), "{error}");
        assert!(
            error.to_string().contains("EXTERNAL"),
            "the refusal names the mechanism: {error}"
        );

        // Without a certificate EXTERNAL is not offered, on TLS or plain TCP.
        assert!(
            connect_tls(&external, &ca, None).await.is_err(),
            "EXTERNAL without a client certificate logged in"
        );
        let plain = format!("amqp://{}/%2f?auth_mechanism=external", broker.addr());
        assert!(
            lapin_connect(&plain).await.is_err(),
            "EXTERNAL over plain TCP logged in"
        );
        // PLAIN still works over TLS with a certificate naming someone else.
        let conn3 = connect_tls(&amqps_url(&broker, "guest:guest@", ""), &ca, Some(&alice))
            .await
            .expect("PLAIN beside a certificate");
        round_trip(&conn3, "PLAIN with a certificate").await;
    })
    .await;
}

#[tokio::test]
async fn reload_serves_new_certificates_to_new_connections_only() {
    bounded(LIMIT, async {
        let old_ca = Ca::new("old CA");
        let new_ca = Ca::new("new CA");
        let files = Files::new();
        files.server(&old_ca);
        let broker = broker(files.settings(None, false)).await;
        let handle = broker.handle().unwrap();
        let url = amqps_url(&broker, "alice:pw@", "");
        let open = connect_tls(&url, &old_ca, None).await.expect("AMQPS");
        round_trip(&open, "before the reload").await;

        files.server(&new_ca);
        handle.reload_tls().expect("reload");
        assert!(
            connect_tls(&url, &old_ca, None).await.is_err(),
            "the old certificate is still served after a reload"
        );
        let fresh = connect_tls(&url, &new_ca, None)
            .await
            .expect("the new certificate");
        round_trip(&fresh, "after the reload").await;
        round_trip(&open, "an open connection keeps its session").await;

        // A broken file: the reload fails and the certificate in use stays.
        files.write("server.pem", "not a certificate");
        let error = handle.reload_tls().expect_err("a broken file reloaded");
        assert!(error.to_string().contains("server.pem"), "{error}");
        let still = connect_tls(&url, &new_ca, None)
            .await
            .expect("the last good certificate still serves");
        round_trip(&still, "after a failed reload").await;
    })
    .await;
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_call() {
    bounded(LIMIT, async {
        let old_ca = Ca::new("old CA");
        let new_ca = Ca::new("new CA");
        let files = Files::new();
        files.server(&old_ca);
        let mut settings = files.settings(None, false);
        settings.reload_poll_ms = 100;
        let broker = broker(settings).await;
        let url = amqps_url(&broker, "alice:pw@", "");
        connect_tls(&url, &old_ca, None).await.expect("AMQPS");
        // A different size as well as a later mtime, so coarse timestamps cannot hide it.
        files.server(&new_ca);
        let mut served_new = false;
        for _ in 0..50 {
            if connect_tls(&url, &new_ca, None).await.is_ok() {
                served_new = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served_new, "the watcher never loaded the new certificate");
    })
    .await;
}

#[tokio::test]
async fn bad_tls_files_stop_the_broker_from_starting() {
    bounded(LIMIT, async {
        let files = Files::new();
        files.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
        files.write("server.key", "nothing");
        let error = match bourse::Broker::start(bourse::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: files.path("data"),
            tls: Some(files.settings(None, false)),
            ..bourse::Config::default()
        })
        .await
        {
            Ok(_) => panic!("a broker started with a broken certificate"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("server.pem"), "{error}");

        // A certificate with a key that is not its own.
        let ca = Ca::new("CA");
        files.server(&ca);
        let (_, other_key) = ca.leaf("other", true);
        files.write("server.key", &other_key);
        let error = match bourse::Broker::start(bourse::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: files.path("data"),
            tls: Some(files.settings(None, false)),
            ..bourse::Config::default()
        })
        .await
        {
            Ok(_) => panic!("a broker started with a key that does not match"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("TLS"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn peers_that_never_finish_a_handshake_are_dropped() {
    bounded(LIMIT, async {
        let ca = Ca::new("server CA");
        let files = Files::new();
        files.server(&ca);
        let broker = broker(files.settings(None, false)).await;
        let addr = tls_addr(&broker);

        // Plain AMQP on the TLS port: not a ClientHello, the socket is closed.
        let mut garbage = tokio::net::TcpStream::connect(addr).await.expect("connect");
        garbage.write_all(b"AMQP\0\0\x09\x01").await.expect("write");
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match garbage.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {} // a TLS alert
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a non-TLS peer was not dropped");

        // A peer that connects and sends nothing holds only its own task: others log in
        // meanwhile, and it is dropped after the handshake timeout.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let conn = connect_tls(&amqps_url(&broker, "alice:pw@", ""), &ca, None)
            .await
            .expect("AMQPS beside a stalled peer");
        round_trip(&conn, "beside a stalled peer").await;
        let dropped = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut buf)).await;
        assert!(
            matches!(dropped, Ok(Ok(0)) | Ok(Err(_))),
            "a stalled TLS handshake was kept: {dropped:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn pika_over_tls_with_plain_and_external() {
    bounded(Duration::from_secs(120), async {
        require_pika().await;
        let ca = Ca::new("server CA");
        let stranger = Ca::new("another CA");
        let files = Files::new();
        // pika verifies the server name `localhost` against the certificate; the client CA
        // is the server's own here, so one CA file serves both directions.
        files.server(&ca);
        let broker = broker(files.settings(Some(&ca), false)).await;
        let (cert, key) = ca.leaf("alice", false);
        let client_cert = files.write("alice.pem", &cert);
        let client_key = files.write("alice.key", &key);
        let ca_file = files.write("ca.pem", &ca.pem());
        let other_ca = files.write("other-ca.pem", &stranger.pem());
        let port = tls_addr(&broker).port().to_string();
        let args: Vec<&std::ffi::OsStr> = vec![
            port.as_ref(),
            ca_file.as_os_str(),
            client_cert.as_os_str(),
            client_key.as_os_str(),
            "alice".as_ref(),
            "pw".as_ref(),
            other_ca.as_os_str(),
        ];
        run_pika_checks(
            "tls.py",
            &args,
            Duration::from_secs(60),
            "all pika TLS checks passed",
        )
        .await;
    })
    .await;
}

/// GET `path` over HTTPS trusting `trust`, with basic auth when `login` is given: the status
/// line and the body, or the connection's error.
async fn https_get(
    addr: SocketAddr,
    trust: &Ca,
    path: &str,
    login: Option<(&str, &str)>,
) -> std::io::Result<(String, String)> {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.pem().as_bytes()).expect("CA PEM"))
        .expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = within(connector.connect(name, tcp)).await?;
    let auth = login.map_or(String::new(), |(user, password)| {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Authorization: Basic {token}\r\n")
    });
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    within(tls.read_to_end(&mut response)).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

#[tokio::test]
async fn the_management_api_serves_https_with_the_amqps_certificate() {
    bounded(LIMIT, async {
        let ca = Ca::new("https CA");
        let files = Files::new();
        files.server(&ca);
        let settings = files.settings(None, false);
        let broker = TestBroker::start_with(|config| {
            config.tls = Some(settings);
            config.management_tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            let mut guest = UserSeed::clear("guest", "guest");
            guest.tags = vec!["administrator".into()];
            config.users = vec![guest];
        })
        .await;
        let addr = broker
            .handle()
            .unwrap()
            .management_tls_addr()
            .expect("an HTTPS listener");
        // A peer that never starts its handshake holds up no one.
        let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (status, body) = https_get(addr, &ca, "/api/whoami", Some(("guest", "guest")))
            .await
            .expect("HTTPS request");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let me: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(me["name"], "guest");
        let (status, body) = https_get(addr, &ca, "/api/overview", None).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        assert!(body.contains("not_authorised"), "{body}");
        let (status, body) = https_get(addr, &ca, "/", None).await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200") && body.contains("<html"),
            "{status}"
        );
        // A client that does not trust the certificate gets no session.
        let stranger = Ca::new("another CA");
        assert!(
            https_get(addr, &stranger, "/api/whoami", None)
                .await
                .is_err()
        );
    })
    .await;
}
