//! The HTTP side: one blocking ureq agent speaking to the management API as one user (basic
//! auth), over plain HTTP or HTTPS (the webpki roots, or `--ca-file`'s; `--insecure` skips the
//! check). Every non-2xx answer becomes [`Error::Api`] with RabbitMQ's `{"error", "reason"}`;
//! a request that never got an answer becomes [`Error::Unreachable`] naming the URL.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use ureq::http::{Method, Request, StatusCode};
use ureq::tls::{PemItem, RootCerts, TlsConfig};
use ureq::{Agent, AsSendBody, SendBody};

/// The largest answer read (a definitions export is at most 64 MiB).
const ANSWER_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// How long opening the TCP (and TLS) connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a path segment keeps as is: letters, digits and `-._~`; everything else (`/` in the
/// default vhost's name above all) is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `name` percent-encoded for one path segment: `/` is `%2F`; `.` and `..` are escaped too,
/// so that nothing on the way takes them for a relative path.
pub fn seg(name: &str) -> String {
    if name == "." || name == ".." {
        return name.replace('.', "%2E");
    }
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error status.
    #[error("{method} {path}: {status}{error}: {reason}", error = error_suffix(.error))]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        /// RabbitMQ's `error` (e.g. `not_authorised`), empty when the body had none.
        error: String,
        /// RabbitMQ's `reason`, or the body's text when it was not RabbitMQ's JSON.
        reason: String,
    },
    /// No answer: refused, unresolvable, a TLS failure, a timeout (the source follows in
    /// the chain `main` prints).
    #[error("cannot reach {url}")]
    Unreachable { url: String, source: ureq::Error },
    /// The answer was not what the API sends.
    #[error("{method} {path}: {why}")]
    BadAnswer {
        method: Method,
        path: String,
        why: String,
    },
    /// A setting that cannot be used (the CA file).
    #[error("{0}")]
    Setup(String),
}

fn error_suffix(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(" ({error})")
    }
}

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:port` or `https://...`, maybe with a path prefix.
    pub url: String,
    pub user: String,
    pub password: String,
    /// PEM file of the CA certificates to trust instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// How long the server may stay silent while answering.
    pub timeout: Duration,
}

/// A 2xx answer: its status and its body as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
}

/// The management API of one broker, as one user.
pub struct Client {
    agent: Agent,
    base: String,
    authorization: String,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let mut tls = TlsConfig::builder().disable_verification(settings.insecure);
        if let Some(path) = &settings.ca_file {
            tls = tls.root_certs(read_ca_file(path)?);
        }
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(settings.timeout))
            .timeout_per_write(Some(settings.timeout))
            .user_agent(concat!("bourse-ctl/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", settings.user, settings.password));
        Ok(Self {
            agent: config.new_agent(),
            base: settings.url.trim_end_matches('/').to_owned(),
            authorization: format!("Basic {token}"),
        })
    }

    /// GET `path`, its JSON.
    pub fn get(&self, path: &str) -> Result<Value, Error> {
        self.json(Method::GET, path, &[], SendBody::none())
            .map(|r| r.json)
    }

    /// GET `path`, its raw bytes (a definitions export, written as the broker sent it).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.send(Method::GET, path, &[], SendBody::none())
            .map(|(_, bytes)| bytes)
    }

    /// PUT `path` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Result<Reply, Error> {
        self.send_json(Method::PUT, path, body)
    }

    /// POST `path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Reply, Error> {
        self.send_json(Method::POST, path, body)
    }

    /// POST `path` without a body.
    pub fn post_empty(&self, path: &str) -> Result<Reply, Error> {
        self.json(
            Method::POST,
            path,
            &[("content-length", "0")],
            SendBody::none(),
        )
    }

    /// POST `path` with `body` of `length` bytes read from `reader` as it is sent.
    pub fn post_stream(
        &self,
        path: &str,
        content_type: &str,
        length: u64,
        reader: impl Read + 'static,
    ) -> Result<Reply, Error> {
        self.stream(Method::POST, path, content_type, length, reader)
    }

    /// PUT `path` with `body` of `length` bytes read from `reader` as it is sent.
    pub fn put_stream(
        &self,
        path: &str,
        content_type: &str,
        length: u64,
        reader: impl Read + 'static,
    ) -> Result<Reply, Error> {
        self.stream(Method::PUT, path, content_type, length, reader)
    }

    fn stream(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        length: u64,
        reader: impl Read + 'static,
    ) -> Result<Reply, Error> {
        let length = length.to_string();
        let headers = [("content-type", content_type), ("content-length", &length)];
        self.json(method, path, &headers, SendBody::from_owned_reader(reader))
    }

    /// DELETE `path` with extra headers (`X-Reason`).
    pub fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, Error> {
        self.json(Method::DELETE, path, headers, SendBody::none())
    }

    fn send_json(&self, method: Method, path: &str, body: &Value) -> Result<Reply, Error> {
        let bytes = body.to_string().into_bytes();
        let headers = [("content-type", "application/json")];
        self.json(method, path, &headers, bytes)
    }

    fn json(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsSendBody,
    ) -> Result<Reply, Error> {
        let (status, bytes) = self.send(method.clone(), path, headers, body)?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::BadAnswer {
                method,
                path: path.to_owned(),
                why: format!("the answer is not JSON: {e}"),
            })?
        };
        Ok(Reply { status, json })
    }

    /// Sends one request; a 2xx status with the body, or the error.
    fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsSendBody,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(|e| Error::BadAnswer {
            method: method.clone(),
            path: path.to_owned(),
            why: format!("cannot build the request: {e}"),
        })?;
        let unreachable = |source| Error::Unreachable {
            url: url.clone(),
            source,
        };
        let mut response = self.agent.run(request).map_err(unreachable)?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(ANSWER_MAX_BYTES)
            .read_to_vec()
            .map_err(unreachable)?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        let (error, reason) = rabbit_error(&bytes);
        Err(Error::Api {
            method,
            path: path.to_owned(),
            status,
            error,
            reason,
        })
    }
}

/// RabbitMQ's `{"error", "reason"}`, or the body's text (cut short) when it is something else.
fn rabbit_error(bytes: &[u8]) -> (String, String) {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) if map.contains_key("reason") || map.contains_key("error") => {
            let error = map.get("error").map(text).unwrap_or_default();
            let reason = map.get("reason").map(text).unwrap_or_default();
            (error, reason)
        }
        _ => {
            let body = String::from_utf8_lossy(bytes);
            let body: String = body.trim().chars().take(500).collect();
            let reason = if body.is_empty() {
                "(no reason given)".to_owned()
            } else {
                body
            };
            (String::new(), reason)
        }
    }
}

/// The certificates of a PEM file, as the only roots to trust.
fn read_ca_file(path: &PathBuf) -> Result<RootCerts, Error> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Setup(format!("cannot read the CA file {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Setup(format!(
                    "the CA file {} is not PEM: {e}",
                    path.display()
                )));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::Setup(format!(
            "the CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_escape_slashes_and_dot_segments() {
        assert_eq!(seg("/"), "%2F");
        assert_eq!(seg("amq.direct"), "amq.direct");
        assert_eq!(seg(".."), "%2E%2E");
        assert_eq!(seg("a b-c_d~"), "a%20b-c_d~");
        assert_eq!(seg("1.2:5 -> x"), "1.2%3A5%20-%3E%20x");
        assert_eq!(seg("é"), "%C3%A9");
    }

    #[test]
    fn errors_show_rabbitmqs_reason() {
        let (error, reason) =
            rabbit_error(br#"{"error":"not_authorised","reason":"Login failed"}"#);
        assert_eq!(
            (error.as_str(), reason.as_str()),
            ("not_authorised", "Login failed")
        );
        let (error, reason) = rabbit_error(b"");
        assert_eq!((error.as_str(), reason.as_str()), ("", "(no reason given)"));
    }
}
