//! crate::pg against a private PostgreSQL 15 cluster that asks for passwords
//! (scram-sha-256 over TCP and for non-superusers on its socket, `Cluster::with_password`
//! in tests/common/pg.rs): the password file supplies the password, a wrong one fails
//! without being printed, and a file others may read is ignored, the error saying so.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use common::pg::{free_port, Cluster, Sandbox};
use hostkit::pg::conninfo::Env;
use hostkit::pg::PgError;

const ROLE: &str = "hk_pw_role";
const SECRET: &str = "Right-pw:with\\colon";

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
    let sb = Sandbox::new("pg-access");
    let c = Cluster::with_password(&sb, "data", free_port(), ROLE, SECRET);
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    let env = Env::empty()
        .with_os_user("root", Path::new("/nonexistent"))
        .with_var("HOME", home.path().to_str().unwrap());
    let tcp = format!("host=127.0.0.1 port={} user={ROLE} dbname=postgres", c.port);
    let sock = format!(
        "host={} port={} user={ROLE} dbname=postgres",
        c.sock.display(),
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
            sock = esc(&c.sock.display().to_string()),
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

    // The right password in a file others may read: ignored, and the error says so
    // (one line: nothing is warned besides).
    write_pgpass(&pgpass, &format!("*:*:*:{ROLE}:{}\n", esc(SECRET)), 0o644);
    LOGGED.lock().unwrap().clear();
    let e = whoami(&tcp, &env).await.unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    for text in [e.to_string(), e.detail()] {
        assert!(
            text.contains(&format!(
                "password file {} has group or world access",
                pgpass.display()
            )),
            "{text}"
        );
    }
    assert!(!shown(&e).contains(SECRET), "{}", shown(&e));
    let warned = LOGGED.lock().unwrap().join("\n");
    assert!(warned.is_empty(), "{warned}");
    // Made private again, the same file works.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(whoami(&tcp, &env).await.unwrap(), ROLE);
}
