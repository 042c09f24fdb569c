//! `pacha pull <node> <state>` on the node (a freshly booted host): fetch the rendered
//! bundle from the master (`ssh master pacha render <node> <state>`), apply it here with
//! the same code a push runs, commit, print the report.
//!
//! `pacha render <node> <state>` (hidden) is the master's side: the bundle on stdout.

use std::io::Write;
use std::process::ExitCode;

use super::nodefile::{self, NodeFile};
use super::ssh::{self, Remote};
use super::{apply_here, bundle, template, Context, NodesError, EXIT_CONFIG};

/// The master's side of a pull: the bundle of `node` for `state`, written to `out`.
pub fn render(
    ctx: &Context<'_>,
    node: &str,
    state: &str,
    out: &mut dyn Write,
) -> Result<(), NodesError> {
    let n = match nodefile::load(&ctx.settings.master_root, node)? {
        NodeFile::Node(n) => n,
        NodeFile::Meta { path, .. } => {
            return Err(NodesError::Usage(format!(
                "{}: {node} is a meta-node (include_nodes): pull one of the nodes it includes",
                path.display()
            )))
        }
    };
    let plan = template::render(&ctx.settings.master_root, &n, state)?;
    out.write_all(&bundle::write(&plan))
        .and_then(|_| out.flush())
        .map_err(|e| NodesError::Setup(format!("writing the bundle: {e}")))
}

pub fn pull(
    ctx: &Context<'_>,
    node: &str,
    state: &str,
    check: bool,
) -> Result<ExitCode, NodesError> {
    let s = &ctx.settings;
    nodefile::check_name("node", node).map_err(NodesError::Usage)?;
    nodefile::check_name("state", state).map_err(NodesError::Usage)?;
    let (host, port) = s.master.clone().ok_or_else(|| {
        NodesError::Setup("pull needs the master: set master in pacha.ini".into())
    })?;
    let remote = Remote {
        host,
        port,
        user: None,
        command: s.master_command.clone(),
    };
    let out = ssh::run(&s.ssh, &remote, &["render", node, state], None)?;
    if !out.success() {
        return Err(ssh::remote_error(&remote, &s.ssh, &out));
    }
    let plan = bundle::read(&mut &out.stdout[..]).map_err(|e| NodesError::Remote {
        host: remote.describe(&s.ssh),
        line: e.to_string(),
        code: EXIT_CONFIG,
    })?;
    let report = apply_here(ctx, &plan, check, &s.node_root, "pull");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report.render().as_bytes());
    let _ = stdout.flush();
    if report.failed() {
        let why = report
            .error
            .clone()
            .or_else(|| {
                report
                    .scripts
                    .iter()
                    .find(|s| !s.ok)
                    .map(|s| format!("{} failed ({})", s.what, s.status))
            })
            .unwrap_or_default();
        return Err(NodesError::Failed(format!(
            "pull {node} state {state}: {why}"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
