use super::*;

// ---------------------------------------------------------------------------------------
// `walmgr <ini> status`: the Nagios check and its node_exporter textfile
// ---------------------------------------------------------------------------------------

/// `walmgr <ini> status <extra> --prometheus <file>` as postgres: (exit code, the one
/// line, the textfile's samples). Every textfile line must parse as `name{labels} value`.
fn status(
    sb: &Sandbox,
    ini: &Path,
    extra: &[&str],
) -> (i32, String, Vec<hostkit::monitor::Sample>) {
    let prom = sb.p("walmgr.prom");
    let _ = fs::remove_file(&prom);
    let out = run(walmgr()
        .arg(ini)
        .arg("status")
        .args(extra)
        .arg("--prometheus")
        .arg(&prom));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom_text = fs::read_to_string(&prom).unwrap();
    assert_eq!(
        fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let samples =
        hostkit::monitor::parse_textfile(&prom_text).unwrap_or_else(|e| panic!("{e}\n{prom_text}"));
    assert!(samples
        .iter()
        .all(|(n, _, _)| n.starts_with("hostkit_walmgr_")));
    assert!(prom_text.contains("# TYPE hostkit_walmgr_check_state gauge\n"));
    (
        out.status.code().unwrap(),
        text.trim_end().to_string(),
        samples,
    )
}

fn value(s: &[hostkit::monitor::Sample], name: &str) -> Option<f64> {
    s.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| *v)
}

#[test]
fn status_reports_the_archive_backups_and_lag() {
    let _g = serial();
    let sb = Sandbox::new("status");
    let store = sb.p("store");
    let m = Cluster::initdb(&sb, "master", 56181, 16, "");
    m.start();
    let ini = master_ini(&sb, &m, &store.display().to_string(), "");
    ok(walmgr().arg(&ini).arg("setup"));
    // Before any backup: WARNING.
    let (code, line, _) = status(&sb, &ini, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("no base backup"), "{line}");

    ok(walmgr().arg(&ini).arg("backup"));
    m.psql("create table t as select g from generate_series(1, 1000) g");
    let seg = m.switch_and_wait_archived(60);
    let set = backup_sets(&store).pop().unwrap();
    let (code, line, s) = status(&sb, &ini, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("WALMGR OK - last segment "), "{line}");
    assert!(line.contains(&format!(", newest backup {set} ")), "{line}");
    assert!(
        line.contains(", 0 segments waiting | last_wal_age="),
        "{line}"
    );
    assert!(line.contains(" ready=0;10;100;0"), "{line}");
    assert_eq!(value(&s, "hostkit_walmgr_check_state"), Some(0.0));
    assert_eq!(value(&s, "hostkit_walmgr_backups"), Some(1.0));
    assert_eq!(
        value(&s, "hostkit_walmgr_archive_ready_segments"),
        Some(0.0)
    );
    assert!(value(&s, "hostkit_walmgr_segments").unwrap() >= 2.0);
    let (_, labels, _) = s
        .iter()
        .find(|(n, _, _)| n == "hostkit_walmgr_newest_backup_age_seconds")
        .unwrap();
    assert_eq!(labels["set"], set);
    assert_eq!(labels["job"], "wal-master");
    let (_, labels, _) = s
        .iter()
        .find(|(n, _, _)| n == "hostkit_walmgr_last_segment_age_seconds")
        .unwrap();
    assert!(
        labels["segment"].as_str() >= seg.as_str(),
        "{labels:?} {seg}"
    );
    // The slave ini sees the same store (no lag: it has no master data directory).
    let slave = slave_ini(&sb, "slave.ini", &store, &sb.p("standby"), "");
    let (code, line, _) = status(&sb, &slave, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(!line.contains("waiting"), "{line}");

    // Old by the thresholds: a stale last segment, an old newest backup.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, line, _) = status(
        &sb,
        &ini,
        &["--warn-wal-age", "0", "--crit-wal-age", "3600"],
    );
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("WALMGR WARNING - no segment archived for "),
        "{line}"
    );
    assert!(line.contains("last_wal_age="), "{line}");
    let (code, line, s) = status(
        &sb,
        &ini,
        &["--warn-backup-age", "0", "--crit-backup-age", "0"],
    );
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("WALMGR CRITICAL - newest backup "),
        "{line}"
    );
    assert_eq!(value(&s, "hostkit_walmgr_check_state"), Some(2.0));

    // Archiving failing: segments pile up as .ready in pg_wal/archive_status.
    let command = m.psql("show archive_command");
    m.psql("alter system set archive_command = 'false'");
    m.psql("select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        m.psql("insert into t select generate_series(1, 1000)");
        m.psql("select pg_switch_wal()");
    }
    let ready = || {
        names(&m.data.join("pg_wal/archive_status"))
            .iter()
            .filter(|n| n.ends_with(".ready"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(10), || ready() >= 3),
        "{}",
        ready()
    );
    let (code, line, s) = status(&sb, &ini, &["--warn-ready", "1", "--crit-ready", "2"]);
    assert_eq!(code, 2, "{line}");
    let n = value(&s, "hostkit_walmgr_archive_ready_segments").unwrap();
    assert!(n >= 3.0, "{line}");
    assert!(
        line.starts_with(&format!(
            "WALMGR CRITICAL - {n} segments waiting to be archived, "
        )),
        "{line}"
    );
    let (code, line, _) = status(&sb, &ini, &["--warn-ready", "1", "--crit-ready", "100"]);
    assert_eq!(code, 1, "{line}");
    // Archiving again: the lag drains and the check is OK.
    m.psql(&format!(
        "alter system set archive_command = $q${command}$q$"
    ));
    m.psql("select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    m.switch_and_wait_archived(90);
    assert!(wait_for(Duration::from_secs(30), || status(&sb, &ini, &[])
        .0
        == 0));
    let (_, line, _) = status(&sb, &ini, &[]);
    assert!(line.contains(", 0 segments waiting"), "{line}");

    // A bad option or ini: UNKNOWN, still one line on stdout.
    let (code, line, _) = status(&sb, &ini, &["--warn-ready", "9", "--crit-ready", "1"]);
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with("WALMGR UNKNOWN - --warn-ready/--crit-ready: "),
        "{line}"
    );
    // A value clap cannot parse is UNKNOWN too, not walmgr's usage error (exit 2).
    let out = run(walmgr()
        .arg(&ini)
        .arg("status")
        .args(["--warn-ready", "lots"]));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{}", show(&walmgr(), &out));
    assert!(
        line.starts_with("WALMGR UNKNOWN - status: ") && line.contains("lots"),
        "{line}"
    );
    let (code, line, _) = status(&sb, &sb.p("missing.ini"), &[]);
    assert_eq!(code, 3, "{line}");
    assert!(line.contains("missing.ini"), "{line}");
}
