//! A small client of the management HTTP API for tests: hyper's own client (what axum is
//! built on), basic auth, JSON in and out.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The API of one broker, as one user.
#[derive(Clone)]
pub struct Api {
    base: String,
    credentials: Option<(String, String)>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response: its status, the `WWW-Authenticate` header, the body as JSON (Null if empty).
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// `WWW-Authenticate`, if sent.
    pub authenticate: Option<String>,
    /// The body.
    pub json: Value,
}

impl Api {
    /// The API at `addr`, as `user` with `password`.
    pub fn new(addr: SocketAddr, user: &str, password: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            credentials: Some((user.to_owned(), password.to_owned())),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The same API without credentials.
    pub fn anonymous(addr: SocketAddr) -> Self {
        Self {
            credentials: None,
            ..Self::new(addr, "", "")
        }
    }

    /// The same API as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            base: self.base.clone(),
            credentials: Some((user.to_owned(), password.to_owned())),
            client: self.client.clone(),
        }
    }

    /// Sends `method path` with `body` (raw bytes) and reads the reply.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Reply {
        self.raw_with(method, path, body, &[]).await
    }

    /// Like [`raw`](Self::raw), with extra headers.
    pub async fn raw_with(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((user, password)) = &self.credentials {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header("authorization", format!("Basic {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let (status, headers, bytes) = self.send(path, request).await;
        let authenticate = header(&headers, "www-authenticate");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            authenticate,
            json,
        }
    }

    /// Sends a request and reads the whole reply, bounded by [`REQUEST_TIMEOUT`].
    async fn send(
        &self,
        path: &str,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} within {REQUEST_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, bytes)
    }

    /// GET `path` as text (the Prometheus endpoint), with its status and content type.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, headers, bytes) = self.send(path, request).await;
        let kind = header(&headers, "content-type").unwrap_or_default();
        (status, kind, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The API's base URL, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, Vec::new()).await
    }

    /// PUT `path` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::PUT, path, body.to_string().into_bytes())
            .await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.raw(Method::DELETE, path, Vec::new()).await
    }

    /// POST `path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::POST, path, body.to_string().into_bytes())
            .await
    }

    /// GETs `path` every 100 ms until `check` accepts the JSON, for up to `limit`; the last
    /// JSON read either way, and whether it was accepted.
    pub async fn get_until(
        &self,
        path: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> (bool, Value) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let reply = self.get(path).await;
            if reply.status == StatusCode::OK && check(&reply.json) {
                return (true, reply.json);
            }
            if tokio::time::Instant::now() >= deadline {
                return (false, reply.json);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `text` percent-encoded for a path segment (everything but ASCII letters and digits).
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn header(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A broker with its API on an ephemeral port; users guest (administrator), `tagless`,
/// `watcher` (monitoring) and `manager` (management), all with password `pw` but guest.
pub async fn api_broker() -> (crate::TestBroker, Api) {
    api_broker_with(|_| {}).await
}

/// [`api_broker`] with more configuration.
pub async fn api_broker_with(adjust: impl FnOnce(&mut bourse::Config)) -> (crate::TestBroker, Api) {
    use bourse::config::UserSeed;
    let broker = crate::TestBroker::start_with(|cfg| {
        cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
        let mut guest = UserSeed::clear("guest", "guest");
        guest.tags = vec!["administrator".into()];
        let mut watcher = UserSeed::clear("watcher", "pw");
        watcher.tags = vec!["monitoring".into()];
        let mut manager = UserSeed::clear("manager", "pw");
        manager.tags = vec!["management".into()];
        cfg.users = vec![guest, UserSeed::clear("tagless", "pw"), watcher, manager];
        adjust(cfg);
    })
    .await;
    let addr = broker
        .handle()
        .expect("in-process broker")
        .management_addr()
        .expect("a management listener");
    (broker, Api::new(addr, "guest", "guest"))
}
