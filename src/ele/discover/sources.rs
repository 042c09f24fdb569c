//! The places a cluster shows itself: socket lock files, Debian's configuration,
//! pg_lsclusters, running postmasters. Each sighting names a data directory and a port.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Discovery, Sighting, Source};
use crate::pg::cluster::Layout;

pub(super) fn socket_locks(
    d: &Discovery,
    out: &mut Vec<(Source, Sighting)>,
    problems: &mut Vec<String>,
) {
    let lay = Layout::default();
    for dir in &d.socket_dirs {
        match lay.socket_locks(std::slice::from_ref(dir)) {
            Ok(locks) => {
                for l in locks {
                    out.push((
                        Source::SocketLock,
                        Sighting {
                            data_dir: Some(l.lock.data_dir.clone()),
                            port: Some(l.port),
                            socket_dir: Some(l.dir.clone()),
                            ..Sighting::default()
                        },
                    ));
                }
            }
            Err(e) => problems.push(format!("socket directory {}: {e}", dir.display())),
        }
    }
}

fn sorted_subdirs(p: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = match fs::read_dir(p) {
        Ok(e) => e
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

pub(super) fn debian(d: &Discovery, out: &mut Vec<(Source, Sighting)>, problems: &mut Vec<String>) {
    let lay = d.layout();
    let root = &d.conf_root;
    let versions = match sorted_subdirs(root) {
        Ok(v) => v,
        Err(e) => return problems.push(format!("{}: {e}", root.display())),
    };
    for ver in versions {
        let names = match sorted_subdirs(&root.join(&ver)) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{}: {e}", root.join(&ver).display()));
                continue;
            }
        };
        for name in names {
            if !root
                .join(&ver)
                .join(&name)
                .join("postgresql.conf")
                .is_file()
            {
                continue;
            }
            match lay.cluster(&ver, &name) {
                Ok(c) => out.push((
                    Source::Debian,
                    Sighting {
                        data_dir: c.data_directory.clone(),
                        port: Some(c.port),
                        debian: Some((ver.clone(), name.clone())),
                        conf_dir: Some(c.conf_dir.clone()),
                        socket_dir: c.socket_dirs.first().cloned(),
                        settings: Some(c.settings),
                    },
                )),
                Err(e) => problems.push(format!("cluster {ver}/{name}: {e}")),
            }
        }
    }
}

/// One line of `pg_lsclusters --no-header`: Ver Cluster Port Status Owner
/// Data-directory Log-file.
fn parse_lsclusters_line(line: &str) -> Option<(String, String, u16, PathBuf)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 {
        return None;
    }
    Some((
        f[0].to_string(),
        f[1].to_string(),
        f[2].parse().ok()?,
        PathBuf::from(f[5]),
    ))
}

pub(super) fn pg_lsclusters(
    d: &Discovery,
    prog: &Path,
    out: &mut Vec<(Source, Sighting)>,
    problems: &mut Vec<String>,
) {
    let mut cmd = crate::proc::Cmd::new(prog);
    cmd.arg("--no-header").timeout(Duration::from_secs(30));
    if d.custom_conf_root() {
        cmd.env("PG_CLUSTER_CONF_ROOT", &d.conf_root);
    }
    let o = match cmd.run() {
        Ok(o) => o,
        // postgresql-common is not installed: nothing to ask.
        Err(crate::proc::Error::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return
        }
        Err(e) => return problems.push(e.detail()),
    };
    if !o.success() {
        return problems.push(format!(
            "{} {}: {}",
            cmd.display(),
            o.describe(),
            o.stderr_line()
        ));
    }
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_lsclusters_line(line) {
            Some((ver, name, port, data)) => out.push((
                Source::PgLsclusters,
                Sighting {
                    data_dir: Some(data),
                    port: Some(port),
                    debian: Some((ver, name)),
                    ..Sighting::default()
                },
            )),
            None => problems.push(format!("pg_lsclusters: cannot parse {line:?}")),
        }
    }
}

/// A postmaster's command line: argv[0] is the postgres binary (a backend rewrites its
/// title to `postgres: ...`). Returns the `-D` argument, if any.
fn postmaster_cmdline(cmdline: &[u8]) -> Option<Option<PathBuf>> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let argv0 = args.first()?;
    if argv0.contains(':') {
        return None;
    }
    let base = Path::new(argv0).file_name()?.to_string_lossy().into_owned();
    if base != "postgres" && base != "postmaster" {
        return None;
    }
    let mut data = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-D" {
            data = it.next().map(PathBuf::from);
        } else if let Some(d) = a.strip_prefix("-D") {
            data = Some(PathBuf::from(d));
        }
    }
    Some(data)
}

pub(super) fn postmasters(
    proc: &Path,
    out: &mut Vec<(Source, Sighting)>,
    problems: &mut Vec<String>,
) {
    let entries = match fs::read_dir(proc) {
        Ok(e) => e,
        Err(e) => return problems.push(format!("{}: {e}", proc.display())),
    };
    let lay = Layout::default();
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let Some(dash_d) = postmaster_cmdline(&cmdline) else {
            continue;
        };
        // The postmaster works in its data directory; -D may be relative or absent.
        let data = fs::read_link(e.path().join("cwd")).ok().or(dash_d);
        let Some(data) = data else {
            problems.push(format!(
                "postmaster {pid}: cannot tell its data directory (no -D, cwd unreadable)"
            ));
            continue;
        };
        let pidfile = match lay.postmaster_pid(&data) {
            Ok(Some(p)) if p.pid == pid => p,
            // A single-user backend or a postmaster on its way out: not a server.
            Ok(_) => continue,
            Err(e) => {
                problems.push(format!("postmaster {pid}: {e}"));
                continue;
            }
        };
        out.push((
            Source::Postmaster,
            Sighting {
                data_dir: Some(data),
                port: Some(pidfile.port),
                socket_dir: pidfile.socket_dir.clone(),
                ..Sighting::default()
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmasters_by_command_line() {
        let pm = b"/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib/postgresql/15/main\0-c\0config_file=/etc/postgresql/15/main/postgresql.conf\0";
        assert_eq!(
            postmaster_cmdline(pm),
            Some(Some(PathBuf::from("/var/lib/postgresql/15/main")))
        );
        assert_eq!(
            postmaster_cmdline(b"postgres\0-D/srv/pg\0"),
            Some(Some(PathBuf::from("/srv/pg")))
        );
        assert_eq!(postmaster_cmdline(b"/usr/bin/postgres\0"), Some(None));
        assert_eq!(
            postmaster_cmdline(b"postgres: 15/main: checkpointer \0"),
            None
        );
        assert_eq!(postmaster_cmdline(b"/bin/bash\0-c\0postgres\0"), None);
        assert_eq!(postmaster_cmdline(b""), None);
    }

    #[test]
    fn lsclusters_lines() {
        let l = "15  main    5432 online,recovery postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log";
        assert_eq!(
            parse_lsclusters_line(l),
            Some((
                "15".into(),
                "main".into(),
                5432,
                PathBuf::from("/var/lib/postgresql/15/main")
            ))
        );
        assert_eq!(parse_lsclusters_line("15 main x down postgres /d /l"), None);
        assert_eq!(parse_lsclusters_line("15 main"), None);
    }
}
