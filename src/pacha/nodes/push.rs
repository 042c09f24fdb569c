//! `pacha push <node> <state>` on the master: render each node's files for the state,
//! send the bundle over ssh to `pacha apply-bundle` on the node, print its report.
//!
//! A meta-node's nodes are pushed one after the other in include order; one failing
//! (render, ssh, pre script, validation, post script) is reported and the push goes on
//! with the next; the exit status is non-zero if any failed. A plain node's setup
//! errors (unknown state, missing template) and transport errors are the command's one
//! error line.

use std::io::Write;
use std::process::ExitCode;

use super::nodefile::{self, Node};
use super::report::NodeReport;
use super::ssh::{self, Remote};
use super::{bundle, template, Context, NodesError};

/// Push one rendered node; a report, or why none came back.
fn push_one(
    ctx: &Context<'_>,
    node: &Node,
    state: &str,
    check: bool,
) -> Result<NodeReport, NodesError> {
    let s = &ctx.settings;
    let plan = template::render(&s.master_root, node, state)?;
    let data = bundle::write(&plan);
    let remote = Remote {
        host: node.host.clone(),
        port: node.port,
        user: node.user.clone(),
        command: node
            .command
            .clone()
            .unwrap_or_else(|| s.node_command.clone()),
    };
    let mut args = vec!["apply-bundle", "--via", "push"];
    if check {
        args.push("--check");
    }
    let out = ssh::run(&s.ssh, &remote, &args, Some(&data))?;
    match serde_json::from_slice::<NodeReport>(&out.stdout) {
        Ok(r) => Ok(r),
        Err(_) => Err(ssh::remote_error(&remote, &s.ssh, &out)),
    }
}

pub fn push(
    ctx: &Context<'_>,
    name: &str,
    state: &str,
    check: bool,
) -> Result<ExitCode, NodesError> {
    let nodes = nodefile::resolve(&ctx.settings.master_root, name)?;
    let meta = nodes.len() != 1 || nodes[0].name != name;
    let mut failed = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for n in &nodes {
        let report = match push_one(ctx, n, state, check) {
            Ok(r) => r,
            Err(e) if !meta => return Err(e),
            Err(e) => NodeReport::failure(&n.name, state, check, e.to_string()),
        };
        let _ = stdout.write_all(report.render().as_bytes());
        let _ = stdout.flush();
        if report.failed() {
            failed.push((n.name.clone(), report));
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !meta {
        let r = &failed[0].1;
        let why = r
            .error
            .clone()
            .or_else(|| {
                r.scripts
                    .iter()
                    .find(|s| !s.ok)
                    .map(|s| format!("{} failed ({})", s.what, s.status))
            })
            .unwrap_or_default();
        return Err(NodesError::Failed(format!(
            "push {name} state {state}: {why}"
        )));
    }
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    Err(NodesError::Failed(format!(
        "push {name} state {state}: {} of {} nodes failed: {}",
        failed.len(),
        nodes.len(),
        names.join(", ")
    )))
}
