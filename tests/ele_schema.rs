//! sql/create_schema.sql against the real PostgreSQL on this host: idempotent on an empty
//! database and over a legacy ElepHaaS one, and the check-in's fixed defects.
//!
//! Each test makes its own database and drops it at the end.

mod common;

use common::pg::{HostDb, HOST_SOCKET};
use tokio_postgres::{Client, NoTls};

/// A database of its own (dropped on drop) and a session to it.
struct Db {
    host: HostDb,
}

impl Db {
    fn new(tag: &str) -> Db {
        Db {
            host: HostDb::new(&format!("ele_schema_{tag}")),
        }
    }

    fn load_schema(&self) {
        self.host.load_admin_schema();
    }

    async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host={HOST_SOCKET} user=postgres dbname={}", self.host.name),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    }
}

/// What the schema holds, as text: tables with their columns, views, functions with
/// their arguments, triggers, indexes, and the grants to util_exec.
async fn catalog(c: &Client) -> Vec<String> {
    let q = "
      SELECT 'col ' || table_name || '.' || column_name || ' ' || data_type
             || ' ' || is_nullable || ' ' || coalesce(column_default, '')
        FROM information_schema.columns WHERE table_schema = 'utility'
      UNION ALL
      SELECT 'fn ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') '
             || md5(p.prosrc)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'utility'
      UNION ALL
      SELECT 'view ' || viewname || ' ' || md5(definition)
        FROM pg_views WHERE schemaname = 'utility'
      UNION ALL
      SELECT 'trigger ' || tgname FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'utility' AND NOT t.tgisinternal
      UNION ALL
      SELECT 'index ' || indexname || ' ' || indexdef
        FROM pg_indexes WHERE schemaname = 'utility'
      UNION ALL
      SELECT 'grant ' || table_name || ' ' || privilege_type
        FROM information_schema.role_table_grants
       WHERE grantee = 'util_exec' AND table_schema = 'utility'
      UNION ALL
      SELECT 'defacl ' || defaclobjtype::text || ' ' || defaclacl::text
        FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
       WHERE n.nspname = 'utility'
      ORDER BY 1";
    c.query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Mirrors sp_instance_checkin's eight parameters, in order.
#[allow(clippy::too_many_arguments)]
async fn checkin(
    c: &Client,
    herd: &str,
    host: &str,
    port: i32,
    ver: Option<&str>,
    online: Option<bool>,
    data: Option<&str>,
    master: Option<&str>,
    xlog: Option<i64>,
) {
    c.execute(
        "SELECT utility.sp_instance_checkin(sHerd := $1, sHost := $2, nPort := $3, \
         sVer := $4, bOnline := $5, sDataDir := $6, sMasterHost := $7, nXlog := $8)",
        &[&herd, &host, &port, &ver, &online, &data, &master, &xlog],
    )
    .await
    .unwrap();
}

/// (host, port, version, pgdata, xlog_pos, online, master's port)
type Flat = (String, i32, String, String, Option<i64>, bool, Option<i32>);

async fn flat(c: &Client) -> Vec<Flat> {
    c.query(
        "SELECT f.hostname, f.db_port, f.version, f.pgdata, f.xlog_pos, f.is_online, \
                m.db_port \
           FROM utility.v_flat_instance f \
           LEFT JOIN utility.v_flat_instance m ON m.instance_id = f.master_id \
          ORDER BY f.db_port",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    })
    .collect()
}

async fn seed(c: &Client) {
    c.batch_execute(
        "INSERT INTO utility.ele_environment (env_name, env_descr) VALUES ('prod', '');
         INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, herd_descr,
                                      db_port, pgdata, vhost)
              VALUES (1, 'main', 'Main', '', 5432, '/srv/pg/main', 'db-main');
         INSERT INTO utility.ele_server (environment_id, hostname) VALUES (1, 'db1');",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn twice_on_an_empty_database_changes_nothing() {
    let db = Db::new("twice");
    db.load_schema();
    let c = db.client().await;
    let first = catalog(&c).await;
    assert!(first.iter().any(|l| l.starts_with("view v_dr_pairs")));
    assert!(first
        .iter()
        .any(|l| l.starts_with("col ele_herd.base_name")));
    // The original's signatures, parameter names and defaults exactly (what reporters
    // written against ele_tools call with named arguments).
    for sig in [
        "fn sp_discover_server(shost character varying) ",
        "fn sp_get_herd(sname character varying, nport integer, nenv integer) ",
        "fn sp_instance_checkin(sherd character varying, shost character varying, \
         nport integer, sver character varying DEFAULT NULL::character varying, \
         bonline boolean DEFAULT NULL::boolean, sdatadir character varying DEFAULT \
         NULL::character varying, smasterhost character varying DEFAULT NULL::character \
         varying, nxlog bigint DEFAULT NULL::bigint) ",
    ] {
        assert!(
            first.iter().any(|l| l.starts_with(sig)),
            "{sig}: {:#?}",
            first
                .iter()
                .filter(|l| l.starts_with("fn "))
                .collect::<Vec<_>>()
        );
    }
    let returns: Vec<String> = c
        .query(
            "SELECT p.proname || ' ' || pg_get_function_result(p.oid) FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'utility' \
             AND p.proname IN ('sp_discover_server', 'sp_get_herd', 'sp_instance_checkin') \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        returns,
        [
            "sp_discover_server integer",
            "sp_get_herd integer",
            "sp_instance_checkin void"
        ]
    );
    seed(&c).await;
    checkin(
        &c,
        "main",
        "db1",
        5432,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/main"),
        None,
        Some(7),
    )
    .await;
    db.load_schema();
    assert_eq!(catalog(&c).await, first, "a second run changed the schema");
    assert_eq!(flat(&c).await.len(), 1, "a second run lost rows");
}

#[tokio::test]
async fn checkin_fixes_the_original_defects() {
    let db = Db::new("checkin");
    db.load_schema();
    let c = db.client().await;
    seed(&c).await;

    // Host in another case than stored, xlog_pos on the very first check-in.
    checkin(
        &c,
        "MAIN",
        "DB1",
        5432,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/main"),
        None,
        Some(3 << 30),
    )
    .await;
    // A replica beside it on another port; lag 20 MiB.
    checkin(
        &c,
        "main",
        "db1",
        5433,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/replica"),
        Some("db1:5432"),
        Some((3 << 30) - 20 * 1024 * 1024),
    )
    .await;
    // A second report of the same host must not make a second instance.
    checkin(
        &c,
        "main",
        "Db1",
        5432,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/main"),
        None,
        Some(3 << 30),
    )
    .await;
    assert_eq!(
        flat(&c).await,
        vec![
            (
                "db1".into(),
                5432,
                "15.4".into(),
                "/srv/pg/main".into(),
                Some(3 << 30),
                true,
                None
            ),
            (
                "db1".into(),
                5433,
                "15.4".into(),
                "/srv/pg/replica".into(),
                Some((3 << 30) - 20 * 1024 * 1024),
                true,
                Some(5432)
            ),
        ]
    );
    let lag: String = c
        .query_one("SELECT mb_lag::text FROM utility.v_dr_pairs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lag, "20.00");

    // local_pgdata follows the instance; a beta version does not break the check-in;
    // a partial report keeps the master.
    checkin(
        &c,
        "main",
        "db1",
        5433,
        Some("16beta1"),
        Some(true),
        Some("/srv/pg/moved"),
        Some("db1:5432"),
        None,
    )
    .await;
    checkin(&c, "main", "db1", 5433, None, Some(false), None, None, None).await;
    let r = &flat(&c).await[1];
    assert_eq!(
        (r.2.as_str(), r.3.as_str(), r.5, r.6),
        ("16beta1", "/srv/pg/moved", false, Some(5432))
    );

    // Promoted: a full report without a master makes it a primary.
    checkin(
        &c,
        "main",
        "db1",
        5433,
        Some("16.1"),
        Some(true),
        Some("/srv/pg/moved"),
        None,
        Some(5),
    )
    .await;
    let r = &flat(&c).await[1];
    assert_eq!((r.2.as_str(), r.6), ("16.1", None));
    assert_eq!(
        c.query("SELECT 1 FROM utility.v_dr_pairs", &[])
            .await
            .unwrap()
            .len(),
        0
    );

    // No herd for that name/port, or a server without environment: nothing stored.
    checkin(
        &c,
        "other",
        "db1",
        5440,
        Some("15.4"),
        Some(true),
        Some("/x"),
        None,
        None,
    )
    .await;
    checkin(
        &c,
        "main",
        "db2",
        5432,
        Some("15.4"),
        Some(true),
        Some("/x"),
        None,
        None,
    )
    .await;
    assert_eq!(flat(&c).await.len(), 2);
    let srv: i64 = c
        .query_one(
            "SELECT count(*) FROM utility.ele_server WHERE hostname = 'db2' \
             AND environment_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        srv, 1,
        "an unknown server is discovered without an environment"
    );

    // Audit stamps: modified moves, created stays.
    let (created, modified): (String, String) = {
        let r = c
            .query_one(
                "SELECT (modified_dt > created_dt)::text, created_dt::text \
                   FROM utility.ele_instance WHERE local_port = 5433",
                &[],
            )
            .await
            .unwrap();
        (r.get(1), r.get(0))
    };
    assert_eq!(modified, "true");
    assert!(!created.is_empty());
}

#[tokio::test]
async fn a_util_exec_member_reports_without_superuser() {
    let db = Db::new("grants");
    db.load_schema();
    let c = db.client().await;
    seed(&c).await;
    let role = format!("ele_rep_{}", std::process::id());
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN IN ROLE util_exec"
    ))
    .await
    .unwrap();
    let r = async {
        c.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
        checkin(
            &c,
            "main",
            "db1",
            5432,
            Some("15.4"),
            Some(true),
            Some("/srv/pg/main"),
            None,
            Some(1),
        )
        .await;
        let n = flat(&c).await.len();
        c.batch_execute("RESET ROLE").await.unwrap();
        n
    }
    .await;
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
    assert_eq!(r, 1);
}

/// An admin database as ElepHaaS (Django) made it, with the original ele_tools
/// functions and views in place (their shape, written for this test): date stamps
/// without defaults, no local_port, an older view column list.
const LEGACY: &str = "
CREATE SCHEMA utility;
CREATE TABLE utility.ele_environment (environment_id serial PRIMARY KEY,
  env_name varchar(40) NOT NULL, env_descr text NOT NULL,
  created_dt date NOT NULL, modified_dt date NOT NULL);
CREATE TABLE utility.ele_herd (herd_id serial PRIMARY KEY,
  environment_id integer REFERENCES utility.ele_environment,
  base_name varchar(40) NOT NULL, herd_name varchar(40) NOT NULL, herd_descr text NOT NULL,
  db_port integer NOT NULL, pgdata varchar(100) NOT NULL, vhost varchar(40) NOT NULL,
  created_dt date NOT NULL, modified_dt date NOT NULL);
CREATE TABLE utility.ele_server (server_id serial PRIMARY KEY,
  environment_id integer REFERENCES utility.ele_environment,
  hostname varchar(40) NOT NULL, created_dt date NOT NULL, modified_dt date NOT NULL);
CREATE TABLE utility.ele_instance (instance_id serial PRIMARY KEY,
  herd_id integer NOT NULL REFERENCES utility.ele_herd,
  server_id integer NOT NULL REFERENCES utility.ele_server,
  version varchar(10) NOT NULL, local_pgdata varchar(100) NOT NULL, xlog_pos bigint,
  is_online boolean NOT NULL, master_id integer REFERENCES utility.ele_instance,
  created_dt date NOT NULL, modified_dt date NOT NULL);
CREATE VIEW utility.v_flat_instance AS
  SELECT i.instance_id, s.hostname, h.base_name, h.db_port, i.is_online, i.master_id,
         i.version, h.pgdata, i.xlog_pos
    FROM utility.ele_instance i JOIN utility.ele_herd h USING (herd_id)
    JOIN utility.ele_server s USING (server_id);
CREATE FUNCTION utility.sp_instance_checkin(sHerd VARCHAR, sHost VARCHAR, nPort INT,
  sVer VARCHAR DEFAULT NULL, bOnline BOOLEAN DEFAULT NULL, sDataDir VARCHAR DEFAULT NULL,
  sMasterHost VARCHAR DEFAULT NULL, nXlog BIGINT DEFAULT NULL)
RETURNS VOID AS $$ BEGIN RETURN; END; $$ LANGUAGE plpgsql;
CREATE INDEX idx_legacy_server ON utility.ele_server (hostname);
INSERT INTO utility.ele_environment VALUES (1, 'prod', '', '2020-01-01', '2020-01-01');
INSERT INTO utility.ele_herd VALUES (1, 1, 'main', 'Main', '', 5432, '/srv/pg/main',
  'db-main', '2020-01-01', '2020-01-01');
INSERT INTO utility.ele_server VALUES (1, 1, 'db1', '2020-01-01', '2020-01-01');
INSERT INTO utility.ele_instance VALUES (1, 1, 1, '9.6', '', 42, true, NULL,
  '2020-01-01', '2020-01-01');
SELECT setval('utility.ele_environment_environment_id_seq', 1);
SELECT setval('utility.ele_herd_herd_id_seq', 1);
SELECT setval('utility.ele_server_server_id_seq', 1);
SELECT setval('utility.ele_instance_instance_id_seq', 1);
";

#[tokio::test]
async fn over_a_legacy_elephaas_database() {
    let db = Db::new("legacy");
    let c = db.client().await;
    c.batch_execute(LEGACY).await.unwrap();
    db.load_schema();
    let after_first = catalog(&c).await;
    db.load_schema();
    assert_eq!(
        catalog(&c).await,
        after_first,
        "a second run changed the schema"
    );

    // The legacy row is kept and found by the new check-in, not duplicated.
    assert_eq!(
        flat(&c).await,
        vec![(
            "db1".into(),
            5432,
            "9.6".into(),
            "/srv/pg/main".into(),
            Some(42),
            true,
            None
        )]
    );
    checkin(
        &c,
        "main",
        "DB1",
        5432,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/main"),
        None,
        Some(99),
    )
    .await;
    checkin(
        &c,
        "main",
        "db1",
        5433,
        Some("15.4"),
        Some(true),
        Some("/srv/pg/r"),
        Some("db1:5432"),
        Some(90),
    )
    .await;
    let rows = flat(&c).await;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].2.as_str(), rows[0].4), ("15.4", Some(99)));
    let created: String = c
        .query_one(
            "SELECT created_dt::text FROM utility.ele_instance WHERE instance_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        created, "2020-01-01",
        "the audit trigger must keep created_dt"
    );
}

/// What the original ele_tools script left on an empty database (its tables without
/// ele_herd.base_name, its indexes and triggers, its functions; the view and the SQL
/// function it could not make missing), with rows an operator entered: our script runs
/// over it twice, ends with one object of each kind under the original's names, keeps
/// the rows, and ele_report then reports a real cluster into it.
#[tokio::test]
async fn over_what_the_original_script_left() {
    let db = Db::new("orig");
    let fixture = common::fixture("ele/legacy_ele_tools.sql");
    // As the original was run: psql going on past the statements that fail.
    let o = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            HOST_SOCKET,
            "-U",
            "postgres",
            "-d",
            &db.host.name,
        ])
        .arg("-f")
        .arg(&fixture)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("column h.base_name does not exist").count()
            + err.matches("column \"base_name\" does not exist").count(),
        2,
        "the view and sp_get_herd fail, nothing else: {err}"
    );
    assert_eq!(err.matches("ERROR").count(), 2, "{err}");
    let c = db.client().await;
    let left = catalog(&c).await;
    let has = |cat: &[String], p: &str| cat.iter().any(|l| l.starts_with(p));
    assert!(!has(&left, "col ele_herd.base_name"), "{left:#?}");
    assert!(!has(&left, "view v_flat_instance") && !has(&left, "fn sp_get_herd("));
    assert!(has(
        &left,
        "fn sp_instance_checkin(sherd character varying, shost"
    ));
    assert!(
        has(&left, "trigger t_ele_herd_timestamp_b_iu")
            && has(&left, "index idx_instance_herd_id ")
    );

    let sb = common::pg::Sandbox::new("ele-orig");
    let port = common::pg::free_port();
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    c.batch_execute(&format!(
        "INSERT INTO utility.ele_environment (env_name, env_descr) VALUES ('prod', '');
         INSERT INTO utility.ele_herd (environment_id, herd_name, herd_descr, db_port, pgdata, vhost)
              VALUES (1, 'Pay', NULL, {port}, '/srv/pg/pay', 'db-pay'),
                     (1, 'A herd whose name is longer than forty characters', '', 5999, '/x', '');
         INSERT INTO utility.ele_server (environment_id, hostname) VALUES (1, '{}');
         INSERT INTO utility.ele_instance (version, local_pgdata, xlog_pos, is_online, herd_id, server_id)
              VALUES ('9.6', '', 42, false, 2, 1);",
        host.to_uppercase()
    ))
    .await
    .unwrap();

    db.load_schema();
    let first = catalog(&c).await;
    db.load_schema();
    assert_eq!(catalog(&c).await, first, "a second run changed the schema");
    let triggers: Vec<&String> = first.iter().filter(|l| l.starts_with("trigger ")).collect();
    assert_eq!(
        triggers,
        [
            "trigger t_ele_environment_timestamp_b_iu",
            "trigger t_ele_herd_timestamp_b_iu",
            "trigger t_ele_instance_timestamp_b_iu",
            "trigger t_ele_server_timestamp_b_iu"
        ],
        "the original's triggers replaced, not doubled"
    );
    for on in [
        "ele_instance USING btree (herd_id)",
        "ele_instance USING btree (server_id)",
        "ele_instance USING btree (master_id)",
        "ele_server USING btree (environment_id)",
    ] {
        let n = first
            .iter()
            .filter(|l| l.starts_with("index ") && l.ends_with(&format!("ON utility.{on}")))
            .count();
        assert_eq!(n, 1, "one index on {on}: {first:#?}");
    }
    let herds: Vec<String> = c
        .query(
            "SELECT base_name::text FROM utility.ele_herd ORDER BY herd_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        herds,
        ["pay", "a herd whose name is longer than forty characters"]
    );
    assert_eq!(
        flat(&c).await,
        vec![(
            host.to_uppercase(),
            5999,
            "9.6".into(),
            "/x".into(),
            Some(42),
            false,
            None
        )]
    );

    // ele_report, as from cron, reports a real cluster named pay into it.
    let cluster = common::pg::Cluster::initdb(&sb, "pay", port, 16, "cluster_name = 'pay'\n");
    cluster.start();
    sb.mkdir("etc");
    let ini = sb.write(
        "report.ini",
        format!(
            "[Upstream]\ndb_host = {HOST_SOCKET}\ndb_user = postgres\ndb_name = {}\n\
             [Report]\ncache_dir = {}\n[Discovery]\nsocket_dirs = {}\nconf_root = {}\n\
             pg_lsclusters = none\nports = {port}\n",
            db.host.name,
            sb.p("cache").display(),
            sb.sock().display(),
            sb.p("etc").display()
        ),
    );
    let mut cmd =
        common::pg::as_postgres(common::pg::postgres_bin(env!("CARGO_BIN_EXE_ele_report")));
    cmd.arg("-c").arg(&ini);
    let o = common::cmd::run(&mut cmd);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        common::cmd::show(&cmd, &o)
    );
    let rows = flat(&c).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let pay = rows.iter().find(|r| r.1 == i32::from(port)).unwrap();
    assert_eq!(
        (pay.0.as_str(), pay.3.as_str(), pay.5, pay.6),
        (
            host.to_uppercase().as_str(),
            cluster.data.to_str().unwrap(),
            true,
            None
        )
    );
    assert!(
        pay.4.unwrap() > 0,
        "the WAL position stored on the first check-in"
    );
}

/// util_exec belongs to the whole server: a run of the script on another database that
/// makes it between this run's check and its CREATE ROLE must not fail this run. On a
/// private cluster (where util_exec does not exist yet), one session makes the role and
/// holds its transaction open until the script is seen waiting on it.
#[test]
fn a_run_racing_another_for_util_exec_fails_nothing() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let sb = common::pg::Sandbox::new("ele-role");
    let c = common::pg::Cluster::initdb(&sb, "roles", common::pg::free_port(), 16, "");
    c.start();
    let psql = || {
        let mut p = Command::new("psql");
        p.args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&c.sock)
            .args([
                "-p",
                &c.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ]);
        p
    };
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'util_exec'"),
        "0"
    );
    let mut other = common::cmd::Bg(Some(
        psql()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut to_other = other.0.as_mut().unwrap().stdin.take().unwrap();
    writeln!(to_other, "BEGIN;\nCREATE ROLE util_exec NOLOGIN;").unwrap();
    to_other.flush().unwrap();
    let made = common::wait_for(std::time::Duration::from_secs(30), || {
        c.psql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND query = 'CREATE ROLE util_exec NOLOGIN;'",
        ) == "1"
    });
    assert!(made, "the other session did not make the role");
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/create_schema.sql");
    let mut run = common::cmd::Bg(Some(
        psql()
            .arg("-f")
            .arg(&schema)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let waiting = common::wait_for(std::time::Duration::from_secs(30), || {
        c.psql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'DO $$%CREATE ROLE util_exec%'",
        ) == "1"
    });
    assert!(
        waiting,
        "the script never waited on the other session's role"
    );
    writeln!(to_other, "COMMIT;").unwrap();
    drop(to_other);
    assert!(other.wait().success());
    let child = run.0.take().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'util_exec'"),
        "1"
    );
}
