//! pacha on the real machine (run as root): real trees in temp dirs with odd modes,
//! setuid, sticky, ACLs, xattrs, FIFOs, devices; the real git; a real sshd on loopback
//! for the master store; real dpkg for the apt hooks.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cmd::{assert_one_line_error, fails, finish, ok, run, show, Bg};
use common::wait_for;

/// A host: its config, state dir and tracked tree, all under one temp dir.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(extra: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("hk-pacha-")
            .tempdir()
            .unwrap();
        let h = Host { dir };
        fs::create_dir(h.tree()).unwrap();
        h.write_ini(extra);
        h
    }

    fn write_ini(&self, extra: &str) {
        let ini = format!(
            "[pacha]\nstate_dir = {}\nhost = testhost\nlog = stderr\ndebounce = 0.05\n{extra}",
            self.p("state").display()
        );
        fs::write(self.ini(), ini).unwrap();
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ini(&self) -> PathBuf {
        self.p("pacha.ini")
    }

    fn tree(&self) -> PathBuf {
        self.p("tree")
    }

    fn t(&self, rel: &str) -> PathBuf {
        self.tree().join(rel)
    }

    fn pacha(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pacha"));
        c.arg("-c").arg(self.ini()).env_remove("PACHA_CONFIG");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(self.pacha().args(args))
    }

    fn log(&self) -> Vec<String> {
        self.ok(&["log"]).lines().map(str::to_string).collect()
    }

    fn head(&self) -> String {
        self.log()[0].split(' ').next().unwrap().to_string()
    }
}

/// Runs a shell line on drop: what a test did to the host is undone even when it fails.
struct Undo(String);

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg("-c").arg(&self.0).status();
    }
}

fn sh(line: &str) {
    ok(Command::new("sh").arg("-ec").arg(line));
}

/// A tree with everything git alone loses.
fn populate(h: &Host) {
    let t = h.tree();
    let q = |p: &str| t.join(p).display().to_string();
    fs::create_dir_all(t.join("etc/ssh")).unwrap();
    fs::create_dir(t.join("empty")).unwrap();
    fs::create_dir(t.join("sticky")).unwrap();
    fs::create_dir(t.join("setgid")).unwrap();
    fs::write(t.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(t.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    fs::write(t.join("etc/ssh/key"), "secret key\n").unwrap();
    fs::write(t.join("suid"), "#!/bin/sh\n").unwrap();
    fs::write(t.join("odd"), "odd\n").unwrap();
    fs::write(t.join("acl"), "acl\n").unwrap();
    fs::write(t.join("xattr"), "xattr\n").unwrap();
    fs::write(t.join("setgid/in"), "in\n").unwrap();
    fs::write(t.join("etc/passwd.dpkg-old"), "ignored\n").unwrap();
    fs::write(t.join(".sw.swp"), "ignored\n").unwrap();
    sh(&format!(
        "chmod 0640 {shadow}; chown root:shadow {shadow}; chmod 0600 {key}; \
         chmod 4755 {suid}; chmod 0517 {odd}; chown nobody:nogroup {odd}; \
         chmod 1777 {sticky}; chmod 2775 {setgid}; chmod 0700 {empty}; \
         ln -s /nowhere/at/all {dang}; ln -s etc/passwd {link}; mkfifo -m 0620 {fifo}; \
         mknod -m 0640 {dev} c 1 3; ln {passwd} {hard}; \
         setfattr -n user.pacha -v 'hello world' {xattr}; \
         setfacl -m u:nobody:rw,g:nogroup:r {acl}; setfacl -d -m u:nobody:rx {setgid}; \
         touch -h -d '2001-02-03 04:05:06.789' {dang}; touch -d '2002-03-04 05:06:07' {odd}",
        shadow = q("etc/shadow"),
        key = q("etc/ssh/key"),
        suid = q("suid"),
        odd = q("odd"),
        sticky = q("sticky"),
        setgid = q("setgid"),
        empty = q("empty"),
        dang = q("dangling"),
        link = q("link"),
        fifo = q("fifo"),
        dev = q("null"),
        passwd = q("etc/passwd"),
        hard = q("hardlink"),
        xattr = q("xattr"),
        acl = q("acl"),
    ));
}

/// Everything about a tree that pacha promises to restore, keyed by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".pacha-old-") || name.ends_with(".dpkg-old") || name.ends_with(".swp") {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else {
            "file"
        };
        let mut s = format!("{kind} {:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
        if !ft.is_dir() {
            s += &format!(" mtime={}.{:09}", md.mtime(), md.mtime_nsec());
        }
        if ft.is_char_device() {
            s += &format!(" rdev={}", md.rdev());
        }
        if ft.is_symlink() {
            s += &format!(" -> {}", fs::read_link(&p).unwrap().display());
        } else if ft.is_file() {
            s += &format!(" content={:?}", fs::read_to_string(&p).unwrap());
        }
        if !ft.is_symlink() {
            let x = ok(Command::new("getfattr")
                .args(["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
                .arg(&p));
            s += &format!(" xattrs={:?}", x.lines().skip(1).collect::<Vec<_>>());
            let a = ok(Command::new("getfacl").args(["-p", "-c"]).arg(&p));
            s += &format!(" acl={:?}", a.lines().collect::<Vec<_>>());
        }
        out.insert(rel, s);
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fn assert_same(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) {
    let mut diffs = Vec::new();
    for k in want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if want.get(k) != got.get(k) {
            diffs.push(format!(
                "{k}:\n  want {:?}\n  got  {:?}",
                want.get(k),
                got.get(k)
            ));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

#[test]
fn capture_and_rollback_restore_content_and_metadata_exactly() {
    let h = Host::new("");
    populate(&h);
    let tree = h.tree();
    let out = h.ok(&["track", tree.to_str().unwrap()]);
    assert!(out.contains("tracking"), "{out}");
    let o = run(h.pacha().args(["commit", "-m", "first"]));
    assert!(o.status.success(), "{}", show(&h.pacha(), &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hardlink") && err.contains("etc/passwd"),
        "hardlink reported: {err}"
    );
    let first = h.head();
    let before = snapshot(&tree);

    // The repository is private; the metadata file is recorded, not written into the tree.
    let repo_mode = fs::metadata(h.p("state/repo.git")).unwrap().mode() & 0o777;
    assert_eq!(repo_mode, 0o700);
    assert!(!tree.join(".pacha-metadata").exists());
    let show_meta = ok(Command::new("git")
        .env("GIT_DIR", h.p("state/repo.git"))
        .args(["show", "HEAD:.pacha-metadata"]));
    for needle in [
        "\"mode\":\"4755\"",
        "\"mode\":\"1777\"",
        "\"type\":\"fifo\"",
        "\"type\":\"char\"",
        "\"rdev\":[1,3]",
        "\"target\":\"/nowhere/at/all\"",
        "\"user.pacha\":\"68656c6c6f20776f726c64\"",
        "system.posix_acl_access",
        "system.posix_acl_default",
        "\"user\":\"nobody\"",
        "\"group\":\"shadow\"",
    ] {
        assert!(show_meta.contains(needle), "{needle} not in {show_meta}");
    }
    assert!(
        !show_meta.contains("dpkg-old") && !show_meta.contains(".swp"),
        "ignored: {show_meta}"
    );
    let st = h.ok(&["status"]);
    assert_eq!(st, "", "clean after commit");

    // Damage everything, commit some of it, leave the rest uncommitted.
    let t = |p: &str| h.t(p).display().to_string();
    sh(&format!(
        "echo changed >> {passwd}; chmod 0644 {shadow}; chown root:root {shadow}; \
         chmod 0755 {suid}; setfattr -x user.pacha {xattr}; setfacl -b {acl}; rm {fifo}; \
         rmdir {empty}; rm {dang}; ln -s /elsewhere {dang}; echo new > {extra}; rm -r {ssh}",
        passwd = t("etc/passwd"),
        shadow = t("etc/shadow"),
        suid = t("suid"),
        xattr = t("xattr"),
        acl = t("acl"),
        fifo = t("fifo"),
        empty = t("empty"),
        dang = t("dangling"),
        extra = t("extra"),
        ssh = t("etc/ssh"),
    ));
    let st = h.ok(&["status"]);
    for needle in ["modified:", "metadata:", "suid (mode)", "deleted:", "new:"] {
        assert!(st.contains(needle), "{needle} not in status:\n{st}");
    }
    let diff = h.ok(&["diff"]);
    assert!(
        diff.contains("+changed") && diff.contains("--- metadata at"),
        "{diff}"
    );
    h.ok(&["commit", "-m", "damage"]);
    sh(&format!(
        "chmod 0600 {}; echo more >> {}",
        t("odd"),
        t("acl")
    ));
    let damaged = snapshot(&tree);

    h.ok(&["rollback", tree.to_str().unwrap(), "--to", &first[..10]]);
    assert_same(&before, &snapshot(&tree));
    let log = h.log();
    assert!(log[0].contains("rollback of"), "{log:?}");
    assert!(log[1].contains("state before rollback"), "{log:?}");

    // The rollback can itself be undone: the state before it was committed.
    let before_rollback = log[1].split(' ').next().unwrap().to_string();
    h.ok(&["rollback", tree.to_str().unwrap(), "--to", &before_rollback]);
    let mut undone = snapshot(&tree);
    let mut damaged2 = damaged.clone();
    // The new extra file and passwd were rewritten: their mtimes are restored too.
    undone.retain(|k, _| !k.is_empty());
    damaged2.retain(|k, _| !k.is_empty());
    assert_same(&damaged2, &undone);

    // One path only.
    h.ok(&["rollback", &t("etc/shadow"), "--to", &first]);
    assert_eq!(snapshot(&tree)["etc/shadow"], before["etc/shadow"]);
    let slog = h.ok(&["log", &t("etc/shadow")]);
    assert_eq!(
        slog.lines().count(),
        5,
        "first, damage (mode), three rollbacks: {slog}"
    );
    assert_eq!(h.ok(&["log", &t("suid")]).lines().count(), 4);
    finish();
}

#[test]
fn bad_input_gets_one_clear_line() {
    let h = Host::new("");
    fs::write(h.t("f"), "x").unwrap();
    h.ok(&["track", h.tree().to_str().unwrap()]);
    h.ok(&["commit"]);
    let untracked = h.p("elsewhere");
    fs::write(&untracked, "x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["diff".into(), "nosuchrev".into()],
            "unknown revision \"nosuchrev\"",
        ),
        (
            vec![
                "rollback".into(),
                h.t("f").display().to_string(),
                "--to".into(),
                "deadbeef".into(),
            ],
            "unknown revision",
        ),
        (
            vec!["log".into(), untracked.display().to_string()],
            "not tracked",
        ),
        (
            vec![
                "rollback".into(),
                untracked.display().to_string(),
                "--to".into(),
                "HEAD".into(),
            ],
            "not tracked",
        ),
        (
            vec!["track".into(), h.p("missing").display().to_string()],
            "missing",
        ),
        (
            vec!["untrack".into(), untracked.display().to_string()],
            "not tracked",
        ),
    ];
    for (args, what) in cases {
        let e = fails(h.pacha().args(&args));
        assert_one_line_error("pacha", &e, what);
    }
    h.write_ini("pathz = /etc\n");
    let e = fails(h.pacha().arg("status"));
    assert_one_line_error("pacha", &e, "[pacha] pathz: unknown key");
    h.write_ini("debounce = soon\n");
    let e = fails(h.pacha().arg("status"));
    assert_one_line_error("pacha", &e, "debounce");
    let e = fails(Command::new(env!("CARGO_BIN_EXE_pacha")).args([
        "-c",
        "/nonexistent/pacha.ini",
        "status",
    ]));
    assert_one_line_error("pacha", &e, "/nonexistent/pacha.ini");
    finish();
}

/// The daemon as an init script runs it; killed on drop.
fn start_daemon(h: &Host) -> Bg {
    let child = h
        .pacha()
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(h.p("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let up = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(h.p("daemon.log"))
            .unwrap_or_default()
            .contains("watching")
    });
    assert!(
        up,
        "daemon did not start: {}",
        fs::read_to_string(h.p("daemon.log")).unwrap_or_default()
    );
    Bg(Some(child))
}

fn wait_commits(h: &Host, n: usize) -> Vec<String> {
    let mut log = Vec::new();
    let done = wait_for(Duration::from_secs(15), || {
        log = h.log();
        log.len() >= n
    });
    assert!(
        done,
        "expected {n} commits, got {log:?}\n--- daemon log ---\n{}",
        fs::read_to_string(h.p("daemon.log")).unwrap_or_default()
    );
    log
}

#[test]
fn daemon_commits_in_place_edits_new_dirs_and_metadata() {
    let h = Host::new("");
    fs::create_dir(h.t("conf.d")).unwrap();
    fs::write(h.t("conf.d/a.conf"), "a=1\n").unwrap();
    h.ok(&["track", h.tree().to_str().unwrap()]);
    h.ok(&["commit", "-m", "start"]);
    let mut d = start_daemon(&h);

    // In place: same inode, appended.
    let ino = fs::metadata(h.t("conf.d/a.conf")).unwrap().ino();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(h.t("conf.d/a.conf"))
            .unwrap();
        f.write_all(b"b=2\n").unwrap();
    }
    assert_eq!(fs::metadata(h.t("conf.d/a.conf")).unwrap().ino(), ino);
    let log = wait_commits(&h, 2);
    assert!(log[0].contains("conf.d/a.conf"), "{log:?}");
    let at = ok(Command::new("git")
        .env("GIT_DIR", h.p("state/repo.git"))
        .arg("show")
        .arg(format!(
            "HEAD:{}",
            h.t("conf.d/a.conf")
                .display()
                .to_string()
                .trim_start_matches('/')
        )));
    assert_eq!(at, "a=1\nb=2\n");

    // A directory made after start is watched too.
    fs::create_dir(h.t("new")).unwrap();
    wait_commits(&h, 3);
    fs::write(h.t("new/inner"), "x").unwrap();
    let log = wait_commits(&h, 4);
    assert!(log[0].contains("new/inner"), "{log:?}");

    // Metadata only.
    fs::set_permissions(h.t("new/inner"), fs::Permissions::from_mode(0o600)).unwrap();
    let log = wait_commits(&h, 5);
    assert!(log[0].contains("new/inner"), "{log:?}");
    assert_eq!(h.ok(&["status"]), "");

    // An ignored editor file makes no commit.
    fs::write(h.t("new/.inner.swp"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(h.log().len(), 5);

    // A path tracked while it runs is watched after SIGHUP.
    let other = h.p("other");
    fs::create_dir(&other).unwrap();
    h.ok(&["track", other.to_str().unwrap()]);
    let pid = d.0.as_ref().unwrap().id();
    ok(Command::new("kill").arg("-HUP").arg(pid.to_string()));
    let log = wait_commits(&h, 6);
    assert!(
        log[0].contains("periodic") || log[0].contains("other"),
        "{log:?}"
    );
    fs::write(other.join("late"), "x").unwrap();
    let log = wait_commits(&h, 7);
    assert!(log[0].contains("other/late"), "{log:?}");

    // SIGTERM stops it cleanly.
    ok(Command::new("kill").arg("-TERM").arg(pid.to_string()));
    let st = d.wait();
    assert!(st.success(), "{st}");

    // --run-once (cron) commits what changed while no daemon ran.
    fs::write(h.t("conf.d/b.conf"), "b\n").unwrap();
    let out = h.ok(&["daemon", "--run-once"]);
    assert!(out.contains("committed"), "{out}");
    assert_eq!(h.log().len(), 8);

    // --daemonize: the parent returns once the daemon is up, the pidfile names it.
    let pidfile = h.p("pacha.pid");
    h.ok(&[
        "daemon",
        "--daemonize",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--log",
        h.p("bg.log").to_str().unwrap(),
    ]);
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    fs::write(h.t("conf.d/c.conf"), "c\n").unwrap();
    // (Its start-up commit or the watch: either records it.)
    wait_commits(&h, 9);
    let clog = h.ok(&["log", h.t("conf.d/c.conf").to_str().unwrap()]);
    assert_eq!(clog.lines().count(), 1, "{clog}");
    ok(Command::new("kill").arg("-TERM").arg(&pid));
    assert!(
        wait_for(Duration::from_secs(10), || !pidfile.exists()),
        "pidfile removed at exit"
    );
    finish();
}

/// The `[pacha]`/`[ssh]` keys for a master store reached through `sshd`.
fn master_keys(sshd: &common::sshd::Sshd, store: &Path, port: u16, known: &Path) -> String {
    format!(
        "master = 127.0.0.1\nhosts_path = {}\n[ssh]\nuser = root\nport = {port}\nconnect_timeout = 5\n\
         options = -F /dev/null -i {} -o UserKnownHostsFile={} -o IdentitiesOnly=yes -o LogLevel=ERROR\n",
        store.display(),
        sshd.key.display(),
        known.display()
    )
}

#[test]
fn push_to_master_over_ssh_retry_and_rebuild_into_another_root() {
    let sb = common::pg::Sandbox::new("pacha");
    // Not a fixed port: one in the ephemeral range can be taken by any connection.
    let port = common::pg::free_port();
    let mut sshd = common::sshd::Sshd::start(&sb, port);
    let master = tempfile::Builder::new()
        .prefix("hk-pacha-master-")
        .tempdir()
        .unwrap();
    let store = master.path().join("hosts");
    let keys = master_keys(&sshd, &store, port, &sshd.known_hosts);

    // A user that exists when the tree is recorded, gone when it is rebuilt.
    let user = format!("pachat{}", std::process::id() % 100000);
    ok(Command::new("useradd").args(["-M", "-N", "-s", "/usr/sbin/nologin", &user]));
    let _undo_user = Undo(format!("userdel {user} 2>/dev/null"));
    let h = Host::new(&keys);
    populate(&h);
    fs::write(h.t("owned"), "owned\n").unwrap();
    ok(Command::new("chown").arg(&user).arg(h.t("owned")));
    h.ok(&["track", h.tree().to_str().unwrap()]);
    let out = h.ok(&["commit", "-m", "first"]);
    assert!(out.contains("committed"), "{out}");
    ok(Command::new("userdel").arg(&user));
    let first = h.head();
    let hostrepo = store.join("testhost");
    let mlog = ok(Command::new("git")
        .env("GIT_DIR", &hostrepo)
        .args(["log", "--format=%H"]));
    assert_eq!(mlog.trim(), first, "pushed to the master store");
    assert_eq!(fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(&hostrepo).unwrap().mode() & 0o777, 0o700);

    // sshd down: the commit is made, the push fails loudly and is remembered.
    sshd.stop();
    fs::write(h.t("etc/passwd"), "root:x:0:0::/root:/bin/bash\n").unwrap();
    let o = run(h.pacha().args(["commit", "-m", "while down"]));
    assert_eq!(o.status.code(), Some(7), "{}", show(&h.pacha(), &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("push to ssh://root@127.0.0.1") && err.contains("retried"),
        "{err}"
    );
    let second = h.head();
    assert_ne!(second, first);
    assert!(h.ok(&["status"]).contains("push pending:"));
    // Back up: the next commit, even with nothing new, pushes what is pending.
    sshd.restart();
    let out = h.ok(&["commit"]);
    assert!(out.contains("nothing changed"), "{out}");
    let mlog = ok(Command::new("git")
        .env("GIT_DIR", &hostrepo)
        .args(["log", "--format=%H"]));
    assert_eq!(mlog.lines().next(), Some(second.as_str()));
    assert!(!h.ok(&["status"]).contains("push pending"));

    // Another machine rebuilds testhost at the first commit into a directory.
    let b = Host::new(&keys.replace("host = testhost", ""));
    let root = b.p("root");
    fs::create_dir(&root).unwrap();
    let hooks = b.p("hooks");
    fs::create_dir_all(hooks.join("pacha_pre")).unwrap();
    fs::create_dir_all(hooks.join("pacha_post")).unwrap();
    let trace = b.p("trace");
    for (d, n) in [
        ("pacha_pre", "20-second"),
        ("pacha_pre", "10-first"),
        ("pacha_post", "10-post"),
    ] {
        let f = hooks.join(d).join(n);
        fs::write(
            &f,
            format!(
                "#!/bin/sh\necho \"{n} $PACHA_HOST $PACHA_REV\" >> {}\n",
                trace.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ini = fs::read_to_string(b.ini()).unwrap().replacen(
        "[pacha]\n",
        &format!("[pacha]\nhooks_dir = {}\n", hooks.display()),
        1,
    );
    fs::write(b.ini(), ini).unwrap();
    let rootarg = root.to_str().unwrap();
    let o = run(b.pacha().args([
        "rebuild",
        "testhost",
        "--rev",
        &first[..8],
        "--root",
        rootarg,
    ]));
    assert!(o.status.success(), "{}", show(&b.pacha(), &o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("paths to change") && plan.contains("run with --yes"),
        "{plan}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("user {user} does not exist here"))
    );
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "nothing changed without --yes"
    );
    assert!(!trace.exists());

    let o = run(b.pacha().args([
        "rebuild",
        "testhost",
        "--rev",
        &first[..8],
        "--root",
        rootarg,
        "--yes",
    ]));
    assert!(o.status.success(), "{}", show(&b.pacha(), &o));
    let rebuilt = root.join(h.tree().strip_prefix("/").unwrap());
    let mut want = snapshot(&h.tree());
    // etc/passwd (and its hardlink) changed after the first commit; what was recorded
    // then is restored.
    let mut got = snapshot(&rebuilt);
    for k in ["etc/passwd", "hardlink"] {
        want.remove(k);
        assert!(got.remove(k).unwrap().contains("/bin/sh\\n"), "{k}");
    }
    want.remove("");
    got.remove("");
    assert_same(&want, &got);
    assert_eq!(
        fs::read_to_string(&trace).unwrap(),
        format!(
            "10-first testhost {first}\n20-second testhost {first}\n10-post testhost {first}\n"
        )
    );

    // Again at the newest commit: the file that differs is swapped, the old one kept.
    let o = run(b
        .pacha()
        .args(["rebuild", "testhost", "--root", rootarg, "--yes"]));
    assert!(o.status.success(), "{}", show(&b.pacha(), &o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("2 of") && out.contains("etc/passwd: mtime, content"),
        "{out}"
    );
    assert!(fs::read_to_string(rebuilt.join("etc/passwd"))
        .unwrap()
        .contains("/bin/bash"));
    let kept = rebuilt.join(format!("etc/passwd.pacha-old-{}", &second[..12]));
    assert!(
        fs::read_to_string(&kept).unwrap().contains("/bin/sh\n"),
        "{}",
        kept.display()
    );

    // A failing pre hook stops before anything changes.
    fs::write(hooks.join("pacha_pre/15-fail"), "#!/bin/sh\nexit 3\n").unwrap();
    fs::set_permissions(
        hooks.join("pacha_pre/15-fail"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(rebuilt.join("etc/passwd"), "local\n").unwrap();
    let e = fails(
        b.pacha()
            .args(["rebuild", "testhost", "--root", rootarg, "--yes"])
            .stdout(Stdio::null()),
    );
    assert!(e.contains("15-fail failed"), "{e}");
    assert_eq!(
        fs::read_to_string(rebuilt.join("etc/passwd")).unwrap(),
        "local\n"
    );

    // Unknown REV, and a master whose host key is not known: one clear line each.
    let e = fails(
        b.pacha()
            .args(["rebuild", "testhost", "--rev", "nosuch", "--root", rootarg]),
    );
    assert_one_line_error("pacha", &e, "unknown revision \"nosuch\"");
    let empty_known = b.p("empty_known_hosts");
    fs::write(&empty_known, "").unwrap();
    let c = Host::new(&master_keys(&sshd, &store, port, &empty_known));
    let e = fails(c.pacha().args(["rebuild", "testhost", "--root", rootarg]));
    assert_one_line_error("pacha", &e, "host key verification failed");
    fs::write(c.t("f"), "x").unwrap();
    c.ok(&["track", c.tree().to_str().unwrap()]);
    let e = fails(c.pacha().args(["commit"]));
    assert!(e.contains("host key verification failed"), "{e}");
    finish();
}

/// A tiny real package shipping one file at `file` (an absolute path).
fn build_deb(dir: &Path, name: &str, file: &Path) -> PathBuf {
    let root = dir.join(format!("{name}-pkg"));
    let target = root.join(file.strip_prefix("/").unwrap());
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::write(&target, "shipped by the package\n").unwrap();
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: hostkit tests <root@localhost>\n\
             Description: pacha apt hook test package\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("{name}.deb"));
    ok(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zgzip"])
        .arg(&root)
        .arg(&deb));
    deb
}

#[test]
fn apt_hooks_commit_with_the_package_changes() {
    let h = Host::new("");
    fs::write(h.t("before"), "1\n").unwrap();
    h.ok(&["track", h.tree().to_str().unwrap()]);
    h.ok(&["commit", "-m", "start"]);
    let name = format!("pacha-test-{}", std::process::id());
    let conf = h.t("pkg.conf");
    let deb = build_deb(h.dir.path(), &name, &conf);
    let _undo_pkg = Undo(format!(
        "dpkg -s {name} >/dev/null 2>&1 && dpkg --purge {name} >/dev/null"
    ));

    // As apt runs them: pre, dpkg, post.
    fs::write(h.t("before"), "2\n").unwrap();
    h.ok(&["apt-pre"]);
    assert!(
        h.log()[0].contains("saving uncommitted changes"),
        "{:?}",
        h.log()
    );
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let o = run(h.pacha().arg("apt-post"));
    // Leave the host as it was even if an assertion below fails.
    let removed = run(Command::new("dpkg").args(["-r", &name]));
    assert!(o.status.success(), "{}", show(&h.pacha(), &o));
    let repo = h.p("state/repo.git");
    let msg = ok(Command::new("git")
        .env("GIT_DIR", &repo)
        .args(["log", "-1", "--format=%B"]));
    assert!(
        msg.contains("Package changes:") && msg.contains(&format!("+{name} 1.0")),
        "{msg}"
    );
    let files = ok(Command::new("git").env("GIT_DIR", &repo).args([
        "show",
        "--name-only",
        "--format=",
        "HEAD",
    ]));
    assert!(files.contains("pkg.conf"), "{files}");

    // The removal, hooked the same way.
    assert!(removed.status.success());
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    h.ok(&["apt-pre"]);
    ok(Command::new("dpkg").args(["-r", &name]));
    h.ok(&["apt-post"]);
    let msg = ok(Command::new("git")
        .env("GIT_DIR", &repo)
        .args(["log", "-1", "--format=%B"]));
    assert!(msg.contains(&format!("-{name} 1.0")), "{msg}");
    assert!(!conf.exists());
    finish();
}

#[test]
fn daemon_watches_a_tracked_directory_made_again() {
    let h = Host::new("interval = 0.3\n");
    fs::write(h.t("a"), "a\n").unwrap();
    h.ok(&["track", h.tree().to_str().unwrap()]);
    h.ok(&["commit", "-m", "start"]);
    let mut d = start_daemon(&h);
    fs::remove_dir_all(h.tree()).unwrap();
    wait_commits(&h, 2);
    fs::create_dir(h.tree()).unwrap();
    fs::write(h.t("b"), "b\n").unwrap();
    wait_commits(&h, 3);
    // Watched again: an edit is committed under its own name.
    let ok_again = wait_for(Duration::from_secs(15), || {
        fs::write(h.t("b"), format!("{:?}\n", std::time::SystemTime::now())).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        h.log()[0].contains(&format!("{}", h.t("b").display()))
    });
    assert!(
        ok_again,
        "{:?}\n{}",
        h.log(),
        fs::read_to_string(h.p("daemon.log")).unwrap_or_default()
    );
    let pid = d.0.as_ref().unwrap().id();
    ok(Command::new("kill").arg("-TERM").arg(pid.to_string()));
    assert!(d.wait().success());
    finish();
}
