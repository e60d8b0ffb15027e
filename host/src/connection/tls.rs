//! AMQPS: the TLS side of the second listener (rustls, ring provider, TLS 1.2 and 1.3 only).
//!
//! [`TlsServer`] holds the server configuration built from the PEM files named in
//! [`TlsSettings`]; each accepted socket takes the configuration current at that moment, so
//! [`TlsServer::reload`] (called by the file watcher or by the operator) affects only later
//! connections. A file that no longer parses leaves the old configuration serving.
//!
//! With `verify_peer`, clients are asked for a certificate signed by a CA of `ca_file`; the
//! subject's common name of a verified certificate is the user name of the EXTERNAL mechanism.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, crypto::CryptoProvider};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use crate::config::TlsSettings;

/// A client must finish the TLS handshake within this time; a peer that stalls holds only its
/// own task, and only this long.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// What a TLS connection negotiated, for the connection list and the EXTERNAL mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// RabbitMQ's `ssl_protocol` spelling: `tlsv1.2` or `tlsv1.3`.
    pub protocol: &'static str,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The verified client certificate's subject (`CN=alice, O=...`), if one was presented.
    pub peer_cert_subject: Option<String>,
    /// The common name of that subject: the EXTERNAL user name.
    pub peer_cn: Option<String>,
}

/// The TLS listener's server configuration, swappable while the broker runs.
pub struct TlsServer {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' (modified time, length) when `current` was built, or when a reload last
    /// failed: the watcher reloads when they change.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl TlsServer {
    /// Builds the configuration from the settings' files.
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = stamps(&settings);
        let config = build(&settings, &provider)?;
        Ok(Arc::new(Self {
            settings,
            provider,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Re-reads the certificate, key and CA files and serves new connections with them. On
    /// an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.settings);
        let result = build(&self.settings, &self.provider);
        // Remembered either way: the watcher retries only when the files change again.
        *self.stamps.lock() = stamps;
        let config = result?;
        *self.current.write() = Arc::new(config);
        info!(cert = %self.settings.cert_file.display(), "TLS certificates reloaded");
        Ok(())
    }

    /// Reloads every `interval` when a file's modification time or length changed, until
    /// `self` is only held by the task (the broker is gone).
    pub(crate) fn watch(self: &Arc<Self>, interval: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(server) = weak.upgrade() else { return };
                let now = stamps(&server.settings);
                if *server.stamps.lock() == now {
                    continue;
                }
                if let Err(error) = server.reload() {
                    warn!(%error, "TLS certificates changed but cannot be loaded; the previous ones stay in use");
                }
            }
        });
    }

    /// Runs the TLS handshake on an accepted socket, bounded by [`TLS_HANDSHAKE_TIMEOUT`].
    pub(crate) async fn accept(
        &self,
        socket: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), String> {
        let acceptor = TlsAcceptor::from(self.current.read().clone());
        let stream =
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => return Err("TLS handshake timed out".to_owned()),
            };
        let info = describe(stream.get_ref().1);
        Ok((stream, info))
    }
}

/// The (modified time, length) of each file the configuration reads.
fn stamps(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in the file".to_owned(),
        });
    }
    Ok(certs)
}

fn build(settings: &TlsSettings, provider: &Arc<CryptoProvider>) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&settings.cert_file)?;
    let key_pem = read(&settings.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: settings.key_file.clone(),
        what: format!("no usable private key ({e})"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if settings.verify_peer {
        let ca_file = settings.ca_file.as_ref().ok_or_else(|| {
            TlsError::Config(
                "tls_verify_peer needs tls_ca_file (the CAs of client certificates)".to_owned(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(ca_file)? {
            roots.add(ca).map_err(|e| TlsError::Pem {
                path: ca_file.clone(),
                what: format!("not a usable CA certificate ({e})"),
            })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if settings.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        )
    } else {
        builder.with_no_client_auth()
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// What the handshake settled; the client certificate was verified by rustls if present.
fn describe(connection: &ServerConnection) -> TlsInfo {
    let protocol = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
        _ => "tlsv1.3",
    };
    let cipher = connection
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .unwrap_or("unknown")
        .to_owned();
    let subject = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned);
            (cert.subject().to_string(), cn)
        });
    let (peer_cert_subject, peer_cn) = match subject {
        Some((subject, cn)) => (Some(subject), cn),
        None => (None, None),
    };
    TlsInfo {
        protocol,
        cipher,
        peer_cert_subject,
        peer_cn,
    }
}
