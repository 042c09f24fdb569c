//! pacha push and pull against real sshds on 127.0.0.1 (keys the tests make): the
//! master's tree, the nodes' roots and their histories in temporary directories.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cmd::{assert_one_line_error, finish, run, show};
use common::pg::{free_port, Sandbox};
use common::sshd::Sshd;

const PACHA: &str = env!("CARGO_BIN_EXE_pacha");

fn put(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn put_exec(p: &Path, content: &str) {
    put(p, content);
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A node: its root (the dests land under it), its pacha.ini, its history.
struct NodeHost {
    name: String,
    root: PathBuf,
    ini: PathBuf,
}

/// A master tree, an sshd, and nodes reached through it.
struct World {
    sb: Sandbox,
    sshd: Sshd,
    master: PathBuf,
    master_ini: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        let sb = Sandbox::new(&format!("pacha-{tag}"));
        let sshd = Sshd::start_as(&sb, free_port(), "root");
        let master = sb.mkdir("master");
        let master_ini = sb.p("master.ini");
        fs::write(
            &master_ini,
            master_ini_text(&sb, &master, &sshd, &sshd.known_hosts),
        )
        .unwrap();
        World {
            sb,
            sshd,
            master,
            master_ini,
        }
    }

    /// A node host with its own root and pacha.ini; `port` is where its node file says
    /// it listens (the test sshd unless a test wants it unreachable).
    fn node(&self, name: &str, apps: &str, files: &str, port: u16) -> NodeHost {
        let root = self.sb.mkdir(&format!("{name}-root"));
        let ini = self.sb.p(&format!("{name}.ini"));
        fs::write(
            &ini,
            node_ini_text(&self.sb, name, &root, &self.master_ini, &self.sshd),
        )
        .unwrap();
        put(
            &self.master.join(format!("nodes/{name}/{name}.conf")),
            &format!(
                "[node]\naddress = 127.0.0.1:{port}\ncommand = {PACHA} -c {ini}\napps = {apps}\n{files}",
                ini = ini.display()
            ),
        );
        NodeHost {
            name: name.to_string(),
            root,
            ini,
        }
    }

    fn template(&self, rel: &str, content: &str) {
        put(&self.master.join("templates").join(rel), content);
    }

    fn pacha(&self, args: &[&str]) -> Command {
        let mut c = Command::new(PACHA);
        c.arg("-c").arg(&self.master_ini).args(args);
        c
    }
}

fn master_ini_text(sb: &Sandbox, master: &Path, sshd: &Sshd, known: &Path) -> String {
    format!(
        "[pacha]\nhost = master\nstate_dir = {state}\n\
         [ssh]\nidentity = {id}\nknown_hosts = {known}\nconnect_timeout = 5\n\
         [nodes]\nmaster_root = {master}\n",
        state = sb.p("master-state").display(),
        master = master.display(),
        id = sshd.key.display(),
        known = known.display(),
    )
}

fn node_ini_text(sb: &Sandbox, name: &str, root: &Path, master_ini: &Path, sshd: &Sshd) -> String {
    format!(
        "[pacha]\nhost = {name}\nstate_dir = {state}\nmaster = 127.0.0.1:{port}\n\
         [ssh]\nidentity = {id}\nknown_hosts = {known}\nconnect_timeout = 5\n\
         [nodes]\nnode_root = {root}\nmaster_command = {PACHA} -c {mini}\n",
        state = sb.p(&format!("{name}-state")).display(),
        root = root.display(),
        port = sshd.port,
        mini = master_ini.display(),
        id = sshd.key.display(),
        known = sshd.known_hosts.display(),
    )
}

/// Every path under `root` with its type and mode, owner and content.
fn snapshot(root: &Path) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            let data = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            out.push((e.path(), m.mode(), m.uid(), m.gid(), data));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn stdout_of(c: &mut Command, code: i32) -> String {
    let o = run(c);
    assert_eq!(o.status.code(), Some(code), "{}", show(c, &o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

const WEB_FILES: &str = "[vars]\nport = 8080\n\
    [motd]\ndest = /etc/motd\nmode = 0644\n\
    [app.conf]\nsource = conf/app.conf\ndest = /etc/app/app.conf\nowner = nobody\ngroup = nogroup\nmode = 0640\nrender = yes\n";

fn web_templates(w: &World) {
    w.template("web/prod/motd", "welcome to production\n");
    w.template(
        "web/prod/conf/app.conf",
        "node = {{ node }}\nport = {{ port }}\nstate = {{ state }}\n",
    );
    w.template("web/test/motd", "test box\n");
    w.template("web/test/conf/app.conf", "port = 1\n");
}

#[test]
fn push_applies_a_state_check_shows_the_diff_and_changes_nothing() {
    let w = World::new("push");
    let n = w.node("web1", "web", WEB_FILES, w.sshd.port);
    web_templates(&w);
    let before = snapshot(&n.root);

    let out = stdout_of(&mut w.pacha(&["push", "web1", "prod", "--check"]), 0);
    assert!(out.contains("would be created /etc/motd"), "{out}");
    assert!(out.contains("+welcome to production\n"), "{out}");
    assert!(out.contains("+port = 8080\n"), "{out}");
    assert!(
        out.contains("web1: check: 2 created, 0 changed, 0 unchanged (nothing changed)"),
        "{out}"
    );
    assert_eq!(snapshot(&n.root), before, "--check changed the node");

    let out = stdout_of(&mut w.pacha(&["push", "web1", "prod"]), 0);
    assert!(
        out.contains("  created   /etc/motd\n") && out.contains("  created   /etc/app/app.conf\n"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(n.root.join("etc/motd")).unwrap(),
        "welcome to production\n"
    );
    let conf = n.root.join("etc/app/app.conf");
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "node = web1\nport = 8080\nstate = prod\n"
    );
    let m = fs::metadata(&conf).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (uid_of("nobody"), 0o640));
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(m.gid(), nogroup.gid.as_raw());
    let m = fs::metadata(n.root.join("etc/motd")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o644));

    // The same state again: nothing to do.
    let out = stdout_of(&mut w.pacha(&["push", "web1", "prod"]), 0);
    assert!(
        out.contains("web1: ok: 0 created, 0 changed, 2 unchanged"),
        "{out}"
    );

    // Another state: --check shows the diff against what is there and changes nothing.
    let applied = snapshot(&n.root);
    let out = stdout_of(&mut w.pacha(&["push", "web1", "test", "--check"]), 0);
    assert!(out.contains("-welcome to production\n+test box\n"), "{out}");
    assert!(
        out.contains("would be changed /etc/motd (content)"),
        "{out}"
    );
    assert_eq!(snapshot(&n.root), applied);
    let out = stdout_of(&mut w.pacha(&["push", "web1", "test"]), 0);
    assert!(out.contains("  changed   /etc/motd (content)\n"), "{out}");
    assert_eq!(
        fs::read_to_string(n.root.join("etc/motd")).unwrap(),
        "test box\n"
    );
    assert!(out.contains("  committed "), "{out}");
    history_names(&n, "pacha push: node web1 state test: /etc/motd");
}

/// The node's history has a commit whose message names `what`.
fn history_names(n: &NodeHost, what: &str) {
    let mut c = Command::new(PACHA);
    c.arg("-c").arg(&n.ini).arg("log");
    let out = stdout_of(&mut c, 0);
    assert!(
        out.contains(what) && out.contains(&n.name),
        "history of {}: {out}",
        n.name
    );
}

#[test]
fn a_meta_node_reports_per_node_and_goes_on_past_a_failing_one() {
    let w = World::new("meta");
    let one = "[motd]\ndest = /etc/motd\n";
    let a = w.node("a", "web", one, w.sshd.port);
    // Nothing listens there: ssh fails for b.
    let b = w.node("b", "web", one, free_port());
    let c = w.node("c", "web", one, w.sshd.port);
    // d is reached but refuses the state: its validation fails, nothing changes there.
    let d = w.node(
        "d",
        "web",
        "[motd]\ndest = /etc/motd\nvalidate = grep -q never %s\n",
        w.sshd.port,
    );
    w.template("web/prod/motd", "meta\n");
    // A meta-node including another one: all -> (a, b), c, d.
    put(
        &w.master.join("nodes/ab/ab.conf"),
        "[node]\ninclude_nodes = a, b\n",
    );
    put(
        &w.master.join("nodes/all/all.conf"),
        "[node]\ninclude_nodes = ['ab.conf', 'c.conf', 'd.conf']\n",
    );
    let mut cmd = w.pacha(&["push", "all", "prod"]);
    let o = run(&mut cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(10), "{}", show(&cmd, &o));
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} in {out}"));
    let (pa, pb, pc, pd) = (
        at("a: ok"),
        at("b: FAILED, nothing changed: ssh 127.0.0.1:"),
        at("c: ok"),
        at("d: FAILED, nothing changed: validate /etc/motd"),
    );
    assert!(pa < pb && pb < pc && pc < pd, "in include order: {out}");
    assert_one_line_error("pacha", &err, "2 of 4 nodes failed: b, d");
    for n in [&a, &c] {
        assert_eq!(
            fs::read_to_string(n.root.join("etc/motd")).unwrap(),
            "meta\n"
        );
    }
    for n in [&b, &d] {
        assert!(!n.root.join("etc").exists(), "{} was changed", n.name);
    }
    finish();
}

#[test]
fn pull_applies_from_the_node_side() {
    let w = World::new("pull");
    let n = w.node("web2", "web", WEB_FILES, w.sshd.port);
    web_templates(&w);
    let mut c = Command::new(PACHA);
    c.arg("-c")
        .arg(&n.ini)
        .args(["pull", "web2", "prod", "--check"]);
    let out = stdout_of(&mut c, 0);
    assert!(out.contains("would be created /etc/motd"), "{out}");
    assert!(!n.root.join("etc").exists());
    let mut c = Command::new(PACHA);
    c.arg("-c").arg(&n.ini).args(["pull", "web2", "prod"]);
    let out = stdout_of(&mut c, 0);
    assert!(out.contains("web2: ok: 2 created"), "{out}");
    assert_eq!(
        fs::read_to_string(n.root.join("etc/app/app.conf")).unwrap(),
        "node = web2\nport = 8080\nstate = prod\n"
    );
    assert!(out.contains("  committed "), "{out}");
    history_names(
        &n,
        "pacha pull: node web2 state prod: /etc/motd, /etc/app/app.conf",
    );
    // The master's one-line error comes back.
    let mut c = Command::new(PACHA);
    c.arg("-c").arg(&n.ini).args(["pull", "web2", "nosuch"]);
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(4), "{}", show(&c, &o));
    assert_one_line_error(
        "pacha",
        &String::from_utf8_lossy(&o.stderr),
        "unknown state \"nosuch\"",
    );
    finish();
}

#[test]
fn failing_pre_script_or_validation_leaves_the_node_untouched() {
    assert!(
        Path::new("/usr/sbin/visudo").exists(),
        "/usr/sbin/visudo is missing (apt install sudo; tests/setup-host.sh)"
    );
    let w = World::new("pre");
    let files = "[motd]\napp = web\ndest = /etc/motd\n\
        [sudoers]\napp = sudo\ndest = /etc/sudoers.d/web\nmode = 0440\nvalidate = /usr/sbin/visudo -cf %s\n";
    let n = w.node("web3", "web, sudo", files, w.sshd.port);
    put(&n.root.join("etc/motd"), "old motd\n");
    put(&n.root.join("etc/sudoers.d/web"), "root ALL=(ALL) ALL\n");
    w.template("web/prod/motd", "new motd\n");
    w.template(
        "sudo/prod/sudoers",
        "root ALL=(ALL) ALL\nweb ALL=(ALL) NOPASSWD: /bin/true\n",
    );
    put_exec(
        &w.master.join("scripts/pre/web/10-ok"),
        "#!/bin/sh\ntouch \"$PACHA_ROOT/10-ran\"; rm \"$PACHA_ROOT/10-ran\"\n",
    );
    put_exec(
        &w.master.join("scripts/pre/web/20-refuse"),
        "#!/bin/sh\necho \"not now: $PACHA_NODE $PACHA_STATE\"\nexit 7\n",
    );
    let before = snapshot(&n.root);

    let mut c = w.pacha(&["push", "web3", "prod"]);
    let o = run(&mut c);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(10), "{}", show(&c, &o));
    assert!(out.contains("script pre/web/20-refuse failed (exited with exit status: 7):\n    | not now: web3 prod\n"), "{out}");
    assert!(out.contains("web3: FAILED, nothing changed"), "{out}");
    assert_one_line_error(
        "pacha",
        &String::from_utf8_lossy(&o.stderr),
        "script pre/web/20-refuse failed",
    );
    assert_eq!(
        snapshot(&n.root),
        before,
        "a failing pre script changed the node"
    );

    fs::remove_file(w.master.join("scripts/pre/web/20-refuse")).unwrap();
    w.template("sudo/prod/sudoers", "root ALL=(ALL ALL\n");
    let mut c = w.pacha(&["push", "web3", "prod"]);
    let o = run(&mut c);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(10), "{}", show(&c, &o));
    assert!(
        out.contains("validate /etc/sudoers.d/web (/usr/sbin/visudo -cf %s) failed"),
        "{out}"
    );
    assert!(
        out.contains("syntax error"),
        "visudo's output is shown: {out}"
    );
    assert_eq!(
        snapshot(&n.root),
        before,
        "a failing validation changed the node"
    );

    // A valid one goes in (visudo accepted the staged file with its final mode).
    w.template("sudo/prod/sudoers", "root ALL=(ALL) ALL\n#ok\n");
    stdout_of(&mut w.pacha(&["push", "web3", "prod"]), 0);
    assert_eq!(
        fs::read_to_string(n.root.join("etc/sudoers.d/web")).unwrap(),
        "root ALL=(ALL) ALL\n#ok\n"
    );
    assert_eq!(
        fs::metadata(n.root.join("etc/sudoers.d/web"))
            .unwrap()
            .mode()
            & 0o7777,
        0o440
    );
    finish();
}

#[test]
fn a_failing_post_script_is_reported_with_its_output() {
    let w = World::new("post");
    let n = w.node("web4", "web", "[motd]\ndest = /etc/motd\n", w.sshd.port);
    w.template("web/prod/motd", "hello\n");
    put_exec(
        &w.master.join("scripts/post/web/50-reload"),
        "#!/bin/sh\necho reloading\necho 'reload failed: no such service' >&2\nexit 1\n",
    );
    let mut c = w.pacha(&["push", "web4", "prod"]);
    let o = run(&mut c);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(10), "{}", show(&c, &o));
    assert!(out.contains("script post/web/50-reload failed (exited with exit status: 1):\n    | reloading\n    | reload failed: no such service\n"), "{out}");
    assert_one_line_error(
        "pacha",
        &String::from_utf8_lossy(&o.stderr),
        "script post/web/50-reload failed",
    );
    assert_eq!(
        fs::read_to_string(n.root.join("etc/motd")).unwrap(),
        "hello\n",
        "the files stay replaced"
    );
    finish();
}

#[test]
fn an_unknown_host_key_is_refused() {
    let w = World::new("hostkey");
    let n = w.node("web5", "web", "[motd]\ndest = /etc/motd\n", w.sshd.port);
    w.template("web/prod/motd", "x\n");
    let empty = w.sb.p("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    fs::write(
        &w.master_ini,
        master_ini_text(&w.sb, &w.master, &w.sshd, &empty),
    )
    .unwrap();
    let mut c = w.pacha(&["push", "web5", "prod"]);
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(12), "{}", show(&c, &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_one_line_error(
        "pacha",
        &err,
        &format!("ssh 127.0.0.1:{}: host key refused", w.sshd.port),
    );
    assert!(
        err.contains("host key is known") || err.contains("verification failed"),
        "{err}"
    );
    assert!(!n.root.join("etc").exists());

    // A known_hosts naming another key for that address: a changed key, refused too.
    let other = w.sb.p("other_host_key");
    common::cmd::ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other),
    );
    let wrong = w.sb.p("wrong_known_hosts");
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    fs::write(&wrong, format!("[127.0.0.1]:{} {other_pub}", w.sshd.port)).unwrap();
    fs::write(
        &w.master_ini,
        master_ini_text(&w.sb, &w.master, &w.sshd, &wrong),
    )
    .unwrap();
    let mut c = w.pacha(&["push", "web5", "prod"]);
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(12), "{}", show(&c, &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_one_line_error("pacha", &err, "host key refused");
    assert!(err.contains("HAS CHANGED"), "{err}");
    assert!(!n.root.join("etc").exists());
    finish();
}

#[test]
fn bad_node_files_and_unknown_states_are_one_clear_line() {
    // No sshd needed: all of these fail on the master before connecting.
    let sb = Sandbox::new("pacha-bad");
    let master = sb.mkdir("master");
    let ini = sb.p("master.ini");
    fs::write(
        &ini,
        format!(
            "[pacha]\nstate_dir = {}\n[nodes]\nmaster_root = {}\n",
            sb.p("state").display(),
            master.display()
        ),
    )
    .unwrap();
    put(&master.join("templates/web/prod/motd"), "x\n");
    let node =
        |name: &str, text: &str| put(&master.join(format!("nodes/{name}/{name}.conf")), text);
    node("ok", "[node]\napps = web\n[motd]\ndest = /etc/motd\n");
    node(
        "mode",
        "[node]\napps = web\n[motd]\ndest = /etc/motd\nmode = 0999\n",
    );
    node(
        "owner",
        "[node]\napps = web\n[motd]\ndest = /etc/motd\nowner = Not Valid\n",
    );
    node(
        "app",
        "[node]\napps = nosuchapp\n[motd]\ndest = /etc/motd\n",
    );
    node(
        "tmpl",
        "[node]\napps = web\n[motd]\nsource = missing\ndest = /etc/motd\n",
    );
    node("cyc1", "[node]\ninclude_nodes = ['cyc2.conf']\n");
    node("cyc2", "[node]\ninclude_nodes = ['cyc1.conf']\n");
    // 4: an unknown node or state (usage); 3: a node file or template that is wrong.
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["push", "ok", "nosuch"],
            4,
            "unknown state \"nosuch\" of app \"web\"",
        ),
        (&["push", "ghost", "prod"], 4, "unknown node \"ghost\""),
        (
            &["render", "ok", "../x"],
            4,
            "state name \"../x\" is not valid",
        ),
        (
            &["push", "mode", "prod"],
            3,
            "nodes/mode/mode.conf: [motd] mode = \"0999\": not an octal mode",
        ),
        (
            &["push", "owner", "prod"],
            3,
            "nodes/owner/owner.conf: [motd] owner = \"Not Valid\"",
        ),
        (&["push", "app", "prod"], 3, "unknown app \"nosuchapp\""),
        (
            &["push", "tmpl", "prod"],
            3,
            "[motd] source = \"missing\": cannot read template",
        ),
        (
            &["push", "cyc1", "prod"],
            3,
            "include_nodes: cycle cyc1 -> cyc2 -> cyc1",
        ),
    ];
    for (args, code, want) in cases {
        let mut c = Command::new(PACHA);
        c.arg("-c").arg(&ini).args(*args);
        let o = run(&mut c);
        assert_eq!(o.status.code(), Some(*code), "{}", show(&c, &o));
        assert!(o.stdout.is_empty(), "{}", show(&c, &o));
        assert_one_line_error("pacha", &String::from_utf8_lossy(&o.stderr), want);
    }
    finish();
}
