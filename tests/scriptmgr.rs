//! scriptmgr starting, reporting, reloading and stopping the real pgqd and a dummy
//! daemon, including a service that fails to start.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// scriptmgr started as from a shell's `&` without job control: SIGINT and SIGQUIT
/// ignored, which exec passes on. Its services must still stop on SIGINT.
fn scriptmgr(ini: &Path, args: &[&str]) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_scriptmgr"));
    c.arg(ini).args(args);
    // SAFETY: signal(2) only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            use nix::sys::signal::{signal, SigHandler, Signal};
            signal(Signal::SIGINT, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            signal(Signal::SIGQUIT, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let out = c.output().unwrap();
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

/// A scriptmgr setup in a directory postgres can use: one `[dummy]` service (with
/// `service_extra`) whose script records who it runs as, then detaches like a Skytools
/// daemon. Returns (sandbox, scriptmgr ini, the identity file).
fn identity_job(
    service_extra: &str,
) -> (common::pg::Sandbox, std::path::PathBuf, std::path::PathBuf) {
    let sb = common::pg::Sandbox::new("scriptmgr");
    let dir = sb.p("");
    let who = sb.p("who");
    let pid = sb.p("job.pid");
    sb.write(
        "job.ini",
        format!("[dummy]\njob_name = job1\npidfile = {}\n", pid.display()),
    );
    script(
        &sb.p("dummy.sh"),
        &format!(
            "{{ id -un; id -G; echo \"$HOME $USER $LOGNAME\"; }} > {who}\n\
             setsid -f sh -c 'echo $$ > {pid}; while sleep 1; do :; done' job \"$1\" </dev/null >/dev/null 2>&1",
            who = who.display(),
            pid = pid.display()
        ),
    );
    let ini = sb.write(
        "skytools.ini",
        format!(
            "[scriptmgr]\njob_name = scriptmgr\nconfig_list = {0}/job.ini\n\n\
             [dummy]\nscript = {0}/dummy.sh\ncwd = /\n{service_extra}\n",
            dir.display()
        ),
    );
    (sb, ini, who)
}

fn groups_of(user: &str) -> Vec<String> {
    let u = nix::unistd::User::from_name(user).unwrap().unwrap();
    let name = std::ffi::CString::new(user).unwrap();
    let mut g: Vec<String> = nix::unistd::getgrouplist(&name, u.gid)
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    g.sort();
    g.dedup();
    g
}

#[test]
fn a_job_with_user_runs_with_that_users_groups_and_home() {
    let (_sb, ini, who) = identity_job("user = postgres");
    let (code, out) = scriptmgr(&ini, &["start", "job1"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
    let text = fs::read_to_string(&who).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "postgres", "{text}");
    let mut got: Vec<String> = lines[1].split_whitespace().map(String::from).collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        groups_of("postgres"),
        "id -G: postgres's groups, not root's"
    );
    let home = nix::unistd::User::from_name("postgres")
        .unwrap()
        .unwrap()
        .dir;
    assert_eq!(lines[2], format!("{} postgres postgres", home.display()));
    let (code, out) = scriptmgr(&ini, &["stop", "job1"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_user_that_cannot_be_applied_is_a_warning() {
    // scriptmgr run by postgres (not root) cannot switch to nobody: it says so.
    let (_sb, ini, who) = identity_job("user = nobody");
    let bin = common::pg::postgres_bin(env!("CARGO_BIN_EXE_scriptmgr"));
    let run = |action: &str| {
        let out = common::pg::as_postgres(bin)
            .arg(&ini)
            .arg(action)
            .arg("job1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run("start");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        "scriptmgr: warning: job1: [dummy] user = nobody is not applied: scriptmgr runs \
         as postgres, not root, so the job runs as postgres"
    );
    assert_eq!(
        fs::read_to_string(&who).unwrap().lines().next(),
        Some("postgres")
    );
    let (code, stdout, stderr) = run("stop");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}
