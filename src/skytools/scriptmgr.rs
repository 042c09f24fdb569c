//! scriptmgr: start, stop and inspect the services registered in /etc/skytools.ini.
//!
//! `[scriptmgr]` names the job config files (`config_list`, globs); each other section
//! is a service type (`script`, `args`, `cwd`, `disabled`, `user`). Every job config
//! file matched is one job: the section named after a service type makes it a job of
//! that type, its `job_name` (default: the file's name without extension) names it, its
//! `pidfile` tells whether it runs. Start launches `script config -d args` and waits
//! until the pidfile shows a live process; stop sends SIGINT and waits for it to go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser, ValueEnum};
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::daemon::running_pid_of;

pub const PROGRAM: &str = "scriptmgr";
const SECTION: &str = "scriptmgr";
const SERVICE_KEYS: &[&str] = &["script", "args", "cwd", "disabled", "user"];
/// How long start waits for the pidfile, and stop for the process to exit.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Status,
    Start,
    Stop,
    Restart,
    Reload,
}

/// Manage the Skytools services registered in a scriptmgr configuration.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// scriptmgr configuration (/etc/skytools.ini)
    pub config: PathBuf,
    /// What to do
    pub action: Action,
    /// Jobs to act on (by job name)
    pub jobs: Vec<String>,
    /// All jobs
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// All jobs of this service type
    #[arg(short = 't', long = "type", value_name = "SERVICE")]
    pub service: Option<String>,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::cli::finish(PROGRAM, run(&args))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub script: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub disabled: bool,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub service: String,
    pub config: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub disabled: bool,
}

/// Services and jobs from the scriptmgr configuration and the files it lists.
pub fn load(path: &Path) -> anyhow::Result<(BTreeMap<String, Service>, Vec<Job>)> {
    let cfg = Config::load(path)?;
    cfg.require_section(SECTION)?;
    let mut services = BTreeMap::new();
    for name in cfg.sections().filter(|s| *s != SECTION) {
        let sec = cfg.section(name);
        sec.reject_unknown(SERVICE_KEYS)?;
        let script = cfg.require(name, "script")?;
        services.insert(
            name.to_string(),
            Service {
                name: name.to_string(),
                script,
                args: sec
                    .raw("args")?
                    .map(|a| a.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default(),
                cwd: PathBuf::from(sec.raw("cwd")?.unwrap_or_else(|| "/".into())),
                disabled: sec.bool("disabled", false)?,
                user: sec.string("user")?,
            },
        );
    }
    let patterns = cfg.section(SECTION).list("config_list")?;
    let mut jobs = Vec::new();
    for pattern in patterns {
        let mut files: Vec<PathBuf> = glob_files(&pattern)
            .with_context(|| format!("{}: [{SECTION}] config_list: {pattern}", path.display()))?;
        files.sort();
        for file in files {
            let jc = Config::load(&file)?;
            for svc in jc.sections().filter(|s| services.contains_key(*s)) {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let js = jc.section(svc);
                jobs.push(Job {
                    name: js.raw("job_name")?.unwrap_or(stem),
                    service: svc.to_string(),
                    pidfile: js.string("pidfile")?.map(PathBuf::from),
                    disabled: services[svc].disabled || js.bool("disabled", false)?,
                    config: file.clone(),
                });
            }
        }
    }
    Ok((services, jobs))
}

/// Files matching a glob pattern (wildcards in the last path component only, which is
/// how config_list is written: /etc/skytools/*.ini).
fn glob_files(pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    let p = Path::new(pattern);
    let (dir, name) = (
        p.parent().unwrap_or(Path::new(".")),
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    if !name.contains(['*', '?']) {
        return Ok(if p.is_file() {
            vec![p.to_path_buf()]
        } else {
            vec![]
        });
    }
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(anyhow::anyhow!("cannot list {}: {e}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let fname = e.file_name().to_string_lossy().into_owned();
        if crate::glob::matches(&name, &fname) && e.path().is_file() {
            out.push(e.path());
        }
    }
    Ok(out)
}

fn job_pid(job: &Job) -> Option<i32> {
    job.pidfile
        .as_deref()
        .and_then(|p| running_pid_of(p, Some(&job.config)).ok().flatten())
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn start(job: &Job, svc: &Service) -> Result<String, String> {
    if let Some(pid) = job_pid(job) {
        return Ok(format!("already running (pid {pid})"));
    }
    let Some(pidfile) = &job.pidfile else {
        return Err("no pidfile in its config: cannot tell whether it runs".into());
    };
    let mut cmd = crate::proc::Cmd::new(&svc.script);
    cmd.arg(&job.config)
        .arg("-d")
        .args(&svc.args)
        .current_dir(&svc.cwd);
    if let Some(user) = &svc.user {
        if nix::unistd::Uid::effective().is_root() {
            cmd.user(user);
        } else {
            // Not fatal (Skytools' scriptmgr run by the job's own user is common), but
            // never silent: the job runs with our identity, not the one configured.
            let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| nix::unistd::Uid::effective().to_string());
            eprintln!(
                "scriptmgr: warning: {}: [{}] user = {user} is not applied: scriptmgr \
                 runs as {me}, not root, so the job runs as {me}",
                job.name, svc.name
            );
        }
    }
    let out = cmd.run().map_err(|e| e.detail())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} exited with {}: {}",
            svc.script,
            out.status,
            err.trim()
        ));
    }
    if wait_until(|| job_pid(job).is_some()) {
        Ok(format!("started (pid {})", job_pid(job).unwrap_or(0)))
    } else {
        Err(format!(
            "no live process in {} after {WAIT:?}",
            pidfile.display()
        ))
    }
}

fn stop(job: &Job) -> Result<String, String> {
    let Some(pid) = job_pid(job) else {
        return Ok("not running".into());
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT)
        .map_err(|e| format!("signal pid {pid}: {e}"))?;
    if wait_until(|| !crate::daemon::pid_alive(pid)) {
        Ok(format!("stopped (pid {pid})"))
    } else {
        Err(format!("pid {pid} still running {WAIT:?} after SIGINT"))
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (services, jobs) = load(&args.config)?;
    let selected: Vec<&Job> = if args.all
        || (args.action == Action::Status && args.jobs.is_empty() && args.service.is_none())
    {
        jobs.iter().collect()
    } else if let Some(t) = &args.service {
        if !services.contains_key(t) {
            anyhow::bail!("{}: no service type [{t}]", args.config.display());
        }
        jobs.iter().filter(|j| &j.service == t).collect()
    } else {
        let mut sel = Vec::new();
        for name in &args.jobs {
            sel.push(
                jobs.iter()
                    .find(|j| &j.name == name)
                    .with_context(|| format!("no job named {name}"))?,
            );
        }
        if sel.is_empty() {
            anyhow::bail!("name jobs, or use -a (all) or -t SERVICE");
        }
        sel
    };
    let mut failed = false;
    for job in selected {
        let svc = &services[&job.service];
        let result = match args.action {
            Action::Status => Ok(match (job.disabled, job_pid(job)) {
                (true, _) => "disabled".to_string(),
                (false, Some(pid)) => format!("running (pid {pid})"),
                (false, None) => "stopped".to_string(),
            }),
            _ if job.disabled => Ok("disabled, skipped".to_string()),
            Action::Start => start(job, svc),
            Action::Stop => stop(job),
            Action::Restart => stop(job).and_then(|_| start(job, svc)),
            Action::Reload => match job_pid(job) {
                Some(pid) => {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)
                        .map(|_| format!("reloaded (pid {pid})"))
                        .map_err(|e| format!("signal pid {pid}: {e}"))
                }
                None => Err("not running".into()),
            },
        };
        match result {
            Ok(msg) => println!("{:<24} {:<12} {msg}", job.name, job.service),
            Err(msg) => {
                failed = true;
                println!("{:<24} {:<12} FAILED: {msg}", job.name, job.service);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(crate::glob::matches("*.ini", "pgqd.ini"));
        assert!(!crate::glob::matches("*.ini", "pgqd.ini~"));
        assert!(!crate::glob::matches("*.ini", ".hidden.ini"));
        assert!(crate::glob::matches("job?.ini", "job1.ini"));
    }

    #[test]
    fn services_and_jobs() {
        let d = tempfile::tempdir().unwrap();
        let jobs_dir = d.path().join("skytools");
        std::fs::create_dir(&jobs_dir).unwrap();
        std::fs::write(jobs_dir.join("pgqd.ini"), "[pgqd]\npidfile = /run/x.pid\n").unwrap();
        std::fs::write(jobs_dir.join("other.ini"), "[dummy]\njob_name = worker1\n").unwrap();
        std::fs::write(jobs_dir.join("ignored.ini"), "[unknown_type]\n").unwrap();
        let main = d.path().join("skytools.ini");
        std::fs::write(
            &main,
            format!(
                "[scriptmgr]\njob_name = scriptmgr\nconfig_list = {}/*.ini\n[DEFAULT]\ncwd = /\n[pgqd]\nscript = /usr/bin/pgqd\n[dummy]\nscript = /bin/true\nargs = -x -y\ndisabled = yes\n",
                jobs_dir.display()
            ),
        )
        .unwrap();
        let (services, jobs) = load(&main).unwrap();
        assert_eq!(services["dummy"].args, vec!["-x", "-y"]);
        assert_eq!(jobs.len(), 2);
        let pgqd = jobs.iter().find(|j| j.service == "pgqd").unwrap();
        assert_eq!(pgqd.name, "pgqd");
        assert_eq!(pgqd.pidfile.as_deref(), Some(Path::new("/run/x.pid")));
        let w = jobs.iter().find(|j| j.service == "dummy").unwrap();
        assert_eq!(w.name, "worker1");
        assert!(w.disabled);
        std::fs::write(&main, "[scriptmgr]\n[pgqd]\nscrpt = x\n").unwrap();
        let e = load(&main).unwrap_err().to_string();
        assert!(e.ends_with("[pgqd] scrpt: unknown key"), "{e}");
    }
}
