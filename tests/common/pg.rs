//! PostgreSQL for the tests: private clusters made with initdb (their own port, their
//! socket in the test's sandbox), and commands run as `postgres`, as PostgreSQL runs
//! archive_command/restore_command and as the packages run the daemons.
//!
//! Whatever runs as `postgres` must be readable by it, and a checkout may not be: `/root`
//! is 0700 on Debian, and so is many a home directory. So the test binaries are copied
//! into a 0755 directory under /tmp (`postgres_bin`), and sandboxes live under /tmp too;
//! nothing `postgres` touches is under the checkout or `target/`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::cmd::{ok, run};
use super::wait_for;

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

/// Where files `postgres` must reach go: `$TMPDIR` if every directory above it lets others
/// through, else /tmp.
pub fn tmp_root() -> PathBuf {
    let t = std::env::temp_dir();
    let open = t.ancestors().all(|a| {
        fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if open {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

const BIN_PREFIX: &str = "hostkit-it-bin-";

/// This test process's directory of copied binaries (root's, 0755), made once. Those left
/// by test processes that are gone are removed first.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = tmp_root();
        for e in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(BIN_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !hostkit::daemon::pid_alive(pid) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{BIN_PREFIX}{}-", std::process::id()))
            .tempdir_in(&root)
            .unwrap()
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    })
}

/// `bin` (a path under `target/`) copied once per test process to where `postgres` can
/// run it. Use the returned path for everything run as postgres, including the commands
/// written into a cluster's configuration (the server runs them).
pub fn postgres_bin(bin: &str) -> &'static str {
    static COPIES: Mutex<BTreeMap<String, &'static str>> = Mutex::new(BTreeMap::new());
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = copies.get(bin) {
        return p;
    }
    let name = Path::new(bin).file_name().unwrap();
    let dst = bin_dir().join(name);
    let tmp = bin_dir().join(format!(".{}.tmp", name.to_string_lossy()));
    // cp, not fs::copy: a file this process holds open for writing can leak into a child
    // forked meanwhile by another test thread, and exec'ing it then fails ETXTBSY.
    ok(Command::new("cp").arg(bin).arg(&tmp));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &dst).unwrap();
    let p: &'static str = Box::leak(dst.to_str().unwrap().to_owned().into_boxed_str());
    copies.insert(bin.to_owned(), p);
    p
}

/// walmgr, runnable by postgres.
pub fn walmgr_bin() -> &'static str {
    postgres_bin(env!("CARGO_BIN_EXE_walmgr"))
}

/// pgqd, runnable by postgres.
pub fn pgqd_bin() -> &'static str {
    postgres_bin(env!("CARGO_BIN_EXE_pgqd"))
}

pub fn pg_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("user postgres must exist (apt install postgresql-15)");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// A command that runs as `postgres` (uid, gid, no supplementary groups, HOME, no PG*
/// connection variables, cwd /). `prog` must be readable by postgres: see `postgres_bin`.
pub fn as_postgres(prog: impl AsRef<OsStr>) -> Command {
    let (uid, gid) = pg_ids();
    let mut c = Command::new(prog);
    c.uid(uid)
        .gid(gid)
        .env("HOME", "/var/lib/postgresql")
        .env("USER", "postgres")
        .env("LOGNAME", "postgres")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGDATABASE")
        .env_remove("PGUSER")
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

pub fn pgtool(tool: &str) -> Command {
    as_postgres(Path::new(PGBIN).join(tool))
}

pub fn chown_pg(p: &Path) {
    let (uid, gid) = pg_ids();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// A test's private directory under `tmp_root()`, owned by postgres (clusters, stores,
/// inis, sockets); removed on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hk-pg-{tag}-"))
            .tempdir_in(tmp_root())
            .unwrap();
        chown_pg(dir.path());
        let s = Sandbox { dir };
        s.mkdir("sock");
        s
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        fs::create_dir_all(&p).unwrap();
        chown_pg(&p);
        p
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.p(rel);
        fs::write(&p, content).unwrap();
        chown_pg(&p);
        p
    }

    pub fn sock(&self) -> PathBuf {
        self.p("sock")
    }
}

/// A PostgreSQL 15 cluster in a sandbox. Dropping it stops the server (`-m immediate`),
/// whatever happened to the test.
pub struct Cluster {
    pub data: PathBuf,
    pub port: u16,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// Extra `-c` settings passed at start (e.g. archive_mode=off for restored copies).
    pub opts: String,
}

impl Cluster {
    /// initdb (16 MB segments unless `seg_mb` says otherwise) and a postgresql.conf that
    /// listens only on the sandbox's socket directory.
    pub fn initdb(sb: &Sandbox, name: &str, port: u16, seg_mb: u32, conf: &str) -> Cluster {
        let data = sb.p(name);
        ok(pgtool("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg(format!("--wal-segsize={seg_mb}"))
            .arg("--no-sync")
            .arg("--no-instructions"));
        let c = Cluster {
            port,
            sock: sb.sock(),
            log: sb.p(&format!("{name}.log")),
            opts: String::new(),
            data,
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(c.data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            f,
            "\n# hostkit tests/common/pg.rs\nlisten_addresses = ''\nport = {port}\n\
             unix_socket_directories = '{}'\nshared_buffers = 32MB\nmax_connections = 20\n\
             wal_level = replica\nhot_standby = on\nmax_wal_size = 256MB\n\
             log_line_prefix = '%m [%p] '\n{conf}",
            c.sock.display()
        )
        .unwrap();
        c
    }

    /// A running cluster that asks for passwords (scram-sha-256) from every role but
    /// `postgres`, on its socket and on 127.0.0.1:`port`, with a login `role` whose
    /// password is `secret`. The host's own server trusts every local connection, so
    /// only a cluster like this tells whether a password was sent at all.
    pub fn with_password(sb: &Sandbox, name: &str, port: u16, role: &str, secret: &str) -> Cluster {
        let c = Cluster::initdb(
            sb,
            name,
            port,
            16,
            "listen_addresses = '127.0.0.1'\npassword_encryption = 'scram-sha-256'\n",
        );
        // The superuser may use the socket without a password (to set things up).
        fs::write(
            c.data.join("pg_hba.conf"),
            "local all postgres trust\n\
             local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        c.start();
        c.psql(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}'",
            secret.replace('\'', "''")
        ));
        c
    }

    /// A data directory laid out by someone else (walmgr restore), started on `port`.
    pub fn adopt(sb: &Sandbox, data: &Path, port: u16, opts: &str) -> Cluster {
        let name = data.file_name().unwrap().to_string_lossy().into_owned();
        Cluster {
            data: data.to_path_buf(),
            port,
            sock: sb.sock(),
            log: sb.p(&format!("{name}.log")),
            opts: opts.to_string(),
        }
    }

    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!(
                "pg_ctl start {} failed: {e}\n--- server log ---\n{}",
                self.data.display(),
                self.log_tail()
            );
        }
    }

    pub fn try_start(&self) -> Result<(), String> {
        let o = run(pgtool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -k {} {}",
                self.port,
                self.sock.display(),
                self.opts
            ))
            .arg("start"));
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// Restart through pg_ctl (the command walmgr setup runs as master_restart_cmd).
    pub fn restart_cmd(&self) -> String {
        format!(
            "{PGBIN}/pg_ctl -D {} -l {} -w -t 60 -m fast restart",
            self.data.display(),
            self.log.display()
        )
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sock.display(),
            self.port
        )
    }

    pub fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn psql_cmd(&self, sql: &str) -> Command {
        let mut c = pgtool("psql");
        c.args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql]);
        c
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let o = run(&mut self.psql_cmd(sql));
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql on port {} failed: {sql}: {e}\n--- server log ---\n{}",
                self.port,
                self.log_tail()
            )
        })
    }

    pub fn pgbench(&self) -> Command {
        let mut c = pgtool("pgbench");
        c.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    pub fn in_recovery(&self) -> Option<bool> {
        self.try_psql("select pg_is_in_recovery()")
            .ok()
            .map(|s| s == "t")
    }

    /// (archived_count, last_archived_wal, failed_count, last_failed_wal)
    pub fn archiver(&self) -> (i64, String, i64, String) {
        let s = self.psql(
            "select archived_count, coalesce(last_archived_wal, ''), failed_count, \
             coalesce(last_failed_wal, '') from pg_stat_archiver",
        );
        let f: Vec<&str> = s.split('|').collect();
        (
            f[0].parse().unwrap(),
            f[1].to_string(),
            f[2].parse().unwrap(),
            f[3].to_string(),
        )
    }

    /// True once the archiver has archived segment `seg` (archiving is in order, so any
    /// later plain segment counts too).
    pub fn archived(&self, seg: &str) -> bool {
        let last = self.archiver().1;
        if last.len() < 24 {
            return false;
        }
        let head = &last[..24];
        head > seg || (head == seg && last.len() == 24)
    }

    /// Switch to a new segment and wait (`secs`) until the finished one is archived.
    /// Returns its name.
    pub fn switch_and_wait_archived(&self, secs: u64) -> String {
        let seg = self.psql("select pg_walfile_name(pg_switch_wal())");
        assert!(
            wait_for(Duration::from_secs(secs), || self.archived(&seg)),
            "segment {seg} not archived within {secs}s: pg_stat_archiver = {:?}\n--- server log ---\n{}",
            self.archiver(),
            self.log_tail()
        );
        seg
    }

    pub fn running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running() {
            let _ = pgtool("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The host's own PostgreSQL server's socket directory (Debian's default).
pub const HOST_SOCKET: &str = "/var/run/postgresql";

/// psql as postgres over the host server's socket on `db`, stopping at the first error:
/// its unaligned, tuples-only output, trimmed (panics, with psql's stderr, on failure).
pub fn host_psql(db: &str, what: &[&str]) -> String {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-q",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST_SOCKET,
    ])
    .args(["-U", "postgres", "-d", db])
    .args(what);
    ok(&mut c).trim().to_string()
}

/// A database of its own on the host's server, dropped (with its sessions) on drop.
pub struct HostDb {
    pub name: String,
}

impl HostDb {
    /// `<prefix>_<pid>`, made afresh.
    pub fn new(prefix: &str) -> HostDb {
        let name = format!("{prefix}_{}", std::process::id());
        host_psql(
            "postgres",
            &["-c", &format!("DROP DATABASE IF EXISTS {name}")],
        );
        host_psql("postgres", &["-c", &format!("CREATE DATABASE {name}")]);
        HostDb { name }
    }

    pub fn sql(&self, sql: &str) -> String {
        host_psql(&self.name, &["-c", sql])
    }

    /// Load the ElepHaaS admin schema, sql/create_schema.sql.
    pub fn load_admin_schema(&self) {
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/create_schema.sql");
        host_psql(&self.name, &["-f", schema.to_str().unwrap()]);
    }
}

impl Drop for HostDb {
    fn drop(&mut self) {
        // Not host_psql: a failure here must not panic while a test is already unwinding.
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                HOST_SOCKET,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}
