//! calink against the real machine: the built binary, real files, real commands, a real
//! (small) tmpfs for the full-disk case.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cmd::{assert_one_line_error, finish, run, show};
use serde_json::Value;

fn calink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_calink"))
}

/// A scratch directory with a config and an output directory.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(ini: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("calink.ini"), ini).unwrap();
        Case { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn out(&self) -> PathBuf {
        self.path("out")
    }

    fn cmd(&self) -> Command {
        let mut c = calink();
        c.arg("-c")
            .arg(self.path("calink.ini"))
            .arg("-o")
            .arg(self.out());
        c
    }

    /// Run and return the output and the one archive it made.
    fn run(&self, extra: &[&str]) -> (Output, Archive) {
        let mut c = self.cmd();
        c.args(extra);
        let o = run(&mut c);
        let names: Vec<PathBuf> = fs::read_dir(self.out())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "one archive expected: {names:?}\n{}",
            show(&c, &o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            names[0].display().to_string(),
            "stdout names the archive"
        );
        (o, Archive::read(&names[0]))
    }
}

/// An archive's members: name to content (and link target).
struct Archive {
    path: PathBuf,
    top: String,
    members: BTreeMap<String, (Vec<u8>, Option<String>)>,
    /// The whole uncompressed tar stream.
    raw: Vec<u8>,
}

impl Archive {
    fn read(path: &Path) -> Archive {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(path).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut members = BTreeMap::new();
        let mut t = tar::Archive::new(&raw[..]);
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            assert!(
                members.insert(name.clone(), (body, link)).is_none(),
                "{name} twice"
            );
        }
        let top = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".tar.gz")
            .to_string();
        Archive {
            path: path.to_path_buf(),
            top,
            members,
            raw,
        }
    }

    fn get(&self, rel: &str) -> &[u8] {
        let name = format!("{}/{rel}", self.top);
        &self
            .members
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not in {:?}", self.members.keys()))
            .0
    }

    fn file(&self, abs: &Path) -> &[u8] {
        self.get(&format!("files{}", abs.display()))
    }

    fn text(&self, rel: &str) -> String {
        String::from_utf8_lossy(self.get(rel)).into_owned()
    }

    fn manifest(&self) -> Value {
        serde_json::from_slice(self.get("manifest.json")).unwrap()
    }

    fn entry(&self, source: &str) -> Value {
        self.manifest()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == source)
            .unwrap_or_else(|| panic!("no manifest entry for {source}"))
            .clone()
    }

    fn commands_log(&self) -> String {
        let (name, _) = self
            .members
            .iter()
            .find(|(n, _)| n.ends_with("-commands.log"))
            .expect("a commands log");
        String::from_utf8_lossy(&self.members[name].0).into_owned()
    }
}

const FAST: &str = "[calink]\nsample_window = 0.3\nsample_interval = 0.1\n";

#[test]
fn files_and_directories_are_stored_byte_identical_and_the_manifest_lists_the_archive() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("opt/app");
    fs::create_dir_all(tree.join("etc/conf.d")).unwrap();
    fs::create_dir_all(src.path().join("my_dir")).unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    fs::write(tree.join("etc/app.conf"), "a = 1\n").unwrap();
    fs::write(tree.join("etc/conf.d/blob.bin"), &binary).unwrap();
    fs::write(tree.join("etc/conf.d/empty"), "").unwrap();
    std::os::unix::fs::symlink("/etc", tree.join("etc/conf.d/outside")).unwrap();
    nix::unistd::mkfifo(
        &tree.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits(0o600).unwrap(),
    )
    .unwrap();
    fs::write(src.path().join("my_dir/under_score.log"), "x\n").unwrap();
    fs::write(src.path().join("my_dir/other.log"), "y\n").unwrap();
    let ini = format!(
        "{FAST}[info]\nsys = os\n[files]\n\
         opt_app_dirs = etc\n\
         explicit = {0}/my_dir/*.log\n    /etc/os-release\n",
        src.path().display()
    );
    let c = Case::new(&ini);
    let (o, a) = c.run(&["--prefix", &src.path().display().to_string(), "--no-scrub"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_eq!(a.file(&tree.join("etc/app.conf")), b"a = 1\n");
    assert_eq!(a.file(&tree.join("etc/conf.d/blob.bin")), &binary[..]);
    assert_eq!(a.file(&tree.join("etc/conf.d/empty")), b"");
    assert_eq!(a.file(&src.path().join("my_dir/under_score.log")), b"x\n");
    assert_eq!(a.file(&src.path().join("my_dir/other.log")), b"y\n");
    assert_eq!(
        a.file(Path::new("/etc/os-release")),
        &fs::read("/etc/os-release").unwrap()[..]
    );
    // A link inside a collected directory is stored as a link, not followed.
    let link = &a.members[&format!(
        "{}/files{}",
        a.top,
        tree.join("etc/conf.d/outside").display()
    )];
    assert_eq!(link.1.as_deref(), Some("/etc"));
    assert!(!a.members.keys().any(|k| k.contains("conf.d/outside/")));
    assert!(!a.members.keys().any(|k| k.ends_with("/fifo")));
    let fifo = a.entry(&tree.join("etc/fifo").display().to_string());
    assert_eq!(fifo["status"], "excluded");

    // Exactly the members the manifest names, plus the manifest itself.
    let m = a.manifest();
    let mut listed: BTreeSet<String> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| matches!(e["kind"].as_str(), Some("file" | "symlink" | "report")))
        .filter_map(|e| e["archive_name"].as_str().map(str::to_string))
        .collect();
    listed.insert(format!("{}/manifest.json", a.top));
    let members: BTreeSet<String> = a.members.keys().cloned().collect();
    assert_eq!(listed, members);
    // Every stored member's size and sha256 are the manifest's.
    for e in m["entries"].as_array().unwrap() {
        let Some(name) = e["archive_name"].as_str() else {
            continue;
        };
        if e["kind"] == "file" || e["kind"] == "report" {
            let body = &a.members[name].0;
            assert_eq!(e["size"], body.len() as u64, "{name}");
            use sha2::Digest;
            let hex: String = sha2::Sha256::digest(body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(e["sha256"], hex, "{name}");
        }
    }
    assert_eq!(m["incomplete"], false);
    assert!(fs::metadata(&a.path).unwrap().len() > 0);
}

#[test]
fn every_info_item_has_the_documented_shape_and_plausible_values() {
    let c = Case::new(&format!(
        "{FAST}[info]\nsystem = uptime, host, os, version\nload = loadavg, cpu, vmem, smem, iostat\n\
         storage = disk\nprocesses = ps\n"
    ));
    let (o, a) = c.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (json_name, _) = a
        .members
        .iter()
        .find(|(n, _)| n.ends_with(".json") && !n.ends_with("manifest.json"))
        .unwrap();
    let v: Value = serde_json::from_slice(&a.members[json_name].0).unwrap();
    let raw = fs::read_to_string("/proc/loadavg").unwrap();
    let f: Vec<&str> = raw.split_whitespace().collect();
    let l = &v["load"]["loadavg"];
    for (k, want) in ["1", "5", "15"].iter().zip(&f) {
        let want: f64 = want.parse().unwrap();
        assert!(
            (l["average"][*k].as_f64().unwrap() - want).abs() < 0.5,
            "{l} vs {raw}"
        );
    }
    assert!(l["entities"]["total"].as_u64().unwrap() >= l["entities"]["current"].as_u64().unwrap());
    assert!(l["last_pid"].as_u64().unwrap() > 0);

    let me = std::process::id() as u64;
    let ps = v["processes"]["ps"].as_array().unwrap();
    assert!(
        ps.iter().any(|p| p["pid"] == me),
        "the test's own pid in ps"
    );
    assert!(ps
        .iter()
        .all(|p| p["user"].is_string() && p["rss_bytes"].is_u64()));

    for item in ["cpu", "vmem", "smem", "iostat"] {
        let s = &v["load"][item];
        for k in ["average", "minimum", "maximum"] {
            assert!(
                s[k].is_object() && !s[k].as_object().unwrap().is_empty(),
                "{item}.{k}: {s}"
            );
        }
        assert!(s["samples"].as_u64().unwrap() >= 2, "{item}: {s}");
    }
    let cpu_busy = v["load"]["cpu"]["average"]["busy"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu_busy));
    let mem_total = v["load"]["vmem"]["total_bytes"].as_u64().unwrap();
    assert!(v["load"]["vmem"]["maximum"]["used_bytes"].as_f64().unwrap() <= mem_total as f64);
    let root = v["storage"]["disk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mountpoint"] == "/")
        .expect("/ in disk")
        .clone();
    assert!(root["total_bytes"].as_u64().unwrap() >= root["used_bytes"].as_u64().unwrap());
    assert_eq!(
        v["system"]["host"]["hostname"],
        nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
    assert!(v["system"]["uptime"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(!v["system"]["os"]["id"].as_str().unwrap().is_empty());
    assert_eq!(v["system"]["version"]["program"], "calink");
    assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000);
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_child_and_the_run_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("child.pid");
    let ini = format!(
        "[calink]\ncommand_timeout = 1\n[commands]\n\
         a_hang = sleep 300 & echo $! > {}; echo started; sleep 300\n\
         b_after = echo still here\n\
         c_fail = echo bad >&2; exit 7\n",
        pidfile.display()
    );
    let c = Case::new(&ini);
    let t = Instant::now();
    let (o, a) = c.run(&[]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(
        o.status.code(),
        Some(3),
        "timed out => incomplete: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let child: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background child was in the command's process group and died with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{child}")).exists()
        && !fs::read_to_string(format!("/proc/{child}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < deadline,
            "child {child} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = a.entry("a_hang");
    assert_eq!(e["timed_out"], true);
    assert_eq!(a.entry("b_after")["timed_out"], false);
    assert_eq!(a.entry("c_fail")["exit_code"], 7);
    let log = a.commands_log();
    assert!(
        log.contains("==== a_hang ====\ncommand: sleep 300 &"),
        "{log}"
    );
    assert!(
        log.contains("timed out: yes\n--- stdout ---\nstarted\n"),
        "{log}"
    );
    assert!(
        log.contains("==== b_after ====") && log.contains("still here"),
        "{log}"
    );
    assert!(
        log.contains("==== c_fail ====\ncommand: echo bad >&2; exit 7\nexit code: 7\n"),
        "{log}"
    );
    assert!(log.contains("--- stderr ---\nbad\n"), "{log}");
}

#[test]
fn a_huge_file_is_cut_to_its_tail_and_the_total_cap_skips_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.log");
    let mut data = Vec::new();
    for i in 0..200_000 {
        data.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    fs::write(&big, &data).unwrap();
    fs::write(d.path().join("z1"), vec![b'x'; 3000]).unwrap();
    fs::write(d.path().join("z2"), vec![b'y'; 3000]).unwrap();
    let ini = format!(
        "[calink]\nmax_file_size = 4K\nmax_total_size = 8K\n[files]\nlogs = {0}/big.log\n    {0}/z*\n",
        d.path().display()
    );
    let c = Case::new(&ini);
    let (o, a) = c.run(&["--no-scrub"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(a.file(&big), &data[data.len() - 4096..]);
    let e = a.entry(&big.display().to_string());
    assert_eq!(e["truncated"], true);
    assert_eq!(e["source_size"], data.len() as u64);
    assert_eq!(e["size"], 4096);
    assert_eq!(a.file(&d.path().join("z1")), &[b'x'; 3000][..]);
    let z2 = a.entry(&d.path().join("z2").display().to_string());
    assert_eq!(z2["status"], "skipped");
    assert!(
        z2["reason"].as_str().unwrap().contains("total size cap"),
        "{z2}"
    );
}

/// Run `c` to its end (stdin, stdout and stderr /dev/null): its exit code and its peak
/// RSS in KiB, as wait4(2) reports them for that one child.
// Reaped by wait4 itself, which std's Child cannot do (it has no rusage).
#[allow(clippy::zombie_processes)]
fn run_measuring_rss(c: &mut Command) -> (Option<i32>, i64) {
    use std::os::unix::process::ExitStatusExt;
    let child = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: wait4 writes only into the two out-parameters it is given.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(
        r,
        child.id() as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let status = std::process::ExitStatus::from_raw(status);
    (status.code(), usage.ru_maxrss)
}

#[test]
fn a_command_writing_without_end_is_cut_as_it_is_read() {
    // 200 MB on stdout, 50 MB on stderr, 1 MiB kept of each: calink never holds more.
    const CAP: u64 = 1 << 20;
    const OUT: u64 = 200_000_000 + 8;
    const ERR: u64 = 50_000_000;
    let c = Case::new(
        "[calink]\nmax_file_size = 1M\n[commands]\n\
         flood = head -c 200000000 /dev/zero; printf 'the end\\n'; head -c 50000000 /dev/zero >&2\n",
    );
    let (code, rss_kib) = run_measuring_rss(&mut c.cmd());
    assert_eq!(code, Some(3), "truncated => incomplete");
    // Before the cap was applied while reading, calink held all 200 MB.
    assert!(
        rss_kib < 100 << 10,
        "calink's peak RSS {rss_kib} KiB: the output was not bounded while read"
    );
    let path = fs::read_dir(c.out())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let a = Archive::read(&path);
    let e = a.entry("flood");
    assert_eq!(e["truncated"], true, "{e}");
    assert_eq!(e["stdout_dropped"], OUT - CAP, "{e}");
    assert_eq!(e["stderr_dropped"], ERR - CAP, "{e}");
    assert_eq!(e["source_size"], OUT + ERR, "{e}");
    assert_eq!(e["size"], 2 * CAP, "{e}");
    let log = a.commands_log();
    assert!(
        log.contains(&format!(
            "truncated: stdout, last {CAP} of {OUT} bytes kept, {} dropped\n\
             truncated: stderr, last {CAP} of {ERR} bytes kept, {} dropped\n",
            OUT - CAP,
            ERR - CAP
        )),
        "{}",
        &log[..log.len().min(600)]
    );
    // Exactly the tail: the last CAP bytes of stdout, then of stderr.
    let mut want = b"--- stdout ---\n".to_vec();
    want.extend(vec![0u8; CAP as usize - 8]);
    want.extend_from_slice(b"the end\n--- stderr ---\n");
    want.extend(vec![0u8; CAP as usize]);
    let raw = a.commands_log().into_bytes();
    let at = raw
        .windows(15)
        .position(|w| w == b"--- stdout ---\n")
        .unwrap();
    assert_eq!(raw[at..at + want.len()], want[..]);
}

#[test]
fn secrets_are_scrubbed_in_files_and_the_commands_log() {
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("app.conf"),
        "user = app\npassword = hunter2\nurl = amqp://guest:rabbitpw@127.0.0.1:5672/\n",
    )
    .unwrap();
    fs::write(d.path().join(".pgpass"), "localhost:5432:*:app:pgsecret\n").unwrap();
    fs::write(
        d.path().join("id_rsa"),
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEkeymaterial\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let ini = format!(
        "[files]\nconf = {0}\n[commands]\nenv = echo DB_PASSWORD=cmdsecret; echo amqp://u:cmdurlpw@h/ >&2\n",
        d.path().display()
    );
    let c = Case::new(&ini);
    let (o, a) = c.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conf = String::from_utf8_lossy(a.file(&d.path().join("app.conf"))).into_owned();
    assert_eq!(
        conf,
        "user = app\npassword = ********\nurl = amqp://guest:********@127.0.0.1:5672/\n"
    );
    assert_eq!(
        a.file(&d.path().join(".pgpass")),
        b"localhost:5432:*:app:********\n"
    );
    assert!(!String::from_utf8_lossy(a.file(&d.path().join("id_rsa"))).contains("keymaterial"));
    let log = a.commands_log();
    assert!(
        log.contains("DB_PASSWORD=********") && log.contains("amqp://u:********@h/"),
        "{log}"
    );
    for secret in [
        "hunter2",
        "rabbitpw",
        "pgsecret",
        "keymaterial",
        "cmdsecret",
        "cmdurlpw",
    ] {
        assert!(
            !a.raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the archive"
        );
    }
    assert_eq!(
        a.entry(&d.path().join("app.conf").display().to_string())["scrubbed"],
        2
    );

    // --no-scrub keeps them.
    fs::remove_file(&a.path).unwrap();
    let (_, raw) = c.run(&["--no-scrub"]);
    assert!(String::from_utf8_lossy(raw.file(&d.path().join("app.conf"))).contains("hunter2"));
    assert!(raw.commands_log().contains("cmdsecret"));
}

/// Whole-word, case-insensitive occurrences of `needle` in `hay` (as a DNS name or an
/// address is a word: "vm" in "vmstat" is not the host).
fn word_occurs(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    hay.windows(n.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(n)
            && (i == 0 || !hay[i - 1].is_ascii_alphanumeric())
            && hay
                .get(i + n.len())
                .is_none_or(|b| !b.is_ascii_alphanumeric())
    })
}

fn host_identity() -> Vec<String> {
    let mut ids = vec![nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()];
    for i in nix::ifaddrs::getifaddrs().unwrap() {
        let Some(a) = i.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            if !v4.ip().is_loopback() {
                ids.push(v4.ip().to_string());
            }
        } else if let Some(v6) = a.as_sockaddr_in6() {
            if !v6.ip().is_loopback() {
                ids.push(v6.ip().to_string());
            }
        }
    }
    for e in fs::read_dir("/sys/class/net").unwrap() {
        let mac = fs::read_to_string(e.unwrap().path().join("address")).unwrap_or_default();
        let mac = mac.trim().to_string();
        if mac.len() == 17 && mac != "00:00:00:00:00:00" {
            ids.push(mac);
        }
    }
    ids
}

#[test]
fn obfuscation_leaves_no_host_name_address_or_mac_and_keeps_its_tokens() {
    let maps = tempfile::tempdir().unwrap();
    let map = maps.path().join("private/obfuscation.json");
    let ids = host_identity();
    assert!(
        ids.len() >= 2,
        "the host has a name and an address: {ids:?}"
    );
    // A file named after the host, holding its address, a link pointing at its name,
    // and a compressed log (whose names could not be seen).
    let host = ids[0].clone();
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join(format!("{host}.conf")),
        format!("listen = {}\n", ids[1]),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("{host}.conf"), d.path().join("current")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, host.as_bytes()).unwrap();
    fs::write(d.path().join("old.log.gz"), gz.finish().unwrap()).unwrap();
    let ini = format!(
        "{FAST}[info]\nsys = host, ps, disk\n[files]\netc = /etc/hostname\n    /etc/hosts\n    {}\n\
         [commands]\nname = hostname; hostname -f\naddr = ip addr; ip link\n\
         macs = cat /sys/class/net/*/address\n",
        d.path().display()
    );
    let c = Case::new(&ini);
    let (o, a) = c.run(&[
        "--obfuscate",
        "--obfuscation-map",
        &map.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for id in &ids {
        assert!(!word_occurs(&a.raw, id), "{id} left in the archive");
        assert!(
            !word_occurs(a.path.to_string_lossy().as_bytes(), id),
            "{id} in the archive's name"
        );
    }
    let conf = a
        .members
        .iter()
        .find(|(n, _)| {
            n.ends_with("obfhost1.conf") || (n.contains("/obfhost") && n.ends_with(".conf"))
        })
        .unwrap_or_else(|| panic!("the host's file under its token: {:?}", a.members.keys()));
    assert!(String::from_utf8_lossy(&conf.1 .0).starts_with("listen = "));
    let link = a
        .members
        .iter()
        .find(|(n, _)| n.ends_with("/current"))
        .expect("the link");
    assert!(
        link.1 .1.as_deref().unwrap().starts_with("obfhost"),
        "{:?}",
        link.1
    );
    let gz = a.entry(&d.path().join("old.log.gz").display().to_string());
    assert_eq!(gz["status"], "excluded", "{gz}");
    let log = a.commands_log();
    assert!(log.contains("obfhost"), "{log}");
    assert!(log.contains("02:00:00:00:00:0"), "{log}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&map).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(map.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let first_hostname = a.file(Path::new("/etc/hostname")).to_vec();
    let first_name = a.path.file_name().unwrap().to_string_lossy().into_owned();

    // A second run uses the same tokens.
    fs::remove_file(&a.path).unwrap();
    let (o, b) = c.run(&[
        "--obfuscate",
        "--obfuscation-map",
        &map.display().to_string(),
    ]);
    assert!(o.status.success());
    assert_eq!(b.file(Path::new("/etc/hostname")), &first_hostname[..]);
    let host_token = String::from_utf8_lossy(&first_hostname).trim().to_string();
    assert!(host_token.starts_with("obfhost"), "{host_token}");
    let second_name = b.path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        first_name.split('-').nth(1),
        second_name.split('-').nth(1),
        "{first_name} vs {second_name}"
    );
    assert!(second_name.contains(&host_token));
    assert!(b.commands_log().contains(&host_token));
}

#[test]
fn low_priority_runs_at_nice_19_in_the_idle_io_class() {
    let c = Case::new(
        "[commands]\nnice = cut -d' ' -f19 /proc/self/stat\nio = ionice -p $$ 2>/dev/null || echo no ionice\n",
    );
    let (o, a) = c.run(&["--low-priority"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = a.commands_log();
    assert!(
        log.contains("==== nice ====") && log.contains("--- stdout ---\n19\n"),
        "{log}"
    );
    assert!(
        log.contains("--- stdout ---\nidle\n") || log.contains("no ionice"),
        "{log}"
    );
    let (_, b) = {
        fs::remove_file(&a.path).unwrap();
        c.run(&[])
    };
    assert!(
        b.commands_log().contains("--- stdout ---\n0\n"),
        "{}",
        b.commands_log()
    );
}

#[test]
fn obfuscation_refuses_a_map_others_can_read() {
    let maps = tempfile::tempdir().unwrap();
    let map = maps.path().join("obfuscation.json");
    fs::write(&map, "{\"tokens\":{}}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(maps.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&map, fs::Permissions::from_mode(0o644)).unwrap();
    let c = Case::new("[commands]\nx = true\n");
    let mut cmd = c.cmd();
    cmd.args([
        "--obfuscate",
        "--obfuscation-map",
        &map.display().to_string(),
    ]);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1), "{}", show(&cmd, &o));
    assert_one_line_error(
        "calink",
        &String::from_utf8_lossy(&o.stderr),
        "obfuscation.json",
    );
    assert_eq!(fs::read_dir(c.out()).unwrap().count(), 0);
    finish();
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_no_archive_under_the_final_name() {
    let src = tempfile::tempdir().unwrap();
    // Incompressible, so the archive cannot fit in 1 MiB.
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(src.path().join("noise"), &noise).unwrap();
    let c = Case::new(&format!(
        "[files]\nn = {}/noise\n[output]\narchive = full\n",
        src.path().display()
    ));
    let mnt = c.path("small");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs (the test runs as root)");
    let _guard = Tmpfs(mnt.clone());
    let mut cmd = calink();
    cmd.arg("-c")
        .arg(c.path("calink.ini"))
        .arg("-o")
        .arg(&mnt)
        .arg("--no-scrub");
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(4), "{}", show(&cmd, &o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_one_line_error("calink", &stderr, "disk full");
    assert!(!mnt.join("full.tar.gz").exists());
    assert_eq!(
        fs::read_dir(&mnt).unwrap().count(),
        0,
        "no temporary file left"
    );
    finish();
}

#[test]
fn setup_errors_are_one_line_and_nothing_is_written() {
    let c = Case::new("[info]\nload = loadavg, cpuu\n");
    let o = run(&mut c.cmd());
    assert_eq!(o.status.code(), Some(1));
    assert_one_line_error("calink", &String::from_utf8_lossy(&o.stderr), "cpuu");

    let mut cmd = calink();
    cmd.args(["-c", "/nonexistent/calink.ini"]);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1));
    assert_one_line_error(
        "calink",
        &String::from_utf8_lossy(&o.stderr),
        "/nonexistent/calink.ini",
    );

    let c = Case::new("[commands]\nx = true\n");
    let mut cmd = calink();
    cmd.arg("-c")
        .arg(c.path("calink.ini"))
        .args(["-o", "/nonexistent-out"]);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1));
    assert_one_line_error(
        "calink",
        &String::from_utf8_lossy(&o.stderr),
        "/nonexistent-out",
    );
    finish();
}

#[test]
fn missing_files_and_failing_commands_are_recorded_and_the_run_goes_on() {
    let c = Case::new(
        "[files]\nmissing = /nonexistent/calink-file\nnomatch = /nonexistent/*.log\n\
         optional = ?/nonexistent/optional\n\
         [commands]\nbad = exit 2\n",
    );
    let (o, a) = c.run(&[]);
    assert_eq!(o.status.code(), Some(3));
    let e = a.entry("/nonexistent/calink-file");
    assert_eq!(
        (e["status"].as_str(), e["reason"].as_str()),
        (Some("skipped"), Some("not found"))
    );
    assert_eq!(a.entry("/nonexistent/*.log")["status"], "excluded");
    assert_eq!(a.entry("/nonexistent/optional")["status"], "excluded");
    assert_eq!(a.entry("bad")["exit_code"], 2);
    assert!(a
        .text("calink.log")
        .contains("/nonexistent/calink-file: not found"));
}

#[test]
fn the_archive_being_written_and_the_obfuscation_map_are_never_collected() {
    let d = tempfile::tempdir().unwrap();
    let map = d.path().join("state/obfuscation.json");
    fs::create_dir(d.path().join("out")).unwrap();
    fs::write(d.path().join("keep"), "k\n").unwrap();
    let ini = format!("[files]\nall = {}\n", d.path().display());
    fs::write(d.path().join("calink.ini"), &ini).unwrap();
    let mut cmd = calink();
    cmd.arg("-c")
        .arg(d.path().join("calink.ini"))
        .arg("-o")
        .arg(d.path().join("out"))
        .args(["--obfuscate", "--obfuscation-map"])
        .arg(&map);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", show(&cmd, &o));
    let archive = Archive::read(Path::new(String::from_utf8_lossy(&o.stdout).trim()));
    assert_eq!(archive.file(&d.path().join("keep")), b"k\n");
    assert!(
        !archive
            .members
            .keys()
            .any(|k| k.contains("/out/") || k.contains("obfuscation.json")),
        "{:?}",
        archive.members.keys()
    );
    let m = archive.manifest();
    let excluded: Vec<&str> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "calink's own file")
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(excluded.len(), 2, "{excluded:?}");
}

#[test]
fn dry_run_lists_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), "abc").unwrap();
    let c = Case::new(&format!(
        "[info]\ns = os, cpu\n[files]\nf = {0}/f\n    {0}/none\n[commands]\nmark = touch {0}/ran\n",
        d.path().display()
    ));
    let mut cmd = c.cmd();
    cmd.arg("--dry-run");
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", show(&cmd, &o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("info s: os, cpu"), "{out}");
    assert!(
        out.contains(&format!("file {}/f (3 bytes)", d.path().display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("skip {}/none (not found)", d.path().display())),
        "{out}"
    );
    assert!(out.contains("command mark: touch"), "{out}");
    assert_eq!(fs::read_dir(c.out()).unwrap().count(), 0);
    assert!(!d.path().join("ran").exists());
}

#[test]
fn progress_on_a_terminal_and_quiet_otherwise() {
    let c = Case::new("[commands]\nhello = echo hi\n");
    // stderr a pipe (cron, a script): nothing on it.
    let (o, _) = c.run(&[]);
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // On a terminal (script(1) gives it one): what it does, as it does it.
    let out = c.path("out-tty");
    fs::create_dir(&out).unwrap();
    let line = format!(
        "{} -c {} -o {}",
        env!("CARGO_BIN_EXE_calink"),
        c.path("calink.ini").display(),
        out.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", show(&cmd, &o));
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains("calink: running [hello]: echo hi"), "{tty}");
    assert!(tty.contains("calink: [hello]: exit code 0 in "), "{tty}");
}

/// The info items as another program uses them: library functions returning values
/// that serialize to the documented JSON.
#[test]
fn the_info_items_are_a_library_api() {
    use hostkit::calink::info;
    let l = serde_json::to_value(info::loadavg().unwrap()).unwrap();
    for k in ["1", "5", "15"] {
        assert!(l["average"][k].is_number(), "{l}");
    }
    assert!(l["entities"]["current"].as_u64().unwrap() >= 1, "{l}");
    assert!(l["entities"]["total"].as_u64().unwrap() >= 1, "{l}");
    assert!(l["last_pid"].is_u64(), "{l}");
    let me = std::process::id();
    assert!(info::ps().unwrap().iter().any(|p| p.pid == me));
}
