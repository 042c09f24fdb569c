//! What a running server says about itself over its socket.

use std::time::Duration;

use super::{Facts, Role};

const SERVER_QUERY: &str = "
SELECT current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
            ELSE pg_current_wal_lsn()::text END,
       (SELECT system_identifier FROM pg_control_system())::text,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       current_setting('cluster_name'),
       CASE WHEN pg_is_in_recovery() THEN current_setting('primary_conninfo') END";

/// Ask the running server; a failure is a problem of this cluster, what the files
/// said stays.
pub(super) async fn query_server(c: &mut Facts, timeout: Duration) {
    let Some(sock) = c.socket_dir.clone() else {
        c.problems
            .push("running, but listens on no socket or address".into());
        return;
    };
    let conninfo = format!(
        "host='{}' port={} dbname=postgres application_name=ele_tools connect_timeout={}",
        sock.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'"),
        c.port,
        timeout.as_secs().max(1)
    );
    let client = match tokio::time::timeout(timeout, crate::pg::connect(&conninfo)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return c
                .problems
                .push(format!("cannot connect to {}: {}", e.target(), e.detail()))
        }
        Err(_) => {
            return c
                .problems
                .push(format!("{}: no answer within {timeout:?}", sock.display()))
        }
    };
    let row = match client.query_one(SERVER_QUERY, &[]).await {
        Ok(r) => r,
        Err(e) => {
            return c.problems.push(format!(
                "{} port {}: {}",
                sock.display(),
                c.port,
                crate::pg::one_line(&e)
            ));
        }
    };
    let num: i32 = row.get(0);
    c.server_version = Some(if num >= 100000 {
        format!("{}.{}", num / 10000, num % 10000)
    } else {
        format!("{}.{}.{}", num / 10000, num / 100 % 100, num % 100)
    });
    let recovery: bool = row.get(1);
    c.role = Some(if recovery {
        Role::Replica
    } else {
        Role::Primary
    });
    c.wal_lsn = row
        .get::<_, Option<String>>(2)
        .and_then(|l| l.parse().ok())
        .or(if recovery { c.wal_lsn } else { None });
    c.system_identifier = row.get(3);
    c.timeline = row.get::<_, Option<i32>>(4).map(|t| t as u32);
    let name: String = row.get(5);
    if !name.is_empty() {
        c.cluster_name = Some(name);
    }
    c.master_host = if recovery { row.get(6) } else { None };
}
