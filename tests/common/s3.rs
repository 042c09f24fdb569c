//! A real S3 service on loopback for walmgr's object-storage tests: moto's standalone
//! server (PyPI `moto[server]`, installed by tests/setup-host.sh; Debian's only S3
//! server is Ceph's radosgw, which needs a whole one-node cluster).
//!
//! [`Moto::start_authenticated`] turns authentication on: moto's IAM gets a user, an S3
//! policy and an access key in its first requests, after which every request must carry
//! a valid SigV4 signature by that key. [`Moto::start`] leaves it off, because moto 5.2
//! checks the signature of a query string holding a `/` (every listing of a store
//! under a prefix) against the URL as its web framework decoded it, and so refuses
//! correctly signed listings (boto3's own included).
//!
//! [`FaultProxy`] sits between walmgr and the service when a test needs the network to
//! fail: it cuts connections in the middle of an upload, refuses them, or answers one
//! request with a 503 itself; every other byte goes to the real service.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pg::free_port;
use super::wait_for;

/// moto's server: on PATH, or in the venv tests/setup-host.sh makes.
fn moto_bin() -> PathBuf {
    for p in std::env::var("PATH").unwrap_or_default().split(':') {
        let c = Path::new(p).join("moto_server");
        if c.is_file() {
            return c;
        }
    }
    let venv = PathBuf::from("/opt/hostkit-test/moto/bin/moto_server");
    assert!(
        venv.is_file(),
        "moto_server not found (on PATH or {}): run tests/setup-host.sh",
        venv.display()
    );
    venv
}

pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    pub log: PathBuf,
}

/// An unsigned request to moto's IAM (only while authentication is still off): moto
/// finds the service from the credential scope.
fn iam(port: u16, params: &[(&str, &str)]) -> String {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", hostkit::s3::sigv4::uri_encode(v, false)))
        .collect();
    let body = body.join("&") + "&Version=2010-05-08";
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("http://127.0.0.1:{port}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDSETUP/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .send(body.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "moto IAM {params:?}: {text}");
    text
}

impl Moto {
    /// A fresh server (in memory) on a free port with bucket `bucket`; any key works.
    pub fn start(dir: &Path, bucket: &str) -> Moto {
        Moto::launch(dir, bucket, false, None)
    }

    /// The same over https with `cert`/`key` (PEM), signed by the CA in `ca`.
    pub fn start_tls(dir: &Path, bucket: &str, cert: &Path, key: &Path, ca: &Path) -> Moto {
        Moto::launch(dir, bucket, false, Some((cert, key, ca)))
    }

    /// The same with authentication on, and a key allowed everything in S3.
    pub fn start_authenticated(dir: &Path, bucket: &str) -> Moto {
        Moto::launch(dir, bucket, true, None)
    }

    fn launch(dir: &Path, bucket: &str, auth: bool, tls: Option<(&Path, &Path, &Path)>) -> Moto {
        let port = free_port();
        let log = dir.join(format!("moto-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(moto_bin());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key, _)) = tls {
            cmd.arg("-c").arg(cert).arg("-k").arg(key);
        }
        if auth {
            // The three IAM calls below go unauthenticated; everything after is signed.
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        } else {
            cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start moto_server");
        let mut m = Moto {
            child,
            port,
            endpoint: format!(
                "{}://127.0.0.1:{port}",
                if tls.is_some() { "https" } else { "http" }
            ),
            bucket: bucket.to_string(),
            key_id: "AKIAWALMGRTESTKEY000".into(),
            secret: "walmgr-test-secret".into(),
            log,
        };
        assert!(
            wait_for(Duration::from_secs(30), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "moto_server did not listen on {port}: {}",
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        if auth {
            m.add_key();
        }
        let mut c = m.client(&m.endpoint.clone(), bucket);
        if let Some((_, _, ca)) = tls {
            c = m.client_with_ca(&m.endpoint.clone(), bucket, Some(ca));
        }
        match c.put(
            "",
            b"",
            hostkit::s3::sigv4::EMPTY_SHA256,
            &Default::default(),
        ) {
            Ok(_) => {}
            Err(e) => panic!("create bucket {bucket}: {e}"),
        }
        m
    }

    fn add_key(&mut self) {
        let port = self.port;
        iam(port, &[("Action", "CreateUser"), ("UserName", "walmgr")]);
        iam(
            port,
            &[
                ("Action", "PutUserPolicy"),
                ("UserName", "walmgr"),
                ("PolicyName", "s3"),
                (
                    "PolicyDocument",
                    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
                ),
            ],
        );
        let key = iam(
            port,
            &[("Action", "CreateAccessKey"), ("UserName", "walmgr")],
        );
        self.key_id = hostkit::s3::xml_values(&key, "AccessKeyId").remove(0);
        self.secret = hostkit::s3::xml_values(&key, "SecretAccessKey").remove(0);
    }

    /// A client of this service as the test's key (through `endpoint`).
    pub fn client(&self, endpoint: &str, bucket: &str) -> hostkit::s3::Client {
        self.client_with_ca(endpoint, bucket, None)
    }

    fn client_with_ca(
        &self,
        endpoint: &str,
        bucket: &str,
        ca: Option<&Path>,
    ) -> hostkit::s3::Client {
        let (scheme, host) = hostkit::s3::Config::parse_endpoint(endpoint).unwrap();
        hostkit::s3::Client::new(hostkit::s3::Config {
            scheme,
            host,
            region: "us-east-1".into(),
            addressing: hostkit::s3::Addressing::Path,
            bucket: bucket.into(),
            credentials: hostkit::s3::Credentials {
                access_key_id: self.key_id.clone(),
                secret_access_key: self.secret.clone(),
                session_token: None,
                source: "test".into(),
            },
            sse: None,
            conditional_put: true,
            timeout: Duration::from_secs(30),
            retries: 0,
            ca_file: ca.map(Path::to_path_buf),
            part_size: 5 << 20,
        })
    }

    /// Every key in the bucket under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.client(&self.endpoint, &self.bucket)
            .list(prefix)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    /// An AWS shared-credentials file with this key, mode 0600, owned by postgres.
    pub fn credentials_file(&self, at: &Path) -> PathBuf {
        std::fs::write(
            at,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.key_id, self.secret
            ),
        )
        .unwrap();
        std::fs::set_permissions(at, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        super::pg::chown_pg(at);
        at.to_path_buf()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASS: u8 = 0;
/// Forward at most `cut_after` bytes of each request, then drop the connection.
const CUT: u8 = 1;
/// Accept and close at once (the service is down).
const REFUSE: u8 = 2;
/// Answer the next request whose first line contains `match_line` with a 503.
const FAIL_ONCE: u8 = 3;

/// A TCP proxy in front of the service whose faults the test switches.
pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    cut_after: Arc<AtomicU64>,
    match_line: Arc<Mutex<String>>,
    /// How many requests got a fault.
    pub faults: Arc<AtomicU64>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = FaultProxy {
            port,
            mode: Arc::new(AtomicU8::new(PASS)),
            cut_after: Arc::new(AtomicU64::new(0)),
            match_line: Arc::new(Mutex::new(String::new())),
            faults: Arc::new(AtomicU64::new(0)),
        };
        let (mode, cut, line, faults) = (
            p.mode.clone(),
            p.cut_after.clone(),
            p.match_line.clone(),
            p.faults.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let (mode, cut, line, faults) =
                    (mode.clone(), cut.clone(), line.clone(), faults.clone());
                std::thread::spawn(move || serve(c, upstream, &mode, &cut, &line, &faults));
            }
        });
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    /// Every connection is dropped after `bytes` of its request went through.
    pub fn cut_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
        self.mode.store(CUT, Ordering::SeqCst);
    }

    pub fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
    }

    /// The next request whose request line contains `needle` gets a 503 from here.
    pub fn fail_once(&self, needle: &str) {
        *self.match_line.lock().unwrap() = needle.to_string();
        self.mode.store(FAIL_ONCE, Ordering::SeqCst);
    }

    pub fn fault_count(&self) -> u64 {
        self.faults.load(Ordering::SeqCst)
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    mode: &AtomicU8,
    cut: &AtomicU64,
    line: &Mutex<String>,
    faults: &AtomicU64,
) {
    if mode.load(Ordering::SeqCst) == REFUSE {
        faults.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(Shutdown::Both);
    });
    let mut up = up;
    let mut r = BufReader::new(client.try_clone().unwrap());
    let mut sent: u64 = 0;
    // Requests on one connection come one after the other (HTTP/1.1, no pipelining):
    // when the next head arrives, the previous answer has been read.
    'requests: loop {
        let mut head = String::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break 'requests;
            }
            let end = l == "\r\n";
            head.push_str(&l);
            if end {
                break;
            }
        }
        let len: u64 = head
            .lines()
            .find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let first = head.lines().next().unwrap_or("").to_string();
        let m = mode.load(Ordering::SeqCst);
        if m == REFUSE {
            faults.fetch_add(1, Ordering::SeqCst);
            break 'requests;
        }
        if m == FAIL_ONCE
            && first.contains(line.lock().unwrap().as_str())
            && mode
                .compare_exchange(FAIL_ONCE, PASS, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            faults.fetch_add(1, Ordering::SeqCst);
            let _ = std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink());
            let body =
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>\
                        <Message>injected by the test proxy</Message></Error>";
            let mut c = client.try_clone().unwrap();
            let _ = write!(
                c,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.flush();
            break 'requests;
        }
        let limit = if m == CUT {
            cut.load(Ordering::SeqCst)
        } else {
            u64::MAX
        };
        if up.write_all(head.as_bytes()).is_err() {
            break;
        }
        sent += head.len() as u64;
        let room = limit.saturating_sub(sent);
        let n = std::io::copy(&mut r.by_ref().take(len.min(room)), &mut up).unwrap_or(0);
        sent += n;
        if n < len {
            // Cut in the middle of the body (or the client went away).
            if m == CUT {
                faults.fetch_add(1, Ordering::SeqCst);
            }
            break;
        }
    }
    let _ = up.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    let _ = back.join();
}
