use super::*;

// ---------------------------------------------------------------------------------------
// A password in master_db never reaches stderr or the log, whatever fails
// ---------------------------------------------------------------------------------------

#[test]
fn a_password_in_master_db_never_reaches_stderr_or_the_log() {
    let _g = serial();
    let sb = Sandbox::new("secrets");
    let data = sb.mkdir("data");
    fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    chown_pg(&data.join("PG_VERSION"));
    let log = sb.p("walmgr-master.log");
    let ini = |name: &str, db: &str| {
        sb.write(
            name,
            format!(
                "[walmgr]\njob_name = wal-master\nlogfile = {log}\nmaster_db = {db}\n\
                 master_data = {data}\nmaster_bin = {PGBIN}\nslave = {store}\n\
                 setup_method = alter_system\n",
                log = log.display(),
                data = data.display(),
                store = sb.p("store").display(),
            ),
        )
    };
    // The host's server answers (trust auth ignores the password), but its data
    // directory is not master_data; and a port where nothing listens.
    let answering = ini(
        "answering.ini",
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres password=hunter2",
    );
    let refused = ini(
        "refused.ini",
        "postgresql://postgres:hunter2@127.0.0.1:1/postgres",
    );
    for (ini, cmd) in [
        (&answering, "backup"),
        (&refused, "backup"),
        (&refused, "setup"),
    ] {
        let err = fails(walmgr().arg(ini).arg(cmd));
        assert_one_line_error(&err, "");
        assert!(!err.contains("hunter2"), "{cmd}: password on stderr: {err}");
        assert!(err.contains("***"), "{cmd}: {err}");
    }
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("hunter2"), "password in the log:\n{text}");
    finish();
}
