//! Applying a bundle on the node — the same code for push (started on the master, the
//! bundle arriving on stdin over ssh) and pull (started here, fetched from the master).
//!
//! 1. Plan: every dest (under the node root, `/` unless configured) is compared with
//!    what it should be — content, owner, group, mode — and is `created`, `changed` or
//!    `unchanged`. Owners and groups are resolved here (the node's users); an unknown
//!    one stops everything before any change. `--check` stops here with the diffs.
//! 2. Nothing differs: done (no scripts run).
//! 3. The pre scripts run, in order; one failing stops the apply, nothing changed.
//! 4. Every new file is staged beside its dest (`.tmp-<name>.<pid>.<n>`, the final owner,
//!    group and mode, fsynced); missing parent directories are made (root, 0755).
//! 5. Each staged file with a `validate` command is checked (`%s` = the staged file).
//!    A failure (or any failure in 4) removes every staged file and every directory made
//!    in 4: nothing changed.
//! 6. Every staged file is renamed over its dest, then each directory is fsynced once.
//! 7. The post scripts run, all of them; a failure is reported with its output (the
//!    files stay replaced: the report says so).
//!
//! Scripts run with the node root as working directory and `PACHA_NODE`, `PACHA_STATE`,
//! `PACHA_ACTION`, `PACHA_PHASE`, `PACHA_ROOT` set, staged (0700) in a private
//! temporary directory; scripts and validations are killed after the timeout.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Group, User};

use super::report::{FileReport, NodeReport, ScriptReport, Status};
use super::template::{Plan, Rendered, Script};
use crate::fsutil;
use crate::proc::{Cmd, Outcome};

pub struct Options<'a> {
    /// The node root the dests are under (`/` on a real node).
    pub root: &'a Path,
    pub check: bool,
    /// For each script and validation.
    pub timeout: Duration,
}

/// The node root + an absolute dest.
pub fn target(root: &Path, dest: &str) -> PathBuf {
    root.join(dest.trim_start_matches('/'))
}

struct Target<'a> {
    file: &'a Rendered,
    path: PathBuf,
    uid: u32,
    gid: u32,
    status: Status,
}

fn resolve_ids(f: &Rendered) -> Result<(u32, u32), String> {
    let s = &f.spec;
    let user = if s.owner.chars().all(|c| c.is_ascii_digit()) {
        let uid: u32 = s
            .owner
            .parse()
            .map_err(|_| format!("[{}] owner = {:?}: not a uid", s.section, s.owner))?;
        (uid, User::from_uid(uid.into()).ok().flatten())
    } else {
        let u = User::from_name(&s.owner).ok().flatten().ok_or_else(|| {
            format!(
                "[{}] owner = {:?}: no such user on this node ({})",
                s.section, s.owner, s.dest
            )
        })?;
        (u.uid.as_raw(), Some(u))
    };
    let gid = match &s.group {
        Some(g) if g.chars().all(|c| c.is_ascii_digit()) => g
            .parse()
            .map_err(|_| format!("[{}] group = {g:?}: not a gid", s.section))?,
        Some(g) => Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| {
                format!(
                    "[{}] group = {g:?}: no such group on this node ({})",
                    s.section, s.dest
                )
            })?
            .gid
            .as_raw(),
        None => user.1.map(|u| u.gid.as_raw()).ok_or_else(|| {
            format!(
                "[{}] owner = {:?}: uid without a passwd entry needs a group",
                s.section, s.owner
            )
        })?,
    };
    Ok((user.0, gid))
}

fn name_of_uid(uid: u32) -> String {
    User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn name_of_gid(gid: u32) -> String {
    Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// Compare one file with what is there.
fn compare(f: &Rendered, path: &Path, uid: u32, gid: u32) -> Result<(Status, Vec<String>), String> {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Status::Created, vec![])),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            return Err(format!("{}: a parent is not a directory", f.spec.dest))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) => m,
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(format!("{}: is a directory", f.spec.dest));
    }
    if !ft.is_file() {
        let kind = if ft.is_symlink() {
            "a symlink"
        } else {
            "a special file"
        };
        return Ok((Status::Changed, vec![format!("replaces {kind}")]));
    }
    let mut changes = Vec::new();
    let current = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if current != f.content {
        changes.push("content".to_string());
    }
    if meta.uid() != uid {
        changes.push(format!(
            "owner {} -> {}",
            name_of_uid(meta.uid()),
            name_of_uid(uid)
        ));
    }
    if meta.gid() != gid {
        changes.push(format!(
            "group {} -> {}",
            name_of_gid(meta.gid()),
            name_of_gid(gid)
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode != f.spec.mode {
        changes.push(format!("mode {mode:04o} -> {:04o}", f.spec.mode));
    }
    Ok(if changes.is_empty() {
        (Status::Unchanged, changes)
    } else {
        (Status::Changed, changes)
    })
}

/// `diff -u` of what is there against what would be.
fn diff(path: &Path, dest: &str, exists: bool, content: &[u8], state: &str) -> String {
    let old = if exists {
        path.to_path_buf()
    } else {
        PathBuf::from("/dev/null")
    };
    let mut c = Cmd::new("diff");
    c.arg("-u")
        .arg("--label")
        .arg(dest)
        .arg("--label")
        .arg(format!("{dest} (state {state})"))
        .arg(&old)
        .arg("-")
        .timeout(Duration::from_secs(60));
    match c.run_feeding(|w| w.write_all(content)) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(no diff: {})\n", e.detail()),
    }
}

fn outcome_text(o: &Outcome) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

/// Apply `plan` under `opts.root`. Never fails as a whole: what went wrong is in the
/// report (`error`, failed scripts). Two applies under one root never interleave (an
/// exclusive flock on the root directory, waited for).
pub fn apply(plan: &Plan, opts: &Options<'_>) -> NodeReport {
    let mut report = NodeReport {
        node: plan.node.clone(),
        state: plan.state.clone(),
        check: opts.check,
        ..NodeReport::default()
    };
    let _lock = match fs::File::open(opts.root)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e.to_string())
        }) {
        Ok(l) => l,
        Err(e) => {
            report.error = Some(format!("lock node root {}: {e}", opts.root.display()));
            return report;
        }
    };
    // 1. plan
    let mut targets = Vec::new();
    for f in &plan.files {
        let path = target(opts.root, &f.spec.dest);
        let planned = resolve_ids(f).and_then(|(uid, gid)| {
            compare(f, &path, uid, gid).map(|(status, changes)| (uid, gid, status, changes))
        });
        let (uid, gid, status, changes) = match planned {
            Ok(p) => p,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let diff = (opts.check
            && (status == Status::Created || changes.iter().any(|c| c == "content")))
        .then(|| {
            diff(
                &path,
                &f.spec.dest,
                status != Status::Created,
                &f.content,
                &plan.state,
            )
        });
        report.files.push(FileReport {
            dest: f.spec.dest.clone(),
            status,
            changes,
            diff,
        });
        targets.push(Target {
            file: f,
            path,
            uid,
            gid,
            status,
        });
    }
    // 2.
    if opts.check || report.all_unchanged() {
        return report;
    }
    let scripts = match ScriptDir::stage(&plan.scripts) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    // 3. pre scripts
    for (i, s) in plan
        .scripts
        .iter()
        .enumerate()
        .filter(|(_, s)| s.phase == "pre")
    {
        let r = scripts.run(i, s, plan, opts);
        let ok = r.ok;
        let what = r.what.clone();
        let status = r.status.clone();
        report.scripts.push(r);
        if !ok {
            report.error = Some(format!("{what} failed ({status})"));
            return report;
        }
    }
    // 4. stage, 5. validate
    let mut staging = Staging::default();
    let staged = (|| -> Result<(), String> {
        for t in targets.iter().filter(|t| t.status != Status::Unchanged) {
            let tmp = staging.stage(t)?;
            if let Some(v) = &t.file.spec.validate {
                let line = validate_line(v, &tmp);
                let o = Cmd::shell(&line)
                    .current_dir(opts.root)
                    .timeout(opts.timeout)
                    .run();
                let what = format!("validate {} ({v})", t.file.spec.dest);
                let (ok, status, output) = match o {
                    Ok(o) => (o.success(), o.describe(), outcome_text(&o)),
                    Err(e) => (false, e.detail(), String::new()),
                };
                report.scripts.push(ScriptReport {
                    what: what.clone(),
                    ok,
                    status: status.clone(),
                    output,
                });
                if !ok {
                    return Err(format!("{what} failed ({status})"));
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = staged {
        staging.undo();
        report.error = Some(e);
        return report;
    }
    // 6. replace
    if let Err(e) = staging.commit() {
        report.error = Some(e);
        report.partial = true;
        return report;
    }
    // 7. post scripts
    for (i, s) in plan
        .scripts
        .iter()
        .enumerate()
        .filter(|(_, s)| s.phase == "post")
    {
        let r = scripts.run(i, s, plan, opts);
        report.scripts.push(r);
    }
    report
}

/// `%s` → the staged file (shell-quoted), `%%` → `%`.
pub fn validate_line(cmd: &str, staged: &Path) -> String {
    let p = staged.to_string_lossy();
    let quoted = shlex::try_quote(&p)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| p.replace('\0', ""));
    let mut out = String::new();
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('%', Some('s')) => {
                chars.next();
                out.push_str(&quoted);
            }
            ('%', Some('%')) => {
                chars.next();
                out.push('%');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Files staged beside their dests, and the directories made for them.
#[derive(Default)]
struct Staging {
    staged: Vec<(PathBuf, PathBuf)>,
    made_dirs: Vec<PathBuf>,
}

impl Staging {
    fn stage(&mut self, t: &Target<'_>) -> Result<PathBuf, String> {
        let parent = fsutil::parent_dir(&t.path).to_path_buf();
        let mut missing = Vec::new();
        let mut p = parent.as_path();
        while !p.exists() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&d)
                .map_err(|e| format!("create directory {}: {e}", d.display()))?;
            self.made_dirs.push(d);
        }
        let tmp = fsutil::temp_path_for(&t.path);
        let io = |op: &str, e: std::io::Error| format!("{op} {}: {e}", tmp.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        self.staged.push((tmp.clone(), t.path.clone()));
        f.write_all(&t.file.content).map_err(|e| io("write", e))?;
        std::os::unix::fs::fchown(&f, Some(t.uid), Some(t.gid)).map_err(|e| io("chown", e))?;
        // After chown, which clears setuid/setgid.
        f.set_permissions(fs::Permissions::from_mode(t.file.spec.mode))
            .map_err(|e| io("chmod", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        Ok(tmp)
    }

    fn undo(&mut self) {
        for (tmp, _) in self.staged.drain(..) {
            let _ = fs::remove_file(tmp);
        }
        for d in self.made_dirs.drain(..).rev() {
            let _ = fs::remove_dir(d);
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        let mut dirs = BTreeSet::new();
        let staged = std::mem::take(&mut self.staged);
        let mut result = Ok(());
        for (tmp, dest) in &staged {
            if result.is_err() {
                let _ = fs::remove_file(tmp);
                continue;
            }
            match fs::rename(tmp, dest) {
                Ok(()) => {
                    dirs.insert(fsutil::parent_dir(dest).to_path_buf());
                }
                Err(e) => {
                    let _ = fs::remove_file(tmp);
                    result = Err(format!("rename into {}: {e}", dest.display()));
                }
            }
        }
        for d in self.made_dirs.iter().filter_map(|d| d.parent()) {
            dirs.insert(d.to_path_buf());
        }
        for d in dirs {
            if let Err(e) = fsutil::sync_dir(&d) {
                result = result.and(Err(e.to_string()));
            }
        }
        result
    }
}

/// The bundle's scripts, written out to run.
struct ScriptDir {
    dir: Option<PathBuf>,
}

impl ScriptDir {
    fn stage(scripts: &[Script]) -> Result<ScriptDir, String> {
        if scripts.is_empty() {
            return Ok(ScriptDir { dir: None });
        }
        let template = std::env::temp_dir().join("pacha-scripts.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
            format!(
                "create a directory for the scripts in {}: {e}",
                std::env::temp_dir().display()
            )
        })?;
        let sd = ScriptDir {
            dir: Some(dir.clone()),
        };
        for (i, s) in scripts.iter().enumerate() {
            let p = dir.join(format!("{i}-{}", s.name));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&p)
                .and_then(|mut f| f.write_all(&s.content))
                .map_err(|e| format!("write script {}: {e}", p.display()))?;
        }
        Ok(sd)
    }

    fn run(&self, i: usize, s: &Script, plan: &Plan, opts: &Options<'_>) -> ScriptReport {
        let dir = self.dir.as_deref().unwrap_or(Path::new("/nonexistent"));
        let p = dir.join(format!("{i}-{}", s.name));
        let o = Cmd::new(&p)
            .current_dir(opts.root)
            .env("PACHA_NODE", &plan.node)
            .env("PACHA_STATE", &plan.state)
            .env("PACHA_ACTION", &s.action)
            .env("PACHA_PHASE", &s.phase)
            .env("PACHA_ROOT", opts.root)
            .timeout(opts.timeout)
            .run();
        let (ok, status, output) = match o {
            Ok(o) => (o.success(), o.describe(), outcome_text(&o)),
            Err(e) => (false, e.detail(), String::new()),
        };
        ScriptReport {
            what: format!("script {}", s.label()),
            ok,
            status,
            output,
        }
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::nodefile::FileSpec;
    use super::*;

    fn file(dest: &str, content: &str, mode: u32, validate: Option<&str>) -> Rendered {
        Rendered {
            spec: FileSpec {
                section: dest.trim_start_matches('/').into(),
                app: "a".into(),
                source: "s".into(),
                dest: dest.into(),
                owner: "root".into(),
                group: None,
                mode,
                validate: validate.map(String::from),
                render: false,
            },
            content: content.as_bytes().to_vec(),
        }
    }

    fn script(phase: &str, name: &str, body: &str) -> Script {
        Script {
            phase: phase.into(),
            action: "a".into(),
            name: name.into(),
            content: format!("#!/bin/sh\n{body}\n").into_bytes(),
        }
    }

    fn plan(files: Vec<Rendered>, scripts: Vec<Script>) -> Plan {
        Plan {
            node: "n".into(),
            state: "s".into(),
            files,
            scripts,
        }
    }

    /// Every path under `root` with its mode, owner and content.
    fn snapshot(root: &Path) -> Vec<(PathBuf, u32, u32, Vec<u8>)> {
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
                out.push((e.path(), m.mode(), m.uid(), data));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn opts(root: &Path, check: bool) -> Options<'_> {
        Options {
            root,
            check,
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn files_are_created_changed_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/same"), "same\n").unwrap();
        fs::set_permissions(root.join("etc/same"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(root.join("etc/old"), "old\n").unwrap();
        let p = plan(
            vec![
                file("/etc/same", "same\n", 0o644, None),
                file("/etc/old", "new\n", 0o640, None),
                file("/etc/deep/er/suid", "x", 0o4755, None),
            ],
            vec![script(
                "post",
                "log",
                "echo \"$PACHA_NODE $PACHA_STATE $PACHA_PHASE\" > post.out",
            )],
        );
        let before = snapshot(root);
        let r = apply(&p, &opts(root, true));
        assert_eq!(snapshot(root), before, "--check changes nothing");
        assert!(!r.failed(), "{r:?}");
        assert_eq!(
            r.files.iter().map(|f| f.status).collect::<Vec<_>>(),
            [Status::Unchanged, Status::Changed, Status::Created]
        );
        assert_eq!(r.files[1].changes, ["content", "mode 0644 -> 0640"]);
        let diff = r.files[1].diff.as_deref().unwrap();
        assert!(
            diff.contains("-old\n+new\n") && diff.starts_with("--- /etc/old\n"),
            "{diff}"
        );
        assert!(
            r.render().contains("would be changed /etc/old"),
            "{}",
            r.render()
        );

        let r = apply(&p, &opts(root, false));
        assert!(!r.failed(), "{r:?}");
        assert_eq!(fs::read_to_string(root.join("etc/old")).unwrap(), "new\n");
        let m = fs::metadata(root.join("etc/deep/er/suid")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::read_to_string(root.join("post.out")).unwrap(),
            "n s post\n"
        );
        let r = apply(&p, &opts(root, false));
        assert!(r.all_unchanged() && r.scripts.is_empty(), "{r:?}");
        let names: Vec<String> = fs::read_dir(root.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_failing_pre_script_or_validation_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/a"), "a0\n").unwrap();
        let files = || {
            vec![
                file("/etc/a", "a1\n", 0o644, None),
                file("/etc/new/dir/b", "b1\n", 0o644, Some("grep -q good %s")),
            ]
        };
        let before = snapshot(root);
        let p = plan(
            files(),
            vec![
                script("pre", "10-ok", "true"),
                script("pre", "20-bad", "echo refusing; exit 4"),
                script("pre", "30-never", "touch never"),
            ],
        );
        let r = apply(&p, &opts(root, false));
        assert_eq!(
            r.error.as_deref(),
            Some("script pre/a/20-bad failed (exited with exit status: 4)")
        );
        assert_eq!(r.scripts.len(), 2);
        assert_eq!(r.scripts[1].output, "refusing\n");
        assert_eq!(snapshot(root), before);

        let p = plan(files(), vec![script("post", "p", "touch post-ran")]);
        let r = apply(&p, &opts(root, false));
        let e = r.error.as_deref().unwrap();
        assert!(
            e.starts_with("validate /etc/new/dir/b (grep -q good %s) failed"),
            "{e}"
        );
        assert_eq!(
            snapshot(root),
            before,
            "staged files and made directories are gone"
        );
        assert!(
            r.render().contains("n: FAILED, nothing changed: validate"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_failing_post_script_is_reported_with_its_output() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let p = plan(
            vec![file("/f", "1\n", 0o600, Some("test -s %s"))],
            vec![
                script("post", "10-bad", "echo out; echo err >&2; exit 3"),
                script("post", "20-ok", "touch second"),
            ],
        );
        let r = apply(&p, &opts(root, false));
        assert!(r.failed() && r.error.is_none(), "{r:?}");
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "1\n");
        assert!(root.join("second").exists(), "later post scripts still run");
        let bad = &r.scripts[1];
        assert_eq!((bad.ok, bad.output.as_str()), (false, "out\nerr\n"));
        assert!(
            r.render().contains(
                "script post/a/10-bad failed (exited with exit status: 3):\n    | out\n    | err\n"
            ),
            "{}",
            r.render()
        );
    }

    #[test]
    fn unknown_owners_stop_before_any_change() {
        let d = tempfile::tempdir().unwrap();
        let mut f = file("/x", "x", 0o644, None);
        f.spec.owner = "hk-no-such-user".into();
        let r = apply(&plan(vec![f], vec![]), &opts(d.path(), false));
        assert_eq!(
            r.error.as_deref(),
            Some("[x] owner = \"hk-no-such-user\": no such user on this node (/x)")
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn validate_lines_quote_the_staged_file() {
        assert_eq!(
            validate_line("visudo -cf %s && echo 100%%", Path::new("/etc/a b/.tmp-x")),
            "visudo -cf '/etc/a b/.tmp-x' && echo 100%"
        );
    }
}
