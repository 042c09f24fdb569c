//! crate::pg against a private PostgreSQL 15 cluster that asks for passwords
//! (scram-sha-256 over TCP and for non-superusers on its socket): the password file
//! supplies the password, a wrong one fails without being printed, and a file others
//! may read is ignored with a warning. The host's own server trusts every local
//! connection, so it could not tell whether a password was sent at all.
//!
//! The cluster runs as postgres (initdb refuses root), in a directory of its own, on a
//! free 127.0.0.1 port with its socket in that directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use hostkit::pg::conninfo::Env;
use hostkit::pg::PgError;

const PGBIN: &str = "/usr/lib/postgresql/15/bin";
const ROLE: &str = "hk_pw_role";
const SECRET: &str = "Right-pw:with\\colon";

fn pg_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("user postgres must exist (apt install postgresql-15)");
    (u.uid.as_raw(), u.gid.as_raw())
}

fn pgtool(tool: &str) -> Command {
    let (uid, gid) = pg_ids();
    let mut c = Command::new(Path::new(PGBIN).join(tool));
    c.uid(uid)
        .gid(gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/var/lib/postgresql")
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A private cluster; dropping it stops the server.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("hk-pg-access-")
            .tempdir()
            .unwrap();
        let (uid, gid) = pg_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Cluster { dir, port };
        fs::create_dir(c.sock()).unwrap();
        std::os::unix::fs::chown(c.sock(), Some(uid), Some(gid)).unwrap();
        ok(pgtool("initdb")
            .arg("-D")
            .arg(c.data())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .arg("--no-instructions"));
        // The superuser may use the socket without a password (to create the role);
        // everyone else, and every TCP connection, must give one.
        fs::write(
            c.data().join("pg_hba.conf"),
            "local all postgres trust\n\
             local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(c.data().join("postgresql.conf"))
            .unwrap();
        writeln!(
            f,
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             shared_buffers = 16MB\nmax_connections = 10\npassword_encryption = 'scram-sha-256'",
            c.sock().display()
        )
        .unwrap();
        drop(f);
        ok(pgtool("pg_ctl")
            .arg("-D")
            .arg(c.data())
            .arg("-l")
            .arg(c.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"]));
        ok(pgtool("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(c.sock())
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "create role {ROLE} login password '{}'",
                SECRET.replace('\'', "''")
            )));
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pgtool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Warnings crate::pg logs (the password file's), kept for the test to look at.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LOGGED.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// A .pgpass line's field: `:` and `\` escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

fn write_pgpass(path: &Path, lines: &str, mode: u32) {
    fs::write(path, lines).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

async fn whoami(conninfo: &str, env: &Env) -> Result<String, PgError> {
    let c = hostkit::pg::connect_with(conninfo, env).await?;
    let r = c
        .query_one("select current_user::text", &[])
        .await
        .map_err(|e| PgError::query(conninfo, e))?;
    Ok(r.get(0))
}

/// Every way the error is shown: Display, the detail, the chain of causes, Debug.
fn shown(e: &PgError) -> String {
    let mut text = format!("{e}\n{}\n{e:?}\n", e.detail());
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!("{c}: "));
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn password_file_supplies_the_password_and_is_never_printed() {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Warn);
    let c = Cluster::start();
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    let env = Env::empty()
        .with_os_user("root", Path::new("/nonexistent"))
        .with_var("HOME", home.path().to_str().unwrap());
    let tcp = format!("host=127.0.0.1 port={} user={ROLE} dbname=postgres", c.port);
    let sock = format!(
        "host={} port={} user={ROLE} dbname=postgres",
        c.sock().display(),
        c.port
    );

    // Without a password file the server's demand cannot be met.
    let e = whoami(&tcp, &env).await.unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");

    // The right password, only in ~/.pgpass (0600): TCP by host name, the socket by
    // its directory (not the default one, so not `localhost`).
    write_pgpass(
        &pgpass,
        &format!(
            "# host:port:db:user:password\n\
             127.0.0.1:{port}:postgres:{ROLE}:{pw}\n\
             {sock}:*:*:{ROLE}:{pw}\n",
            port = c.port,
            pw = esc(SECRET),
            sock = esc(&c.sock().display().to_string()),
        ),
        0o600,
    );
    assert_eq!(whoami(&tcp, &env).await.unwrap(), ROLE);
    assert_eq!(whoami(&sock, &env).await.unwrap(), ROLE);
    // PGPASSFILE instead of ~/.pgpass.
    let elsewhere = home.path().join("pw");
    fs::rename(&pgpass, &elsewhere).unwrap();
    let by_var = env
        .clone()
        .with_var("PGPASSFILE", elsewhere.to_str().unwrap());
    assert_eq!(whoami(&tcp, &by_var).await.unwrap(), ROLE);
    fs::rename(&elsewhere, &pgpass).unwrap();

    // A wrong password fails, and nothing shows it.
    let wrong = "Wrong-pw-3b9f";
    write_pgpass(&pgpass, &format!("*:*:*:{ROLE}:{wrong}\n"), 0o600);
    let e = whoami(&tcp, &env).await.unwrap_err();
    let text = shown(&e);
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(SECRET), "{text}");
    // Nor when it is in the conninfo itself (key=value or URL).
    for ci in [
        format!("{tcp} password='{wrong}'"),
        format!("postgres://{ROLE}:{wrong}@127.0.0.1:{}/postgres", c.port),
    ] {
        let e = whoami(&ci, &env).await.unwrap_err();
        let text = shown(&e);
        assert!(text.contains("***"), "{text}");
        assert!(!text.contains(wrong), "{text}");
    }

    // The right password in a file others may read: ignored, with a warning.
    write_pgpass(&pgpass, &format!("*:*:*:{ROLE}:{}\n", esc(SECRET)), 0o644);
    LOGGED.lock().unwrap().clear();
    let e = whoami(&tcp, &env).await.unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    let warned = LOGGED.lock().unwrap().join("\n");
    assert!(
        warned.contains(&pgpass.display().to_string()) && warned.contains("group or world access"),
        "{warned}"
    );
    // Made private again, the same file works.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(whoami(&tcp, &env).await.unwrap(), ROLE);
}
