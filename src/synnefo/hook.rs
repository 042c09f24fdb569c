//! snf-ganeti-hook: Ganeti instance post-hook → `ganeti-net-status` on AMQP.
//!
//! Installed as `00-snf-ganeti-hook` in `instance-{add,modify,reboot,start,stop}-post.d`.
//! Ganeti waits for hooks with no timeout, so a whole run is bounded (`[hook] timeout`,
//! default 5 s): if the broker does not confirm in time the message goes to the spool
//! snf-ganeti-eventd drains, and the hook still exits 0. An invalid environment is one
//! line on stderr and exit 1, which Ganeti records as a warning in the job log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use crate::amqp::direct::{deadline_in, Direct};
use crate::amqp::Message;
use crate::ganeti::hookenv::{self, HookPhase, InstanceHook};
use crate::ganeti::messages::{now, prefix};
use crate::synnefo::gtools::{self, Gtools, Overrides};

pub const PROGRAM: &str = "snf-ganeti-hook";
pub const SECTION: &str = "hook";
const REPORTED: [&str; 4] = [
    "instance-add",
    "instance-modify",
    "instance-reboot",
    "instance-start",
];

/// Ganeti instance post-hook: publish the instance's NICs (ganeti-net-status).
///
/// Reads everything from the GANETI_* environment Ganeti sets; takes no arguments.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, long_about = None)]
pub struct Args {
    /// Configuration file [default: /etc/synnefo/gtools.conf, if present]
    #[arg(short = 'c', long, value_name = "FILE", env = "SNF_GTOOLS_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    crate::cli::finish(PROGRAM, run(&args, &vars))
}

/// The message Synnefo's hook published.
pub fn net_status(hook: &InstanceHook) -> (String, Value) {
    let nics: Vec<Value> = hook
        .nics
        .iter()
        .map(|n| {
            let mut o = json!({
                "mac": n.mac, "ip": n.ip, "link": n.link, "network": n.network,
            });
            if let Some(v6) = &n.ipv6 {
                o["ipv6"] = json!(v6);
            }
            if let Some(fw) = &n.firewall {
                o["firewall"] = json!(fw);
            }
            o
        })
        .collect();
    (
        format!("ganeti.{}.event.net", prefix(&hook.instance)),
        json!({
            "event_time": now(),
            "type": "ganeti-net-status",
            "instance": hook.instance,
            "nics": nics,
        }),
    )
}

pub fn run(args: &Args, vars: &BTreeMap<String, String>) -> anyhow::Result<ExitCode> {
    let cfg = gtools::load(args.config.as_deref())?;
    let sec = cfg.section(SECTION);
    sec.reject_unknown(&["timeout"])?;
    let g = Gtools::from_config(&cfg, &Overrides::default())?;
    let timeout = sec.duration(
        "timeout",
        Duration::from_secs(5),
        Duration::from_millis(100)..=Duration::from_secs(600),
    )?;
    let hook = hookenv::parse(vars)?;
    if hook.phase != HookPhase::Post {
        anyhow::bail!(
            "GANETI_HOOKS_PHASE={:?}: install this hook in *-post.d only",
            hook.phase.as_str()
        );
    }
    if hook.path == "instance-stop" {
        return Ok(ExitCode::SUCCESS);
    }
    if !REPORTED.contains(&hook.path.as_str()) {
        anyhow::bail!(
            "GANETI_HOOKS_PATH={:?}: not an instance hook this program handles",
            hook.path
        );
    }
    if hook.master != g.node_name() {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(w) = g.tls_warning() {
        eprintln!("{PROGRAM}: warning: {w}");
    }
    let (routing_key, body) = net_status(&hook);
    let msg = Message::new(&g.exchange, &routing_key, &body)?;
    publish(&g, msg, timeout)?;
    Ok(ExitCode::SUCCESS)
}

/// Publish within `budget`, else spool. Spooling gets whatever is left of the budget
/// but always happens: losing the message is worse than a late hook.
pub fn publish(g: &Gtools, msg: Message, budget: Duration) -> anyhow::Result<()> {
    let spool = g.open_spool()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Keep a share of the budget for spooling after a broker that never answered.
        let deadline = deadline_in(budget.mul_f64(0.8));
        let mut direct = Direct::new(
            g.broker_config(),
            spool,
            &format!("hook-{}", std::process::id()),
        );
        direct.send(msg, deadline).await?;
        direct.finish(deadline).await?;
        Ok(())
    })
}
