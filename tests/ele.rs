//! ele_report and ele_ctl against real PostgreSQL 15: a primary and a streaming replica
//! made here (initdb + pg_basebackup -R, private ports and socket directories), a
//! stopped Debian-style cluster under a test conf root (what PG_CLUSTER_CONF_ROOT
//! points postgresql-common at), a hand-made initdb cluster only /proc can find, and
//! an admin database on the host's server loaded with sql/create_schema.sql.
//!
//! `[Discovery] ports` keeps the host's own clusters out of the reports.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cmd::{assert_one_line_error, finish, ok, run, show};
use common::pg::{as_postgres, chown_pg, pgtool, postgres_bin, Cluster, HostDb, Sandbox};

const SOCKET: &str = common::pg::HOST_SOCKET;

fn host() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The admin database: a database of its own on the host's server with
/// sql/create_schema.sql loaded.
struct Admin {
    db: HostDb,
}

impl Admin {
    fn new(tag: &str) -> Admin {
        let db = HostDb::new(&format!("ele_it_{tag}"));
        db.load_admin_schema();
        Admin { db }
    }

    fn sql(&self, sql: &str) -> String {
        self.db.sql(sql)
    }

    /// `base_name|port|online|version|pgdata|xlog_pos|master's port` by port.
    fn instances(&self) -> Vec<String> {
        self.sql(
            "SELECT f.base_name, f.db_port, f.is_online, f.version, f.pgdata, \
                    coalesce(f.xlog_pos::text, ''), coalesce(m.db_port::text, '') \
               FROM utility.v_flat_instance f \
               LEFT JOIN utility.v_flat_instance m ON m.instance_id = f.master_id \
              ORDER BY f.db_port",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// The clusters of one test (fields drop in order: servers before their sandboxes).
struct Host {
    primary: Cluster,
    replica: Cluster,
    scratch: Cluster,
    dr: Cluster,
    admin: Admin,
    ports: [u16; 4],
    conf_root: PathBuf,
    sb2: Sandbox,
    sb: Sandbox,
}

impl Host {
    /// primary `pay` on base, its replica on base+1, hand-made `scratch` on base+2,
    /// Debian-style `15/dr` (stopped) on base+3.
    fn new(tag: &str, base: u16) -> Host {
        let sb = Sandbox::new(&format!("ele-{tag}"));
        let sb2 = Sandbox::new(&format!("ele-{tag}-hand"));
        let ports = [base, base + 1, base + 2, base + 3];
        let primary = Cluster::initdb(
            &sb,
            "pay",
            ports[0],
            16,
            "cluster_name = 'pay'\nautovacuum = off\n",
        );
        primary.start();
        let rdata = sb.p("replica");
        ok(pgtool("pg_basebackup")
            .arg("-D")
            .arg(&rdata)
            .arg("-h")
            .arg(sb.sock())
            .args(["-p", &ports[0].to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]));
        let conf = rdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("port = {}\n", ports[1]));
        std::fs::write(&conf, text).unwrap();
        let replica = Cluster::adopt(&sb, &rdata, ports[1], "");
        replica.start();
        // wal_level minimal: no standby snapshots, so its WAL stays put while idle.
        let scratch = Cluster::initdb(
            &sb2,
            "scratch",
            ports[2],
            16,
            "wal_level = minimal\nmax_wal_senders = 0\nautovacuum = off\n",
        );
        scratch.start();
        let dr = Cluster::initdb(&sb, "dr", ports[3], 16, "");
        let conf_root = sb.p("etc/postgresql");
        let cdir = conf_root.join("15/dr");
        std::fs::create_dir_all(&cdir).unwrap();
        chown_pg(&cdir);
        let d = dr.data.display();
        sb.write(
            "etc/postgresql/15/dr/postgresql.conf",
            format!(
                "data_directory = '{d}'\nhba_file = '{d}/pg_hba.conf'\n\
                 ident_file = '{d}/pg_ident.conf'\nport = {}\nlisten_addresses = ''\n\
                 unix_socket_directories = '{}'\nshared_buffers = 32MB\n\
                 max_connections = 20\ncluster_name = '15/dr'\n",
                ports[3],
                sb.sock().display()
            ),
        );
        // pg_ctlcluster's log goes here, not to /var/log/postgresql.
        let log = sb.write("dr-debian.log", "");
        std::os::unix::fs::symlink(&log, cdir.join("log")).unwrap();
        std::os::unix::fs::lchown(cdir.join("log"), Some(common::pg::pg_ids().0), None).unwrap();

        let admin = Admin::new(tag);
        let env = admin.sql(
            "INSERT INTO utility.ele_environment (env_name) VALUES ('test') \
             RETURNING environment_id",
        );
        admin.sql(&format!(
            "INSERT INTO utility.ele_server (environment_id, hostname) VALUES ({env}, '{}')",
            host()
        ));
        for (name, port) in [("pay", ports[0]), ("dr", ports[3])] {
            admin.sql(&format!(
                "INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port) \
                 VALUES ({env}, '{name}', '{name}', {port})"
            ));
        }
        Host {
            primary,
            replica,
            scratch,
            dr,
            admin,
            ports,
            conf_root,
            sb2,
            sb,
        }
    }

    /// A report.ini (written to the sandbox as `name`) for this host; `upstream` and
    /// `extra` replace / add lines.
    fn ini(&self, name: &str, upstream: &str, cache: &str, extra: &str) -> PathBuf {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let upstream = if upstream.is_empty() {
            format!(
                "db_host = {SOCKET}\ndb_port = 5432\ndb_user = postgres\ndb_name = {}\n",
                self.admin.db.name
            )
        } else {
            upstream.to_string()
        };
        self.sb.write(
            name,
            format!(
                "[Upstream]\n{upstream}\n[Report]\ncache_dir = {}\n\n[Discovery]\n\
                 socket_dirs = {}\nconf_root = {}\nports = {} {extra}\n",
                self.sb.p(cache).display(),
                self.sb.sock().display(),
                self.conf_root.display(),
                ports.join(" "),
            ),
        )
    }
}

fn ele_report(ini: &Path, args: &[&str]) -> (Command, Output) {
    let mut c = as_postgres(postgres_bin(env!("CARGO_BIN_EXE_ele_report")));
    c.arg("-c").arg(ini).args(args);
    let o = run(&mut c);
    (c, o)
}

fn ele_ctl(ini: &Path, args: &[&str]) -> (Command, Output) {
    let mut c = as_postgres(postgres_bin(env!("CARGO_BIN_EXE_ele_ctl")));
    c.arg("-c").arg(ini).args(args);
    let o = run(&mut c);
    (c, o)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lsn_bytes(c: &Cluster, f: &str) -> i64 {
    c.psql(&format!("SELECT ({f}() - '0/0')::bigint"))
        .parse()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn by_port(v: &serde_json::Value, port: u16) -> &serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["port"] == port)
        .unwrap_or_else(|| panic!("no cluster on port {port} in {v:#}"))
}

#[test]
fn report_end_to_end() {
    let h = Host::new("rep", 56301);
    let [p1, p2, p3, p4] = h.ports;
    let ini = h.ini("report.ini", "", "cache", "");
    let (c, o) = ele_report(&ini, &["--version"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("ele_report "),
        "{}",
        show(&c, &o)
    );

    // What discovery sees, and which sources saw it.
    let (c, o) = ele_report(&ini, &["--json"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    let v = json(&o);
    assert_eq!(v.as_array().unwrap().len(), 4, "{v:#}");
    let sources = |port| by_port(&v, port)["seen_by"].clone();
    assert_eq!(
        sources(p1),
        serde_json::json!(["socket_lock", "postmaster"])
    );
    assert_eq!(
        sources(p2),
        serde_json::json!(["socket_lock", "postmaster"])
    );
    assert_eq!(sources(p3), serde_json::json!(["postmaster"]));
    assert_eq!(sources(p4), serde_json::json!(["debian", "pg_lsclusters"]));
    let (pri, rep, hand, dr) = (
        by_port(&v, p1),
        by_port(&v, p2),
        by_port(&v, p3),
        by_port(&v, p4),
    );
    assert_eq!(
        (pri["name"].as_str(), pri["role"].as_str()),
        (Some("pay"), Some("primary"))
    );
    assert_eq!(
        (rep["name"].as_str(), rep["role"].as_str()),
        (Some("pay"), Some("replica"))
    );
    assert_eq!(rep["master_host"], format!("{}:{p1}", host()));
    assert_eq!(rep["system_identifier"], pri["system_identifier"]);
    assert_eq!(
        (pri["timeline"].as_u64(), rep["timeline"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(hand["name"], "scratch");
    assert_eq!(hand["data_dir"], h.scratch.data.display().to_string());
    assert_eq!(
        (dr["debian"].as_str(), dr["online"].as_bool()),
        (Some("15/dr"), Some(false))
    );
    assert_eq!(
        (dr["version"].as_str(), dr["role"].as_str()),
        (Some("15"), Some("primary"))
    );
    let server_version = h.primary.psql(
        "SELECT current_setting('server_version_num')::int / 10000 || '.' || \
         current_setting('server_version_num')::int % 10000",
    );
    assert_eq!(pri["server_version"], server_version.as_str());

    // Lag: replay paused on the replica while the primary writes ~6 MB of WAL.
    h.replica.psql("SELECT pg_wal_replay_pause()");
    h.primary.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS t FROM generate_series(1, 6000) g",
    );
    h.primary.psql("CHECKPOINT");

    // --dry-run prints what would be sent and sends nothing.
    let (c, o) = ele_report(&ini, &["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    let would = json(&o);
    assert_eq!(would.as_array().unwrap().len(), 4, "{would:#}");
    assert_eq!(
        by_port_checkin(&would, p2)["sMasterHost"],
        format!("{}:{p1}", host())
    );
    assert_eq!(
        h.admin.sql("SELECT count(*) FROM utility.ele_instance"),
        "0"
    );

    // The report: scratch has no herd, and ele_report says so.
    let pri_before = lsn_bytes(&h.primary, "pg_current_wal_lsn");
    let (c, o) = ele_report(&ini, &[]);
    assert_eq!(code(&o), 5, "{}", show(&c, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        &format!("instance scratch on port {p3} ignored by the upstream: no herd \"scratch\""),
    );
    let pri_after = lsn_bytes(&h.primary, "pg_current_wal_lsn");
    let rep_lsn = lsn_bytes(&h.replica, "pg_last_wal_replay_lsn");
    let v15 = server_version.as_str();
    let rows = h.admin.instances();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let pri_row: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(
        pri_row[..5],
        [
            "pay",
            &p1.to_string(),
            "t",
            v15,
            &h.primary.data.display().to_string()
        ]
    );
    let pri_lsn: i64 = pri_row[5].parse().unwrap();
    assert!(
        (pri_before..=pri_after).contains(&pri_lsn),
        "{pri_before} {pri_lsn} {pri_after}"
    );
    assert_eq!(pri_row[6], "", "a primary has no master");
    assert_eq!(
        rows[1..],
        [
            format!(
                "pay|{p2}|t|{v15}|{}|{rep_lsn}|{p1}",
                h.replica.data.display()
            ),
            format!(
                "dr|{p4}|f|15|{}|{}|",
                h.dr.data.display(),
                control_lsn(&h.dr.data)
            ),
        ]
    );
    assert!(pri_lsn - rep_lsn > 5 << 20, "{pri_lsn} {rep_lsn}");
    let lag = h.admin.sql("SELECT mb_lag FROM utility.v_dr_pairs");
    let want = format!("{:.2}", (pri_lsn - rep_lsn) as f64 / 1024.0 / 1024.0);
    assert_eq!(lag, want);
    let cache = h.sb.p("cache");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o750
    );

    // The replica stops: reported offline, and out of v_dr_pairs.
    h.replica.psql("SELECT pg_wal_replay_resume()");
    ok(pgtool("pg_ctl")
        .arg("-D")
        .arg(&h.replica.data)
        .args(["-w", "-m", "fast", "stop"]));
    let (c, o) = ele_report(&ini, &[]);
    assert_eq!(code(&o), 5, "scratch still ignored: {}", show(&c, &o));
    let rows = h.admin.instances();
    assert!(
        rows[1].starts_with(&format!("pay|{p2}|f|{v15}|")) && rows[1].ends_with(&format!("|{p1}")),
        "{rows:?}"
    );
    assert_eq!(h.admin.sql("SELECT count(*) FROM utility.v_dr_pairs"), "0");

    // With a herd for scratch it is taken. Then, with every cluster idle (the primary
    // stopped too: a primary's WAL moves by itself now and then), an unchanged run
    // sends nothing: it does not even connect (an upstream that does not exist is not
    // noticed).
    h.admin.sql(&format!(
        "INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port) \
         SELECT environment_id, 'scratch', 'scratch', {p3} FROM utility.ele_environment"
    ));
    ok(pgtool("pg_ctl")
        .arg("-D")
        .arg(&h.primary.data)
        .args(["-w", "-m", "fast", "stop"]));
    let (c, o) = ele_report(&ini, &[]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "quiet: {}",
        show(&c, &o)
    );
    let rows = h.admin.instances();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[0].starts_with(&format!("pay|{p1}|f|")), "{rows:?}");
    assert!(
        rows[2].starts_with(&format!("scratch|{p3}|t|{v15}|")),
        "{rows:?}"
    );
    let gone = h.ini(
        "gone.ini",
        &format!("db_host = {SOCKET}\ndb_user = postgres\ndb_name = nosuchdb\n"),
        "cache",
        "",
    );
    let (c, o) = ele_report(&gone, &[]);
    assert_eq!(code(&o), 0, "nothing to send: {}", show(&c, &o));
    let (c, o) = ele_report(&ini, &["--dry-run"]);
    assert_eq!(json(&o), serde_json::json!([]), "{}", show(&c, &o));

    // The upstream unreachable: one line, exit 3 (a fresh cache has everything due).
    let down = h.ini(
        "down.ini",
        "db_host = 127.0.0.1\ndb_port = 1\ndb_user = postgres\ndb_name = admin\n",
        "cache-down",
        "",
    );
    let (c, o) = ele_report(&down, &[]);
    assert_eq!(code(&o), 3, "{}", show(&c, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        "cannot connect to admin database admin on 127.0.0.1 port 1 as postgres: ",
    );

    // A cluster that cannot be read: exit 4, and the others are still reported.
    h.admin.sql("DELETE FROM utility.ele_instance");
    let ghost = h.sb.p("ghost");
    h.sb.write(
        &format!("sock/.s.PGSQL.{}.lock", p4 + 1),
        format!("2147483647\n{}\n1\n{}\n\n", ghost.display(), p4 + 1),
    );
    let bad = h.ini("ghost.ini", "", "cache-ghost", &(p4 + 1).to_string());
    let (c, o) = ele_report(&bad, &[]);
    assert_eq!(code(&o), 4, "{}", show(&c, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        &format!(
            "cluster ghost on port {}: read {}/PG_VERSION",
            p4 + 1,
            ghost.display()
        ),
    );
    // (A fresh cache remembers no stopped hand-made cluster: the two running or
    // Debian ones are what this run can know of.)
    let names: Vec<String> = h
        .admin
        .instances()
        .iter()
        .map(|r| r.split('|').take(2).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(names, [format!("scratch|{p3}"), format!("dr|{p4}")]);

    // Bad configuration: one line naming what is wrong, exit 1.
    let typo =
        h.sb.write("typo.ini", "[Upstream]\ndb_port = fivefourthreetwo\n");
    let (c, o) = ele_report(&typo, &[]);
    assert_eq!(code(&o), 1, "{}", show(&c, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        "[Upstream] db_port = \"fivefourthreetwo\"",
    );
    let (c, o) = ele_report(Path::new("/nonexistent/report.ini"), &[]);
    assert_eq!(code(&o), 1, "{}", show(&c, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        "Config /nonexistent/report.ini does not exist!",
    );
    let open = h.sb.mkdir("open-cache");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ww = h.ini("ww.ini", "", "open-cache", "");
    let (c, o) = ele_report(&ww, &[]);
    assert_eq!(code(&o), 1, "{}", show(&c, &o));
    assert_one_line_error("ele_report", &stderr(&o), "writable by others");
    let _ = (&h.sb2, &h.scratch);
    finish();
}

/// psql as root, as postgres over `c`'s socket (which trusts postgres), on `db`.
fn cluster_psql(c: &Cluster, db: &str, what: &[&str]) -> String {
    let mut p = Command::new("psql");
    p.args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&c.sock)
        .args(["-p", &c.port.to_string(), "-U", "postgres", "-d", db])
        .args(what);
    ok(&mut p).trim().to_string()
}

/// The admin database on a cluster that wants passwords: ele_report's password comes
/// from ~/.pgpass (0600); a wrong one, or a file others may read (ignored), fails with
/// one line and exit 3, and the password shows nowhere, debug log included.
#[test]
fn report_to_an_upstream_that_wants_a_password() {
    const ROLE: &str = "hk_ele_reporter";
    const SECRET: &str = "Ele-pw-7c1e:x";
    const WRONG: &str = "Ele-wrong-5d2a";
    let sb = Sandbox::new("ele-pw");
    let port = common::pg::free_port();
    let c = Cluster::with_password(&sb, "pw", port, ROLE, SECRET);
    // The admin database lives on that cluster, and the cluster reports itself.
    cluster_psql(&c, "postgres", &["-c", "CREATE DATABASE admin"]);
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/create_schema.sql");
    cluster_psql(&c, "admin", &["-f", schema.to_str().unwrap()]);
    cluster_psql(
        &c,
        "admin",
        &[
            "-c",
            &format!("GRANT util_exec TO {ROLE}"),
            "-c",
            "INSERT INTO utility.ele_environment (env_name) VALUES ('test')",
            "-c",
            &format!(
                "INSERT INTO utility.ele_server (environment_id, hostname) VALUES (1, '{}')",
                host()
            ),
            "-c",
            &format!(
                "INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port) \
                 VALUES (1, 'pw', 'pw', {port})"
            ),
        ],
    );
    let home = sb.mkdir("home");
    let pgpass = home.join(".pgpass");
    let write_pgpass = |pw: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        sb.write(
            "home/.pgpass",
            format!(
                "# host:port:db:user:password\n127.0.0.1:{port}:admin:{ROLE}:{}\n",
                pw.replace(':', "\\:")
            ),
        );
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // Each case with a cache of its own, so each has its report due.
    let ini = |case: &str| {
        sb.mkdir(&format!("etc-{case}"));
        sb.write(
            &format!("{case}.ini"),
            format!(
                "[Upstream]\ndb_host = 127.0.0.1\ndb_port = {port}\ndb_user = {ROLE}\ndb_name = admin\n\
                 [Report]\ncache_dir = {}\n[Discovery]\nsocket_dirs = {}\nconf_root = {}\n\
                 pg_lsclusters = none\nports = {port}\n",
                sb.p(&format!("cache-{case}")).display(),
                c.sock.display(),
                sb.p(&format!("etc-{case}")).display(),
            ),
        )
    };
    let report = |case: &str| {
        let log = sb.write(&format!("{case}.log"), "");
        let mut cmd = as_postgres(postgres_bin(env!("CARGO_BIN_EXE_ele_report")));
        cmd.env("HOME", &home)
            .arg("-c")
            .arg(ini(case))
            .arg("-d")
            .arg("-L")
            .arg(&log);
        let o = run(&mut cmd);
        // Its output, its log and its cache.
        let mut everything = format!(
            "{}{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap()
        );
        for f in std::fs::read_dir(sb.p(&format!("cache-{case}")))
            .into_iter()
            .flatten()
            .flatten()
        {
            everything.push_str(&String::from_utf8_lossy(&std::fs::read(f.path()).unwrap()));
        }
        for pw in [SECRET, WRONG, "Ele-pw-7c1e"] {
            assert!(
                !everything.contains(pw),
                "the password is shown: {}",
                show(&cmd, &o)
            );
        }
        (cmd, o, std::fs::read_to_string(&log).unwrap())
    };
    let stored = || {
        cluster_psql(
            &c,
            "admin",
            &[
                "-c",
                "SELECT base_name, db_port, is_online FROM utility.v_flat_instance",
            ],
        )
    };
    let target =
        format!("cannot connect to admin database admin on 127.0.0.1 port {port} as {ROLE}: ");

    // A wrong password: refused, one line, exit 3; nothing stored.
    write_pgpass(WRONG, 0o600);
    let (cmd, o, _) = report("wrong");
    assert_eq!(code(&o), 3, "{}", show(&cmd, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        &format!("{target}password authentication failed for user \"{ROLE}\""),
    );
    assert_eq!(stored(), "");

    // The right password in a file others may read: ignored, and the line says so.
    write_pgpass(SECRET, 0o640);
    let (cmd, o, _) = report("open");
    assert_eq!(code(&o), 3, "{}", show(&cmd, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        &format!(
            "(password file {} has group or world access; permissions should be u=rw (0600) or less; ignored)",
            pgpass.display()
        ),
    );
    assert_eq!(stored(), "");

    // 0600, but this host's server has no environment: connected, and the instance the
    // upstream silently dropped is named, with why.
    write_pgpass(SECRET, 0o600);
    cluster_psql(
        &c,
        "admin",
        &["-c", "UPDATE utility.ele_server SET environment_id = NULL"],
    );
    let (cmd, o, _) = report("noenv");
    assert_eq!(code(&o), 5, "{}", show(&cmd, &o));
    assert_one_line_error(
        "ele_report",
        &stderr(&o),
        &format!(
            "instance pw on port {port} ignored by the upstream: server {} has no environment",
            host()
        ),
    );
    assert_eq!(stored(), "");
    cluster_psql(
        &c,
        "admin",
        &["-c", "UPDATE utility.ele_server SET environment_id = 1"],
    );

    // Reported, quietly (the debug log went to the file).
    let (cmd, o, log) = report("right");
    assert_eq!(code(&o), 0, "{}", show(&cmd, &o));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "{}",
        show(&cmd, &o)
    );
    assert!(log.contains("sending 1 instance(s)"), "{log}");
    assert_eq!(stored(), format!("pw|{port}|t"));
    assert!(
        sb.p("cache-right/report.json").exists(),
        "the cache was looked at"
    );
    finish();
}

fn by_port_checkin(v: &serde_json::Value, port: u16) -> &serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["nPort"] == port)
        .unwrap_or_else(|| panic!("no check-in for port {port} in {v:#}"))
}

/// The latest checkpoint's position of a stopped cluster, as pg_controldata says.
fn control_lsn(data: &Path) -> i64 {
    let out = ok(pgtool("pg_controldata").arg(data));
    let line = out
        .lines()
        .find(|l| l.starts_with("Latest checkpoint location:"))
        .unwrap();
    let lsn = line.rsplit(' ').next().unwrap();
    let (hi, lo) = lsn.split_once('/').unwrap();
    (i64::from_str_radix(hi, 16).unwrap() << 32) + i64::from_str_radix(lo, 16).unwrap()
}

fn pid_of(c: &Cluster) -> String {
    std::fs::read_to_string(c.data.join("postmaster.pid"))
        .map(|t| t.lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn ctl_start_stop_reload_promote() {
    let h = Host::new("ctl", 56311);
    let [_p1, p2, _p3, p4] = h.ports;
    let ini = h.ini("report.ini", "", "cache", "");
    // ele_report first: its cache is how a stopped hand-made cluster is found again.
    let (c, o) = ele_report(&ini, &[]);
    assert_eq!(code(&o), 5, "scratch has no herd: {}", show(&c, &o));

    let (c, o) = ele_ctl(&ini, &["list"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(json(&o).as_array().unwrap().len(), 4);

    // As an admin system calls it: over SSH as the database owner, the exit status and
    // the one line coming through.
    let sshd = common::sshd::Sshd::start(&h.sb, common::pg::free_port());
    let remote = |args: &[&str]| {
        let mut c = sshd.client();
        c.arg("127.0.0.1")
            .arg(postgres_bin(env!("CARGO_BIN_EXE_ele_ctl")))
            .arg("-c")
            .arg(&ini)
            .args(args);
        let o = run(&mut c);
        (c, o)
    };
    let (c, o) = remote(&["scratch", "status"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(json(&o)["name"], "scratch");
    let (c, o) = remote(&["nosuch", "status"]);
    assert_eq!(code(&o), 5, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "unknown cluster nosuch");
    drop(sshd);

    // Unknown and ambiguous names; the exit status says which.
    let (c, o) = ele_ctl(&ini, &["nosuch", "status"]);
    assert_eq!(code(&o), 5, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), &format!("15/dr (port {p4})"));
    assert!(stderr(&o).contains("unknown cluster nosuch; clusters here: "));
    let (c, o) = ele_ctl(&ini, &["pay", "status"]);
    assert_eq!(code(&o), 5, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "ambiguous");
    let (c, o) = ele_ctl(&ini, &["scratch", "status"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(json(&o)["online"], true);

    // The hand-made cluster, through pg_ctl -D.
    let (c, o) = ele_ctl(&ini, &["scratch", "stop"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert!(!h.scratch.running());
    let (c, o) = ele_ctl(&ini, &["scratch", "stop"]);
    assert_eq!(code(&o), 4, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "is not running");
    let (c, o) = ele_ctl(&ini, &["scratch", "status"]);
    assert_eq!(code(&o), 4, "{}", show(&c, &o));
    assert_eq!(json(&o)["online"], false);
    let (c, o) = ele_ctl(&ini, &["scratch", "start"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(h.scratch.psql("SELECT 1"), "1");
    let (c, o) = ele_ctl(&ini, &["scratch", "start"]);
    assert_eq!(code(&o), 3, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "is already running");
    h.scratch.psql("ALTER SYSTEM SET work_mem = '7MB'");
    let (c, o) = ele_ctl(&ini, &["scratch", "reload"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert!(common::wait_for(std::time::Duration::from_secs(10), || h
        .scratch
        .psql("SHOW work_mem")
        == "7MB"));
    let before = pid_of(&h.scratch);
    let (c, o) = ele_ctl(&ini, &["scratch", "restart", "-m", "immediate"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_ne!(pid_of(&h.scratch), before);

    // A smart stop waits for this session; it times out, then --force gets through.
    let mut sleeper = common::cmd::Bg(Some(
        h.scratch
            .psql_cmd("SELECT pg_sleep(60)")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(common::wait_for(std::time::Duration::from_secs(10), || h
        .scratch
        .psql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
        )
        == "1"));
    let (c, o) = ele_ctl(&ini, &["scratch", "stop", "-m", "smart", "-t", "2"]);
    assert_eq!(code(&o), 6, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "stop did not finish within 2s");
    let (c, o) = ele_ctl(
        &ini,
        &["scratch", "stop", "-m", "smart", "-t", "2", "--force"],
    );
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert!(!h.scratch.running() || pid_of(&h.scratch).is_empty());
    sleeper.wait();

    // The Debian-style cluster through pg_ctlcluster (its log is the conf dir's `log`).
    let (c, o) = ele_ctl(&ini, &["15/dr", "start"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(h.dr.psql("SELECT 1"), "1");
    let debian_log = h.sb.p("dr-debian.log");
    assert!(
        std::fs::metadata(&debian_log).unwrap().len() > 0,
        "pg_ctlcluster logs there"
    );
    let (c, o) = ele_ctl(&ini, &["15/dr", "stop"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert!(!h.dr.running());
    // ... and without pg_ctlcluster on the PATH: pg_ctl -D.
    for action in ["start", "stop"] {
        let mut c = as_postgres(postgres_bin(env!("CARGO_BIN_EXE_ele_ctl")));
        c.env("PATH", "/nonexistent").arg("-c").arg(&ini);
        c.args([&p4.to_string(), action]);
        let o = run(&mut c);
        assert_eq!(code(&o), 0, "{}", show(&c, &o));
    }
    assert!(h.dr.data.join("startup.log").exists());
    assert!(!h.dr.running());

    // Promote the replica: it returns out of recovery, and the next report says primary.
    let (c, o) = ele_ctl(&ini, &[&p2.to_string(), "promote"]);
    assert_eq!(code(&o), 0, "{}", show(&c, &o));
    assert_eq!(h.replica.in_recovery(), Some(false));
    let (c, o) = ele_ctl(&ini, &[&p2.to_string(), "promote"]);
    assert_eq!(code(&o), 7, "{}", show(&c, &o));
    assert_one_line_error("ele_ctl", &stderr(&o), "is not a replica");
    let (c, o) = ele_report(&ini, &[]);
    assert_eq!(code(&o), 5, "{}", show(&c, &o));
    let rows = h.admin.instances();
    let replica_row = rows
        .iter()
        .find(|r| r.starts_with(&format!("pay|{p2}|")))
        .unwrap();
    assert!(replica_row.ends_with('|'), "a primary now: {rows:?}");
    assert_eq!(h.admin.sql("SELECT count(*) FROM utility.v_dr_pairs"), "0");
    let _ = (&h.primary, &h.sb2);
    finish();
}
