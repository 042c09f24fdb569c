//! A conninfo string (`key=value ...` or a `postgres://` URL, as tokio-postgres parses
//! them) made into a ready [`tokio_postgres::Config`] with libpq's rules for what it
//! leaves out, which tokio-postgres does not apply:
//!
//! - host: PGHOST (a comma list; an entry starting with `/` is a socket directory),
//!   else the Unix socket in `/var/run/postgresql`, Debian's libpq default;
//! - port: PGPORT (else tokio-postgres' 5432);
//! - user: PGUSER, else the OS user (effective uid, as libpq);
//! - dbname: PGDATABASE, else the user name;
//! - password: PGPASSWORD, else the password file (PGPASSFILE or `~/.pgpass`).
//!
//! Not applied: PGHOSTADDR, PGSERVICE / pg_service.conf, PGSSLMODE and the other
//! libpq variables; with several hosts the password file is asked for the first host
//! that has a line, and that password is used for all (tokio-postgres has one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::error::PgError;
use super::pgpass::{self, PassFile};

/// Debian's libpq compiles this in as DEFAULT_PGSOCKET_DIR.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_PORT: u16 = 5432;

/// What the defaults come from: environment variables and the OS user. Injectable so
/// tests do not depend on the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// The effective uid's passwd entry: name and home directory.
    os_user: Option<String>,
    os_home: Option<PathBuf>,
}

impl Env {
    /// This process: its environment and its effective uid's passwd entry.
    pub fn process() -> Env {
        let vars = [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGDATABASE",
            "PGPASSFILE",
            "HOME",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
        let pw = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten();
        Env {
            vars,
            os_user: pw.as_ref().map(|u| u.name.clone()),
            os_home: pw.map(|u| u.dir),
        }
    }

    /// Nothing set and no OS user (tests add what they need).
    pub fn empty() -> Env {
        Env::default()
    }

    pub fn with_var(mut self, key: &str, value: &str) -> Env {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    pub fn with_os_user(mut self, name: &str, home: &Path) -> Env {
        self.os_user = Some(name.to_string());
        self.os_home = Some(home.to_path_buf());
        self
    }

    /// A variable, with an empty value counting as unset (as libpq treats it).
    fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `$HOME`, else the passwd entry's directory (libpq's order).
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME")
            .map(PathBuf::from)
            .or_else(|| self.os_home.clone())
    }
}

/// [`resolve`] with this process's environment.
pub fn config(conninfo: &str) -> Result<Config, PgError> {
    resolve(conninfo, &Env::process())
}

/// Parse `conninfo` and fill in what it leaves out by libpq's rules; a password file
/// that is ignored (see [`PassFile::load`]) is warned about.
pub fn resolve(conninfo: &str, env: &Env) -> Result<Config, PgError> {
    let (cfg, note) = resolve_noting(conninfo, env)?;
    if let Some(n) = note {
        log::warn!("{n}");
    }
    Ok(cfg)
}

/// [`resolve`], with why a password file was ignored returned, not logged: the caller
/// says it where it matters (in the error, when the server then wanted a password).
pub fn resolve_noting(conninfo: &str, env: &Env) -> Result<(Config, Option<String>), PgError> {
    let mut note = None;
    let mut cfg = Config::from_str(conninfo).map_err(|e| PgError::Config {
        target: super::redact(conninfo),
        reason: "bad conninfo".into(),
        source: Some(e),
    })?;
    if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
        match env.var("PGHOST") {
            Some(list) => {
                for h in list.split(',').map(str::trim) {
                    add_host(&mut cfg, if h.is_empty() { DEFAULT_SOCKET_DIR } else { h });
                }
            }
            None => add_host(&mut cfg, DEFAULT_SOCKET_DIR),
        }
    }
    if cfg.get_ports().is_empty() {
        if let Some(p) = env.var("PGPORT") {
            for one in p.split(',').map(str::trim) {
                let port = match one {
                    "" => DEFAULT_PORT,
                    n => n.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        PgError::config(conninfo, format!("PGPORT={p:?}: not a port number"))
                    })?,
                };
                cfg.port(port);
            }
        }
    }
    if cfg.get_user().is_none() {
        let user = env
            .var("PGUSER")
            .map(str::to_string)
            .or_else(|| env.os_user.clone())
            .ok_or_else(|| {
                PgError::config(
                    conninfo,
                    "no user name: none in the conninfo, PGUSER unset and no passwd entry for this uid",
                )
            })?;
        cfg.user(user);
    }
    if cfg.get_dbname().is_none() {
        let db = env.var("PGDATABASE").or(cfg.get_user()).map(str::to_string);
        if let Some(db) = db {
            cfg.dbname(db);
        }
    }
    if cfg.get_password().is_none() {
        if let Some(pw) = env.var("PGPASSWORD") {
            cfg.password(pw);
        } else if let Some(p) = pgpass::path(env.var("PGPASSFILE"), env.home().as_deref()) {
            match PassFile::load(&p) {
                Ok(Some(file)) => {
                    if let Some(pw) = lookup(&cfg, &file) {
                        cfg.password(pw);
                    }
                }
                Ok(None) => {}
                Err(why) => note = Some(why),
            }
        }
    }
    Ok((cfg, note))
}

fn add_host(cfg: &mut Config, h: &str) {
    if h.starts_with('/') {
        cfg.host_path(h);
    } else {
        cfg.host(h);
    }
}

/// The password file's answer for the first host that has one.
fn lookup(cfg: &Config, file: &PassFile) -> Option<String> {
    let ports = cfg.get_ports();
    let user = cfg.get_user()?;
    let db = cfg.get_dbname().unwrap_or(user);
    let port_of = |i: usize| match ports.len() {
        0 => DEFAULT_PORT,
        1 => ports[0],
        _ => ports.get(i).copied().unwrap_or(DEFAULT_PORT),
    };
    let mut names: Vec<String> = cfg.get_hosts().iter().map(pgpass_host).collect();
    if names.is_empty() {
        names = cfg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    }
    names.iter().enumerate().find_map(|(i, host)| {
        file.lookup(pgpass::Key {
            host,
            port: port_of(i),
            db,
            user,
        })
        .map(str::to_string)
    })
}

/// The host name a password file line is matched against: libpq matches a connection
/// through the default socket directory as `localhost`, any other socket directory by
/// its path.
fn pgpass_host(h: &Host) -> String {
    match h {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) if dir == Path::new(DEFAULT_SOCKET_DIR) => "localhost".into(),
        Host::Unix(dir) => dir.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn unix(p: &str) -> Host {
        Host::Unix(PathBuf::from(p))
    }

    #[test]
    fn nothing_given_means_the_socket_and_the_os_user() {
        let env = Env::empty().with_os_user("postgres", Path::new("/nonexistent"));
        let c = resolve("dbname='template1'", &env).unwrap();
        assert_eq!(c.get_hosts(), &[unix(DEFAULT_SOCKET_DIR)]);
        assert_eq!(c.get_ports(), &[] as &[u16]);
        assert_eq!(c.get_user(), Some("postgres"));
        assert_eq!(c.get_dbname(), Some("template1"));
        assert_eq!(c.get_password(), None);
        // dbname defaults to the user.
        let c = resolve("", &env).unwrap();
        assert_eq!(c.get_dbname(), Some("postgres"));
    }

    #[test]
    fn environment_fills_what_the_conninfo_leaves_out() {
        let env = Env::empty()
            .with_os_user("root", Path::new("/root"))
            .with_var("PGHOST", "db1,/run/pg,")
            .with_var("PGPORT", "6432")
            .with_var("PGUSER", "app")
            .with_var("PGDATABASE", "appdb")
            .with_var("PGPASSWORD", "pw");
        let c = resolve("", &env).unwrap();
        assert_eq!(
            c.get_hosts(),
            &[
                Host::Tcp("db1".into()),
                unix("/run/pg"),
                unix(DEFAULT_SOCKET_DIR)
            ]
        );
        assert_eq!(c.get_ports(), &[6432]);
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_dbname(), Some("appdb"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        // What the conninfo says wins.
        let c = resolve("postgres://u:given@h:5433/d", &env).unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("h".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_dbname(), Some("d"));
        assert_eq!(c.get_password(), Some(&b"given"[..]));
        // Empty variables count as unset.
        let env = Env::empty()
            .with_os_user("me", Path::new("/x"))
            .with_var("PGHOST", "")
            .with_var("PGUSER", "");
        let c = resolve("", &env).unwrap();
        assert_eq!(c.get_hosts(), &[unix(DEFAULT_SOCKET_DIR)]);
        assert_eq!(c.get_user(), Some("me"));
    }

    #[test]
    fn bad_input_is_a_config_error_without_the_password() {
        let env = Env::empty().with_os_user("u", Path::new("/x"));
        let e = resolve("password=hunter2 port=notaport", &env).unwrap_err();
        assert!(matches!(e, PgError::Config { .. }));
        assert_eq!(e.to_string(), "password=*** port=notaport: bad conninfo");
        let e = resolve("password=hunter2", &env.clone().with_var("PGPORT", "x1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "password=***: PGPORT=\"x1\": not a port number"
        );
        let e = resolve("", &Env::empty()).unwrap_err();
        assert!(e.to_string().contains("no user name"), "{e}");
    }

    #[test]
    fn password_file_is_asked_with_localhost_for_the_default_socket() {
        let d = tempfile::tempdir().unwrap();
        let pass = d.path().join(".pgpass");
        std::fs::write(
            &pass,
            "localhost:5432:app:alice:sock-pw\n\
             /tmp/other:5432:*:alice:other-sock-pw\n\
             db.example:6432:*:alice:tcp-pw\n",
        )
        .unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Found through $HOME ...
        let env = Env::empty()
            .with_os_user("alice", Path::new("/nonexistent"))
            .with_var("HOME", d.path().to_str().unwrap());
        let pw = |ci: &str, env: &Env| resolve(ci, env).unwrap().get_password().map(|p| p.to_vec());
        assert_eq!(pw("dbname=app", &env), Some(b"sock-pw".to_vec()));
        assert_eq!(
            pw("host=/tmp/other dbname=x", &env),
            Some(b"other-sock-pw".to_vec())
        );
        assert_eq!(
            pw("host=db.example port=6432", &env),
            Some(b"tcp-pw".to_vec())
        );
        assert_eq!(pw("host=db.example", &env), None, "port 5432 has no line");
        // ... and through the passwd entry's home when HOME is unset.
        let by_passwd = Env::empty().with_os_user("alice", d.path());
        assert_eq!(pw("dbname=app", &by_passwd), Some(b"sock-pw".to_vec()));
        // PGPASSFILE names another file; PGPASSWORD comes first.
        let other = d.path().join("pw");
        std::fs::write(&other, "*:*:*:*:from-pgpassfile\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = env.with_var("PGPASSFILE", other.to_str().unwrap());
        assert_eq!(pw("dbname=app", &env), Some(b"from-pgpassfile".to_vec()));
        let env = env.with_var("PGPASSWORD", "from-env");
        assert_eq!(pw("dbname=app", &env), Some(b"from-env".to_vec()));
        // Readable by others: ignored.
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pw("dbname=app", &by_passwd), None);
    }
}
