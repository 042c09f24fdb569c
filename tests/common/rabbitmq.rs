//! A private RabbitMQ node with a TLS listener, for the amqps:// tests; the system
//! broker on 5672 that the other tests share is never touched.
//!
//! One node per test binary ([`TlsBroker::get`]): a test CA signs the server's
//! certificate (subjectAltName 127.0.0.1 and localhost) and a client certificate; a
//! second, unrelated CA is the "wrong" one. The node listens on
//! - `ssl` (127.0.0.1, and 127.0.0.2 where the certificate's name does not match), which
//!   requires a client certificate signed by the test CA (`verify_peer`,
//!   `fail_if_no_peer_cert`);
//! - `plain` (127.0.0.1), where the tests consume.
//!
//! The node runs as root from `/usr/lib/rabbitmq/bin/rabbitmq-server` (the `/usr/sbin`
//! wrapper would switch to user rabbitmq and its `/var/lib/rabbitmq`), with its own
//! HOME and Erlang cookie, config, data and log directories in a temp directory, and
//! no plugins. A watchdog shell in its own process group stops it (`rabbitmqctl stop`,
//! then SIGKILL) and removes the directory once the test process is gone, also after a
//! panic or a kill.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct TlsBroker {
    pub dir: PathBuf,
    pub ssl_port: u16,
    pub plain_port: u16,
    pub node: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (tests/setup-host.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 key and a certificate for it signed by `ca` (self-signed CA if None).
fn cert(dir: &Path, name: &str, subject: &str, ca: Option<&str>, ext: &str) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    match ca {
        None => openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                subject,
            ],
        ),
        Some(ca) => {
            let csr = format!("{name}.csr");
            let extfile = format!("{name}.ext");
            fs::write(dir.join(&extfile), ext).unwrap();
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    subject,
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
            );
        }
    }
}

impl TlsBroker {
    pub fn get() -> &'static TlsBroker {
        static B: OnceLock<TlsBroker> = OnceLock::new();
        B.get_or_init(TlsBroker::start)
    }

    /// A file in the broker's directory (`ca.pem`, `other-ca.pem`, `client.pem`,
    /// `client.key`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn amqps_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.ssl_port)
    }

    pub fn plain_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.plain_port)
    }

    fn start() -> TlsBroker {
        let dir = tempfile::Builder::new()
            .prefix("hk-rabbit-tls-")
            .tempdir()
            .unwrap()
            .keep();
        cert(&dir, "ca", "/CN=hostkit test CA", None, "");
        cert(&dir, "other-ca", "/CN=some other CA", None, "");
        cert(
            &dir,
            "server",
            "/CN=localhost",
            Some("ca"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        cert(
            &dir,
            "client",
            "/CN=hostkit",
            Some("ca"),
            "extendedKeyUsage=clientAuth\n",
        );
        let (ssl_port, plain_port, dist_port) = (free_port(), free_port(), free_port());
        let node = format!("hktls{}@localhost", std::process::id());
        let d = dir.display();
        fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{plain_port}\n\
                 listeners.ssl.1 = 127.0.0.1:{ssl_port}\n\
                 listeners.ssl.2 = 127.0.0.2:{ssl_port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n\
                 loopback_users = none\n"
            ),
        )
        .unwrap();
        fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        for sub in ["home", "mnesia", "log"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }
        let cookie = dir.join("home/.erlang.cookie");
        fs::write(&cookie, format!("HKTLS{}", std::process::id())).unwrap();
        fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400)).unwrap();

        // The watchdog: start the node, wait for the test process to go, stop the node.
        let script = r#"
/usr/lib/rabbitmq/bin/rabbitmq-server >"$D/server.log" 2>&1 &
srv=$!
while kill -0 "$OWNER" 2>/dev/null && kill -0 "$srv" 2>/dev/null; do sleep 0.5; done
timeout 20 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1
kill -TERM "$srv" 2>/dev/null
sleep 1
beam=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null)
[ -n "$beam" ] && kill -KILL "$beam" 2>/dev/null
kill -KILL "$srv" 2>/dev/null
rm -rf "$D"
"#;
        // Never waited for: the watchdog must outlive this process (init reaps it).
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("D", &dir)
            .env("OWNER", std::process::id().to_string())
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", plain_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the RabbitMQ watchdog");
        let b = TlsBroker {
            dir,
            ssl_port,
            plain_port,
            node,
        };
        // Listeners open last in RabbitMQ's boot: once both accept, it is ready.
        let deadline = Instant::now() + Duration::from_secs(90);
        let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !(up(b.ssl_port) && up(b.plain_port)) {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ {} did not start: {}",
                b.node,
                fs::read_to_string(b.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        b
    }
}
