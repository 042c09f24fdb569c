//! scriptmgr starting, reporting, reloading and stopping the real pgqd and a dummy
//! daemon, including a service that fails to start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn scriptmgr(ini: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scriptmgr"))
        .arg(ini)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line<'a>(out: &'a str, job: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(job))
        .unwrap_or_else(|| panic!("no line for {job} in {out}"))
}

#[test]
fn starts_reports_reloads_and_stops_pgqd_and_a_dummy() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let jobs = dir.join("skytools");
    fs::create_dir(&jobs).unwrap();
    // pgqd, pointed at the local PostgreSQL (its databases need no pgq for this test).
    fs::write(
        jobs.join("ticker.ini"),
        format!(
            "[pgqd]\nbase_connstr = host=127.0.0.1 user=postgres\ndatabase_list = postgres\nsyslog = 0\n\
             logfile = {0}/pgqd.log\npidfile = {0}/pgqd.pid\nstats_period = 1\n",
            dir.display()
        ),
    )
    .unwrap();
    fs::write(
        jobs.join("worker.ini"),
        format!(
            "[dummy]\njob_name = worker1\npidfile = {}/dummy.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    fs::write(
        jobs.join("bad.ini"),
        format!("[broken]\npidfile = {}/broken.pid\n", dir.display()),
    )
    .unwrap();
    fs::write(jobs.join("notes.txt"), "not a job").unwrap();
    // A dummy daemon: detaches and records its pid without locking the pidfile, as
    // Skytools scripts do with -d; its command line carries its config file.
    script(
        &dir.join("dummy.sh"),
        &format!(
            "setsid -f sh -c 'echo $$ > {}/dummy.pid; while sleep 1; do :; done' dummy \"$1\" </dev/null >/dev/null 2>&1",
            dir.display()
        ),
    );
    script(
        &dir.join("broken.sh"),
        "echo 'cannot start: bad config' >&2; exit 1",
    );
    let ini = dir.join("skytools.ini");
    fs::write(
        &ini,
        format!(
            "[scriptmgr]\njob_name = scriptmgr\nconfig_list = {0}/skytools/*.ini\n\n[DEFAULT]\ncwd = /\n\n\
             [pgqd]\nscript = {1}\n\n[dummy]\nscript = {0}/dummy.sh\n\n[broken]\nscript = {0}/broken.sh\n",
            dir.display(),
            env!("CARGO_BIN_EXE_pgqd")
        ),
    )
    .unwrap();

    let (code, out) = scriptmgr(&ini, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "ticker").contains("stopped") && line(&out, "worker1").contains("stopped"),
        "{out}"
    );

    // start -a: the broken one fails (exit 1, its error shown), the others run.
    let (code, out) = scriptmgr(&ini, &["start", "-a"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "bad").contains("FAILED")
            && line(&out, "bad").contains("cannot start: bad config"),
        "{out}"
    );
    assert!(line(&out, "ticker").contains("started (pid"), "{out}");
    assert!(line(&out, "worker1").contains("started (pid"), "{out}");
    let pgqd_pid: i32 = fs::read_to_string(dir.join("pgqd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(hostkit::daemon::pid_alive(pgqd_pid));
    assert_eq!(
        fs::read_link(format!("/proc/{pgqd_pid}/exe")).unwrap(),
        Path::new(env!("CARGO_BIN_EXE_pgqd"))
    );

    let (code, out) = scriptmgr(&ini, &["status"]);
    assert_eq!(code, 0);
    assert!(
        line(&out, "ticker").contains(&format!("running (pid {pgqd_pid})")),
        "{out}"
    );
    let (_, out) = scriptmgr(&ini, &["start", "-t", "dummy"]);
    assert!(line(&out, "worker1").contains("already running"), "{out}");

    let (code, out) = scriptmgr(&ini, &["reload", "ticker"]);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(dir.join("pgqd.log"))
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline, "pgqd did not reload");
        std::thread::sleep(Duration::from_millis(100));
    }

    let old: i32 = fs::read_to_string(dir.join("dummy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, out) = scriptmgr(&ini, &["restart", "worker1"]);
    assert_eq!(code, 0, "{out}");
    let new: i32 = fs::read_to_string(dir.join("dummy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(old, new);
    assert!(!hostkit::daemon::pid_alive(old) && hostkit::daemon::pid_alive(new));

    let (code, out) = scriptmgr(&ini, &["stop", "-a"]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "ticker").contains("stopped (pid"), "{out}");
    assert!(!hostkit::daemon::pid_alive(pgqd_pid) && !hostkit::daemon::pid_alive(new));
    assert!(
        !dir.join("pgqd.pid").exists(),
        "pgqd removed its pidfile on SIGINT"
    );
    let (_, out) = scriptmgr(&ini, &["status"]);
    assert!(
        line(&out, "ticker").contains("stopped") && line(&out, "worker1").contains("stopped"),
        "{out}"
    );

    let (code, out) = scriptmgr(&ini, &["stop", "nosuchjob"]);
    assert_eq!(code, 1);
    assert_eq!(out.trim(), "scriptmgr: no job named nosuchjob");
    let (code, out) = scriptmgr(&ini, &["frobnicate"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn a_recycled_pid_in_a_job_pidfile_is_not_signalled() {
    // The job's pidfile names a live process that is not the job (recycled pid, lock
    // free, its command line without the job's config): stop leaves it alone.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut other = Command::new("sleep").arg("600").spawn().unwrap();
    fs::write(dir.join("job.pid"), format!("{}\n", other.id())).unwrap();
    fs::write(
        dir.join("job.ini"),
        format!(
            "[dummy]\njob_name = job1\npidfile = {}/job.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    script(&dir.join("dummy.sh"), "exit 0");
    let ini = dir.join("skytools.ini");
    fs::write(
        &ini,
        format!(
            "[scriptmgr]\njob_name = scriptmgr\nconfig_list = {0}/job.ini\n\n[dummy]\nscript = {0}/dummy.sh\n",
            dir.display()
        ),
    )
    .unwrap();
    let (code, out) = scriptmgr(&ini, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "job1").contains("stopped"), "{out}");
    let (code, out) = scriptmgr(&ini, &["stop", "job1"]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "job1").contains("not running"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        other.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}
