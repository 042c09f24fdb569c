//! A small, blocking S3 client for the few calls a store needs: GET, HEAD, PUT (with
//! checksums, `If-None-Match` and server-side encryption), DELETE, ListObjectsV2 and
//! multipart uploads. Requests are signed here ([`sigv4`]) and sent with `ureq`
//! (rustls on ring): walmgr's commands are short-lived processes that do one thing at a
//! time, so an async runtime and a general SDK would only add build weight.
//!
//! Error messages name the method, the object (`s3://bucket/key`) and the service's
//! code and message, on one line; credentials never appear in them, nor in `Debug`.

pub mod sigv4;
pub mod upload;

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;

/// `s3://bucket[/prefix]`: the bucket and the key prefix (no leading or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub bucket: String,
    pub prefix: String,
}

impl Url {
    /// `None` when `v` is not an `s3://` URL at all; `Some(Err)` when it is a bad one.
    pub fn parse(v: &str) -> Option<Result<Url, String>> {
        let rest = v.trim().strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !ok_bucket {
            return Some(Err(format!(
                "bucket {bucket:?}: 3 to 63 lower-case letters, digits, '-' or '.'"
            )));
        }
        // `%(slave)s/logs.complete` after a `slave = s3://b/p/` gives `p//logs.complete`:
        // empty parts are dropped.
        let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") || prefix.chars().any(|c| c.is_control()) {
            return Some(Err(format!(
                "key prefix {prefix:?}: no '.' or '..' parts, no control characters"
            )));
        }
        Some(Ok(Url {
            bucket: bucket.to_string(),
            prefix: parts.join("/"),
        }))
    }

    /// The key `rel` under this URL's prefix.
    pub fn key(&self, rel: &str) -> String {
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.prefix),
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages: "the ini", a file name, "the environment".
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ access_key_id: {:?}, secret: <hidden>, from: {} }}",
            self.access_key_id, self.source
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key` (MinIO, Ceph, moto and most self-hosted services).
    Path,
    /// `https://bucket.endpoint/key` (AWS's default).
    VirtualHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` of the service.
    pub host: String,
    pub region: String,
    pub addressing: Addressing,
    pub bucket: String,
    pub credentials: Credentials,
    pub sse: Option<Sse>,
    /// Send `If-None-Match: *` on writes that must not replace an object.
    pub conditional_put: bool,
    /// Per request (connect + send + receive).
    pub timeout: Duration,
    /// Extra attempts after a connection failure or a 5xx answer.
    pub retries: u32,
    /// PEM file of the CA(s) that sign the service's certificate, instead of the
    /// system store.
    pub ca_file: Option<std::path::PathBuf>,
    /// Bytes per part of a multipart upload (the first 2000; see [`upload`]).
    pub part_size: usize,
}

impl Config {
    /// `http[s]://host[:port]` (no path) → (scheme, host).
    pub fn parse_endpoint(v: &str) -> Result<(String, String), String> {
        let (scheme, rest) = v
            .trim()
            .split_once("://")
            .ok_or("expected http://host[:port] or https://host[:port]")?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme:?}: expected http or https"));
        }
        let host = rest.trim_end_matches('/');
        if host.is_empty()
            || host.contains(['/', '?', '#', '@', ' '])
            || host.starts_with(':')
            || host
                .rsplit_once(':')
                .is_some_and(|(_, p)| !host.ends_with(']') && p.parse::<u16>().is_err())
        {
            return Err("expected http[s]://host[:port] without a path".into());
        }
        Ok((scheme.to_string(), host.to_string()))
    }

    fn authority(&self) -> String {
        match self.addressing {
            Addressing::Path => self.host.clone(),
            Addressing::VirtualHost => format!("{}.{}", self.bucket, self.host),
        }
    }

    /// The encoded path of `key` (empty key: the bucket itself).
    fn path(&self, key: &str) -> String {
        let k = sigv4::uri_encode(key, true);
        match self.addressing {
            Addressing::Path if key.is_empty() => format!("/{}", self.bucket),
            Addressing::Path => format!("/{}/{k}", self.bucket),
            Addressing::VirtualHost => format!("/{k}"),
        }
    }
}

/// What can go wrong talking to the service; each variant prints one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error status.
    #[error("{method} {object}: {status} {code}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        method: &'static str,
        object: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused, timeout, TLS.
    #[error("{method} {object}: {endpoint}: {reason}")]
    Transport {
        method: &'static str,
        object: String,
        endpoint: String,
        reason: String,
    },
    /// An answer that does not make sense (unparsable listing, short body).
    #[error("{method} {object}: {reason}")]
    Protocol {
        method: &'static str,
        object: String,
        reason: String,
    },
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What HEAD (or a successful write) says about an object.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    /// `x-amz-checksum-sha256` (base64), when the service keeps it.
    pub checksum_sha256: Option<String>,
    /// `x-amz-meta-*`, names without the prefix.
    pub meta: Vec<(String, String)>,
    pub sse: Option<String>,
}

impl Head {
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// RFC 3339, as the service gives it.
    pub last_modified: String,
}

/// How a conditional write ended.
#[derive(Debug)]
pub enum Put {
    Written(Head),
    /// `If-None-Match: *` and the key exists: nothing was written.
    Exists,
}

/// Options of one PUT.
#[derive(Debug, Default)]
pub struct PutOptions<'a> {
    pub if_none_match: bool,
    /// `x-amz-meta-<name>: <value>` (ASCII).
    pub meta: &'a [(&'a str, &'a str)],
}

pub struct Client {
    cfg: Config,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("cfg", &self.cfg).finish()
    }
}

/// The certificates of a PEM file (at least one).
pub fn read_ca_file(f: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", f.display()));
    }
    Ok(certs)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `hex` sha256 → the base64 form `x-amz-checksum-sha256` carries.
pub fn sha256_hex_to_b64(hex: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 32).map(|b| b64(&b))
}

/// The md5 of `data`, hex (what a single-part ETag is on most services).
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    crate::digest::hex(&md5::Md5::digest(data))
}

fn md5_b64(data: &[u8]) -> String {
    use md5::Digest;
    b64(&md5::Md5::digest(data))
}

/// The text of `<tag>...</tag>` occurrences in a small XML document (S3's listings and
/// errors are flat enough for this; entities are decoded).
pub fn xml_values<'a>(doc: &'a str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest: &'a str = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(xml_unescape(&after[..j]));
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#13;", "\r")
        .replace("&#10;", "\n")
        .replace("&amp;", "&")
}

/// The blocks `<tag>...</tag>` (raw) of a document.
fn xml_blocks<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

type Response = ureq::http::Response<ureq::Body>;

impl Client {
    pub fn new(cfg: Config) -> Client {
        let mut tls = ureq::tls::TlsConfig::builder().unversioned_rustls_crypto_provider(
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        );
        if cfg.scheme == "https" {
            // The system's CA store (/etc/ssl/certs), as amqps:// uses, or `ca_file`.
            let certs: Vec<ureq::tls::Certificate<'static>> = match &cfg.ca_file {
                Some(f) => read_ca_file(f).unwrap_or_else(|e| {
                    log::warn!("{e}");
                    Vec::new()
                }),
                None => rustls_native_certs::load_native_certs()
                    .certs
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect(),
            };
            if certs.is_empty() {
                log::warn!(
                    "no CA certificates in the system store: https to the S3 service will fail"
                );
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .user_agent(concat!("hostkit-walmgr/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { cfg, agent }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn object(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    fn endpoint(&self) -> String {
        format!("{}://{}", self.cfg.scheme, self.cfg.authority())
    }

    /// Send one signed request; retried on a connection failure or a 5xx answer.
    fn send(
        &self,
        method: &'static str,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(String, String)],
        body: &[u8],
        body_sha256: Option<&str>,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            let r = self.send_once(method, key, query, extra, body, body_sha256);
            let transient = match &r {
                Err(Error::Transport { .. }) => true,
                Ok(resp) => resp.status().as_u16() >= 500,
                Err(_) => false,
            };
            if !transient || attempt >= self.cfg.retries {
                return r;
            }
            attempt += 1;
            let why = match &r {
                Err(e) => e.to_string(),
                Ok(resp) => format!("{method} {}: {}", self.object(key), resp.status()),
            };
            log::warn!("{why}; retrying ({attempt}/{})", self.cfg.retries);
            std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
        }
    }

    fn send_once(
        &self,
        method: &'static str,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(String, String)],
        body: &[u8],
        body_sha256: Option<&str>,
    ) -> Result<Response> {
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (sigv4::uri_encode(k, false), sigv4::uri_encode(v, false)))
            .collect();
        q.sort();
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = query.join("&");
        let path = self.cfg.path(key);
        let payload = match body_sha256 {
            Some(h) => h.to_string(),
            None if body.is_empty() => sigv4::EMPTY_SHA256.to_string(),
            None => crate::digest::sha256_hex(body),
        };
        let date = sigv4::amz_date(std::time::SystemTime::now());
        let mut headers = vec![
            ("host".to_string(), self.cfg.authority()),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), date.clone()),
        ];
        if let Some(t) = &self.cfg.credentials.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        headers.extend(extra.iter().cloned());
        let c = &self.cfg.credentials;
        let auth = sigv4::authorization(
            &sigv4::Request {
                method,
                path: &path,
                query: &query,
                headers: &headers,
                payload_sha256: &payload,
            },
            &c.access_key_id,
            &c.secret_access_key,
            &self.cfg.region,
            &date,
        );
        let url = if query.is_empty() {
            format!("{}{path}", self.endpoint())
        } else {
            format!("{}{path}?{query}", self.endpoint())
        };
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &headers {
            if k != "host" {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        b = b.header("authorization", auth);
        let transport = |e: ureq::Error| Error::Transport {
            method,
            object: self.object(key),
            endpoint: format!("{}://{}", self.cfg.scheme, self.cfg.host),
            reason: e.to_string(),
        };
        let r = match method {
            "PUT" | "POST" => {
                let req = b.body(body.to_vec()).map_err(|e| Error::Protocol {
                    method,
                    object: self.object(key),
                    reason: e.to_string(),
                })?;
                self.agent.run(req)
            }
            _ => {
                let req = b.body(()).map_err(|e| Error::Protocol {
                    method,
                    object: self.object(key),
                    reason: e.to_string(),
                })?;
                self.agent.run(req)
            }
        };
        r.map_err(transport)
    }

    /// The service's error answer as an [`Error::Status`].
    fn status_error(&self, method: &'static str, key: &str, mut resp: Response) -> Error {
        let status = resp.status().as_u16();
        let body = if method == "HEAD" {
            String::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_string()
                .unwrap_or_default()
        };
        let code = xml_values(&body, "Code")
            .into_iter()
            .next()
            .unwrap_or_else(|| {
                match status {
                    403 => "Forbidden (check the credentials)",
                    404 => "NotFound",
                    _ => "",
                }
                .to_string()
            });
        let message = xml_values(&body, "Message")
            .into_iter()
            .next()
            .unwrap_or_default();
        Error::Status {
            method,
            object: self.object(key),
            status,
            code,
            message: message.chars().filter(|c| !c.is_control()).collect(),
        }
    }

    fn head_of(resp: &Response) -> Head {
        let h = resp.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Head {
            size: get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            etag: get("etag").map(|e| e.trim_matches('"').to_string()),
            checksum_sha256: get("x-amz-checksum-sha256"),
            meta: h
                .iter()
                .filter_map(|(k, v)| {
                    let k = k.as_str().strip_prefix("x-amz-meta-")?;
                    Some((k.to_string(), v.to_str().ok()?.to_string()))
                })
                .collect(),
            sse: get("x-amz-server-side-encryption"),
        }
    }

    /// HEAD of `key`; `None` when it does not exist.
    pub fn head(&self, key: &str) -> Result<Option<Head>> {
        let extra = [("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
        let resp = self.send("HEAD", key, &[], &extra, &[], None)?;
        match resp.status().as_u16() {
            200 => Ok(Some(Self::head_of(&resp))),
            404 => Ok(None),
            _ => Err(self.status_error("HEAD", key, resp)),
        }
    }

    /// GET `key` as a stream; `None` when the key does not exist (a missing bucket is
    /// an error).
    pub fn get(&self, key: &str) -> Result<Option<(Head, Box<dyn Read + Send>)>> {
        let resp = self.send("GET", key, &[], &[], &[], None)?;
        match resp.status().as_u16() {
            200 => {
                let head = Self::head_of(&resp);
                Ok(Some((head, Box::new(resp.into_body().into_reader()))))
            }
            404 => {
                let e = self.status_error("GET", key, resp);
                if e.code() == Some("NoSuchKey") || e.code() == Some("NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
            _ => Err(self.status_error("GET", key, resp)),
        }
    }

    /// GET a small object whole (at most `limit` bytes).
    pub fn get_bytes(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some((_, mut r)) = self.get(key)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        r.by_ref()
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::Transport {
                method: "GET",
                object: self.object(key),
                endpoint: format!("{}://{}", self.cfg.scheme, self.cfg.host),
                reason: e.to_string(),
            })?;
        if out.len() as u64 > limit {
            return Err(Error::Protocol {
                method: "GET",
                object: self.object(key),
                reason: format!("larger than the {limit} bytes expected"),
            });
        }
        Ok(Some(out))
    }

    fn sse_headers(&self) -> Vec<(String, String)> {
        match &self.cfg.sse {
            None => vec![],
            Some(Sse::Aes256) => vec![("x-amz-server-side-encryption".into(), "AES256".into())],
            Some(Sse::Kms { key_id }) => {
                let mut v = vec![("x-amz-server-side-encryption".into(), "aws:kms".into())];
                if let Some(k) = key_id {
                    v.push((
                        "x-amz-server-side-encryption-aws-kms-key-id".into(),
                        k.clone(),
                    ));
                }
                v
            }
        }
    }

    /// PUT `body` under `key` with its md5 (`Content-MD5`) and sha256
    /// (`x-amz-checksum-sha256`): a service that checks either refuses a body damaged on
    /// the way. `sha256_hex` is the body's (the caller has it already).
    pub fn put(&self, key: &str, body: &[u8], sha256_hex: &str, opts: &PutOptions) -> Result<Put> {
        let mut extra = vec![
            ("content-md5".to_string(), md5_b64(body)),
            ("x-amz-sdk-checksum-algorithm".to_string(), "SHA256".into()),
        ];
        if let Some(c) = sha256_hex_to_b64(sha256_hex) {
            extra.push(("x-amz-checksum-sha256".to_string(), c));
        }
        if opts.if_none_match && self.cfg.conditional_put {
            extra.push(("if-none-match".to_string(), "*".to_string()));
        }
        for (k, v) in opts.meta {
            extra.push((format!("x-amz-meta-{k}"), v.to_string()));
        }
        extra.extend(self.sse_headers());
        let resp = self.send("PUT", key, &[], &extra, body, Some(sha256_hex))?;
        match resp.status().as_u16() {
            200 | 201 => Ok(Put::Written(Self::head_of(&resp))),
            // 409: some services answer a concurrent conditional write so.
            412 if opts.if_none_match => Ok(Put::Exists),
            409 if opts.if_none_match => Ok(Put::Exists),
            _ => Err(self.status_error("PUT", key, resp)),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let resp = self.send("DELETE", key, &[], &[], &[], None)?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error("DELETE", key, resp)),
        }
    }

    /// Every key under `prefix` (ListObjectsV2, all pages), in the service's order
    /// (UTF-8 binary order).
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t.as_str()));
            }
            let body = self.listing(prefix, &q, 64 << 20, "listing")?;
            for c in xml_blocks(&body, "Contents") {
                let key = xml_values(c, "Key").into_iter().next();
                let Some(key) = key else { continue };
                out.push(Entry {
                    key,
                    size: xml_values(c, "Size")
                        .first()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    last_modified: xml_values(c, "LastModified")
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                });
            }
            let truncated =
                xml_values(&body, "IsTruncated").first().map(String::as_str) == Some("true");
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if !truncated || token.is_none() {
                return Ok(out);
            }
        }
    }

    /// A listing document of the bucket (GET with `query`), at most `limit` bytes.
    fn listing(
        &self,
        prefix: &str,
        query: &[(&str, &str)],
        limit: u64,
        what: &str,
    ) -> Result<String> {
        let mut resp = self.send("GET", "", query, &[], &[], None)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error("GET", prefix, resp));
        }
        resp.body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| Error::Protocol {
                method: "GET",
                object: self.object(prefix),
                reason: format!("{what}: {e}"),
            })
    }

    /// Can we list the bucket? (Credentials right, bucket there.)
    pub fn check_bucket(&self, prefix: &str) -> Result<()> {
        let q = [("list-type", "2"), ("max-keys", "1"), ("prefix", prefix)];
        let resp = self.send("GET", "", &q, &[], &[], None)?;
        match resp.status().as_u16() {
            200 => Ok(()),
            _ => Err(self.status_error("GET", prefix, resp)),
        }
    }

    /// Start a multipart upload; returns its id.
    pub fn multipart_start(&self, key: &str) -> Result<String> {
        let extra = self.sse_headers();
        let mut resp = self.send("POST", key, &[("uploads", "")], &extra, &[], None)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error("POST", key, resp));
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        xml_values(&body, "UploadId")
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol {
                method: "POST",
                object: self.object(key),
                reason: "no UploadId in the answer".into(),
            })
    }

    /// Upload part `n` (1-based); returns its ETag.
    pub fn multipart_part(&self, key: &str, upload: &str, n: u32, body: &[u8]) -> Result<String> {
        let sha = crate::digest::sha256_hex(body);
        let mut extra = vec![("content-md5".to_string(), md5_b64(body))];
        if let Some(c) = sha256_hex_to_b64(&sha) {
            extra.push(("x-amz-checksum-sha256".to_string(), c));
        }
        let part = n.to_string();
        let q = [("partNumber", part.as_str()), ("uploadId", upload)];
        let resp = self.send("PUT", key, &q, &extra, body, Some(&sha))?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error("PUT", key, resp));
        }
        let etag = Self::head_of(&resp).etag.ok_or_else(|| Error::Protocol {
            method: "PUT",
            object: self.object(key),
            reason: format!("part {n}: no ETag in the answer"),
        })?;
        // A part's ETag is its md5 on every service that does not encrypt with KMS.
        if self.cfg.sse.is_none() && etag.len() == 32 && etag != md5_hex(body) {
            return Err(Error::Protocol {
                method: "PUT",
                object: self.object(key),
                reason: format!(
                    "part {n}: the service stored md5 {etag}, we sent {}",
                    md5_hex(body)
                ),
            });
        }
        Ok(etag)
    }

    pub fn multipart_complete(&self, key: &str, upload: &str, etags: &[String]) -> Result<Head> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, e) in etags.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>\"{e}\"</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let mut resp = self.send(
            "POST",
            key,
            &[("uploadId", upload)],
            &[],
            xml.as_bytes(),
            None,
        )?;
        let status = resp.status().as_u16();
        // The service may answer 200 and still report an error in the body.
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 || body.contains("<Error>") {
            return Err(Error::Status {
                method: "POST",
                object: self.object(key),
                status,
                code: xml_values(&body, "Code")
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                message: xml_values(&body, "Message")
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
            });
        }
        Ok(Head {
            etag: xml_values(&body, "ETag")
                .into_iter()
                .next()
                .map(|e| e.trim_matches('"').to_string()),
            ..Head::default()
        })
    }

    /// Uploads started under `prefix` and neither completed nor aborted: (key, upload
    /// id, initiated), first page (up to 1000) only.
    pub fn multipart_list(&self, prefix: &str) -> Result<Vec<(String, String, String)>> {
        let q = [("uploads", ""), ("prefix", prefix)];
        let body = self.listing(prefix, &q, 16 << 20, "upload listing")?;
        Ok(xml_blocks(&body, "Upload")
            .into_iter()
            .filter_map(|u| {
                let one = |t: &str| xml_values(u, t).into_iter().next();
                Some((
                    one("Key")?,
                    one("UploadId")?,
                    one("Initiated").unwrap_or_default(),
                ))
            })
            .collect())
    }

    pub fn multipart_abort(&self, key: &str, upload: &str) -> Result<()> {
        let resp = self.send("DELETE", key, &[("uploadId", upload)], &[], &[], None)?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error("DELETE", key, resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("s3://wal-bucket/pg/main/").unwrap().unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("wal-bucket", "pg/main")
        );
        assert_eq!(u.key("logs.complete"), "pg/main/logs.complete");
        assert_eq!(u.to_string(), "s3://wal-bucket/pg/main");
        assert_eq!(Url::parse("s3://b12/a//b/").unwrap().unwrap().prefix, "a/b");
        let u = Url::parse("s3://b12").unwrap().unwrap();
        assert_eq!(u.key("x"), "x");
        assert!(Url::parse("/var/lib/wal").is_none());
        assert!(Url::parse("host:/p").is_none());
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab",
            "s3://-ab/x",
            "s3://abc/a/../b",
            "s3://a_b/x",
        ] {
            assert!(Url::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Config::parse_endpoint("http://127.0.0.1:9000/").unwrap(),
            ("http".into(), "127.0.0.1:9000".into())
        );
        assert_eq!(
            Config::parse_endpoint("https://s3.eu-west-1.amazonaws.com")
                .unwrap()
                .1,
            "s3.eu-west-1.amazonaws.com"
        );
        for bad in [
            "127.0.0.1:9000",
            "ftp://h",
            "http://",
            "http://h/path",
            "http://h:port",
            "http://u@h",
        ] {
            assert!(Config::parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok-secret".into()),
            source: "the ini".into(),
        };
        let d = format!("{c:?}");
        assert!(
            d.contains("AKIDEXAMPLE") && !d.contains("secret-") && !d.contains("very"),
            "{d}"
        );
    }

    #[test]
    fn xml() {
        let doc = "<ListBucketResult><Contents><Key>a&amp;b</Key><Size>3</Size></Contents>\
                   <Contents><Key>c</Key></Contents><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(xml_values(doc, "Key"), ["a&b", "c"]);
        assert_eq!(xml_blocks(doc, "Contents").len(), 2);
        assert_eq!(
            sha256_hex_to_b64(crate::digest::sha256_hex(b"").as_str()).unwrap(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
