//! `setup` and `stop` on the master: point PostgreSQL's archive_command at walmgr (or
//! away from it), through ALTER SYSTEM or by editing postgresql.conf, then reload, or
//! restart when archive_mode / wal_level changed and the ini says how.

use std::path::Path;

use super::config::{Master, Settings, SetupMethod, Slave};
use super::error::{Result, WalmgrError};
use super::{pg, StoreSettings};
use crate::fsutil::{self, PathError};
use crate::pg::quote;

/// The archive_command walmgr installs: this binary, this ini, absolute.
pub fn archive_command(m: &Master) -> String {
    super::self_command(&m.ini, m.walmgr_path.as_deref(), "xarchive %p %f")
}

/// Create the store's directories (the side that holds the store).
pub fn create_store(st: &StoreSettings, dry_run: bool) -> Result<()> {
    let p = &st.paths;
    if p.s3.is_some() {
        // Buckets are made by their owner; check that this one answers to these
        // credentials (also with -n: it changes nothing).
        super::store::WalStore::new(p).ensure_dirs()?;
        println!("S3 store {} reachable", p.root.display());
        // Base backups may be kept in a local directory beside it.
        for d in [&p.full_backup, &p.config_backup] {
            if super::config::StorePaths::in_s3(d) {
                continue;
            }
            if dry_run {
                println!("would create {}", d.display());
            } else {
                fsutil::ensure_dir(d, 0o700)?;
            }
        }
        return Ok(());
    }
    for d in [
        &p.root,
        &p.completed_wals,
        &p.partial_wals,
        &p.full_backup,
        &p.config_backup,
    ] {
        if dry_run {
            println!("would create {}", d.display());
        } else {
            fsutil::ensure_dir(d, 0o700)?;
        }
    }
    Ok(())
}

pub fn setup(settings: &Settings, dry_run: bool) -> Result<()> {
    match settings {
        Settings::Slave(s) => setup_slave(s, dry_run),
        Settings::Master(m) => {
            match m.remote() {
                None => create_store(&m.store, dry_run)?,
                Some(r) if !dry_run => {
                    r.run(&["setup"], &mut std::io::empty())?;
                }
                Some(_) => println!("would run setup on the slave"),
            }
            let cmd = archive_command(m);
            let mut settings = vec![("archive_mode", "on".to_string()), ("archive_command", cmd)];
            if m.hot_standby {
                settings.push(("hot_standby", "on".into()));
            }
            apply(m, settings, dry_run)
        }
    }
}

fn setup_slave(s: &Slave, dry_run: bool) -> Result<()> {
    create_store(&s.store, dry_run)
}

pub fn stop(m: &Master, dry_run: bool) -> Result<()> {
    // Skytools' choice: without a restart archive_mode stays on, so archive_command
    // must succeed (and WAL is not kept) or pg_wal would grow until the disk is full.
    let mut settings = vec![("archive_command", "/bin/true".to_string())];
    if m.master_restart_cmd.is_some() {
        settings.push(("archive_mode", "off".into()));
    }
    apply(m, settings, dry_run)
}

/// Settings that only take effect at server start.
fn needs_restart(key: &str) -> bool {
    matches!(key, "archive_mode" | "wal_level" | "hot_standby")
}

fn apply(m: &Master, mut settings: Vec<(&'static str, String)>, dry_run: bool) -> Result<()> {
    let conninfo = m.master_db.clone();
    let restart = pg::block_on(async {
        let c = pg::connect(&conninfo).await?;
        let c = &c;
        let ci = conninfo.as_str();
        let show = |k: &'static str| async move {
            c.query_one(&format!("SHOW {k}"), &[])
                .await
                .and_then(|r| r.try_get::<_, String>(0))
                .map_err(|e| pg::error(ci, &e))
        };
        if show("wal_level").await? == "minimal" {
            settings.push(("wal_level", "replica".into()));
        }
        let mut restart = false;
        for (k, v) in &settings {
            if needs_restart(k) && show(k).await? != *v {
                restart = true;
            }
        }
        for (k, v) in &settings {
            if dry_run {
                println!("would set {k} = '{v}'");
                continue;
            }
            if m.setup_method == SetupMethod::AlterSystem {
                let sql = format!(
                    "ALTER SYSTEM SET {k} = {}",
                    quote::alter_system_value(v)
                        .map_err(|e| WalmgrError::command(format!("ALTER SYSTEM SET {k}"), e))?
                );
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| pg::error(&conninfo, &e))?;
            }
            log::info!("{k} = '{v}'");
        }
        if !dry_run && m.setup_method == SetupMethod::ConfigFile {
            edit_config(m.master_config.as_deref().expect("checked"), &settings)?;
        }
        if !dry_run && !restart {
            c.batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|e| pg::error(&conninfo, &e))?;
            log::info!("configuration reloaded");
        }
        Ok::<_, WalmgrError>(restart)
    })?;
    if restart && !dry_run {
        match &m.master_restart_cmd {
            Some(cmd) => run_shell("master_restart_cmd", cmd)?,
            None => log::warn!(
                "archive_mode/wal_level changed: restart PostgreSQL for it to take effect \
                 (or set master_restart_cmd)"
            ),
        }
    }
    Ok(())
}

/// Run an operator's command line from the ini through sh.
pub fn run_shell(key: &str, cmd: &str) -> Result<()> {
    log::info!("running {key}: {cmd}");
    let st = crate::proc::Cmd::shell(cmd)
        .output(crate::proc::Output::Inherit)
        .run()
        .map_err(|e| WalmgrError::command(key, e.detail()))?
        .status;
    if !st.success() {
        return Err(WalmgrError::command(format!("{key} ({cmd})"), st));
    }
    Ok(())
}

/// Comment out the active lines setting each key and append walmgr's values.
pub fn edit_config(path: &Path, settings: &[(&str, String)]) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| PathError::new("read", path, e))?;
    let out = rewrite_config(&text, settings)
        .map_err(|e| WalmgrError::command(format!("{}: {}", path.display(), e.0), e.1))?;
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644);
    fsutil::write_atomic(path, out.as_bytes(), mode)?;
    Ok(())
}

/// The new text, or the key whose value PostgreSQL could not read back.
pub fn rewrite_config(
    text: &str,
    settings: &[(&str, String)],
) -> std::result::Result<String, (String, quote::QuoteError)> {
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        let t = line.trim_start();
        let key = t
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !t.starts_with('#') && settings.iter().any(|(k, _)| *k == key) {
            out.push_str("#walmgr# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    for (k, v) in settings {
        let v = quote::conf_value(v).map_err(|e| (k.to_string(), e))?;
        out.push_str(&format!("{k} = {v}\t# set by walmgr\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rewrite_comments_old_lines() {
        let t =
            "port = 5432\narchive_mode = off\n#archive_command = ''\narchive_command='cp %p /x'\n";
        let out = rewrite_config(
            t,
            &[
                ("archive_mode", "on".into()),
                ("archive_command", "w 'a' %p".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "port = 5432\n#walmgr# archive_mode = off\n#archive_command = ''\n\
             #walmgr# archive_command='cp %p /x'\narchive_mode = 'on'\t# set by walmgr\n\
             archive_command = 'w ''a'' %p'\t# set by walmgr\n"
        );
        let (key, _) = rewrite_config(t, &[("archive_command", "a\nb".into())]).unwrap_err();
        assert_eq!(key, "archive_command");
    }
}
