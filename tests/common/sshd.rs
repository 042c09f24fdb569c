//! A real sshd on a private port for the tests of remote operation (walmgr's remote
//! store, pacha's push and pull): its own host key, and a client key `postgres` (or,
//! with [`Sshd::start_as`], `root`) logs in with.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cmd::{ok, run, show, Bg};
use super::pg::{as_postgres, chown_pg, Sandbox};
use super::wait_for;

/// A real sshd on 127.0.0.1:`port` with its own host key; `postgres` logs in with a key
/// the test generated. `ssh` is the client command line (walmgr's `ssh` ini key).
pub struct Sshd {
    _child: Bg,
    pub ssh: String,
    pub log: PathBuf,
    pub port: u16,
    /// Who logs in (and owns the client key): `postgres` or `root`.
    pub user: String,
    /// The client key (root may use it too: sshd allows root with a key).
    pub key: PathBuf,
    /// known_hosts holding this sshd's host key for `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    conf: PathBuf,
}

impl Sshd {
    /// An sshd `postgres` logs in to (walmgr's archive_command runs as postgres).
    pub fn start(sb: &Sandbox, port: u16) -> Sshd {
        Sshd::start_as(sb, port, "postgres")
    }

    /// An sshd `user` (`postgres` or `root`) logs in to, with a key of its own; the
    /// files live in `<sandbox>/ssh-<port>` so one sandbox can hold several servers.
    pub fn start_as(sb: &Sandbox, port: u16, user: &str) -> Sshd {
        assert!(
            user == "postgres" || user == "root",
            "the test sshd allows postgres and root"
        );
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd is missing (apt install openssh-server; tests/setup-host.sh)"
        );
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        let dir = if user == "postgres" {
            sb.mkdir("ssh")
        } else {
            sb.mkdir(&format!("ssh-{port}"))
        };
        let host_key = dir.join("host_ed25519");
        let user_key = dir.join("id_ed25519");
        for (k, c) in [
            (&host_key, "walmgr-test-host"),
            (&user_key, "walmgr-test-user"),
        ] {
            ok(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", c, "-f"])
                .arg(k));
        }
        // The client key belongs to the user who logs in.
        let as_user = |p: &Path| {
            if user == "postgres" {
                chown_pg(p)
            }
        };
        as_user(&user_key);
        as_user(&dir.join("id_ed25519.pub"));
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("id_ed25519.pub"), &authorized).unwrap();
        as_user(&authorized);
        let host_pub = fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
        let known = dir.join("known_hosts");
        fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
        as_user(&known);
        let conf = dir.join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                 AuthorizedKeysFile {ak}\nStrictModes no\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM yes\nAllowUsers postgres root\n\
                 PrintMotd no\nLogLevel VERBOSE\n",
                hk = host_key.display(),
                ak = authorized.display(),
            ),
        )
        .unwrap();
        ok(Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&conf));
        let log = dir.join("sshd.log");
        let child = spawn_sshd(&conf, &log);
        let ssh = format!(
            "ssh -F /dev/null -p {port} -i {key} -o UserKnownHostsFile={known} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
             -o ConnectTimeout=10 -o LogLevel=ERROR -l {user}",
            key = user_key.display(),
            known = known.display(),
        );
        let s = Sshd {
            _child: Bg(Some(child)),
            ssh,
            log,
            port,
            user: user.to_string(),
            key: user_key,
            known_hosts: known,
            conf,
        };
        s.wait_up();
        s
    }

    /// Stop it (kill and reap); [`Sshd::restart`] brings the same sshd back.
    pub fn stop(&mut self) {
        self._child = Bg(None);
    }

    pub fn restart(&mut self) {
        self._child = Bg(Some(spawn_sshd(&self.conf, &self.log)));
        self.wait_up();
    }

    fn wait_up(&self) {
        let s = self;
        let mut last = String::new();
        let up = wait_for(Duration::from_secs(15), || {
            let o = run(s.client().args(["127.0.0.1", "echo", "ssh-ok"]));
            last = show(&s.client(), &o);
            String::from_utf8_lossy(&o.stdout).trim() == "ssh-ok"
        });
        assert!(
            up,
            "cannot log in through the test sshd: {last}\n--- sshd log ---\n{}",
            fs::read_to_string(&s.log).unwrap_or_default()
        );
    }

    /// The ssh client as the user who logs in.
    pub fn client(&self) -> Command {
        let mut w = self.ssh.split_whitespace();
        let mut c = if self.user == "postgres" {
            as_postgres(w.next().unwrap())
        } else {
            Command::new(w.next().unwrap())
        };
        c.args(w);
        c
    }
}

fn spawn_sshd(conf: &Path, log: &Path) -> std::process::Child {
    Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("/usr/sbin/sshd (apt install openssh-server; tests/setup-host.sh)")
}
