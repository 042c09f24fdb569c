//! Templates, nodes, push and pull: Pacha's "next release" design.
//!
//! On the master (`master_root`, `/opt/pacha` by default):
//!
//! ```text
//! templates/<app>/<state>/...        the files of an app in a state (template.rs)
//! scripts/pre/<action>/*             run on the node before the files are replaced
//! scripts/post/<action>/*            and after (apply.rs)
//! nodes/<node>/<node>.conf           what goes to a node, or a meta-node (nodefile.rs)
//! ```
//!
//! `pacha push <node> <state>` renders on the master and sends a checksummed tar bundle
//! (bundle.rs) over ssh (ssh.rs) to `pacha apply-bundle` on the node; `pacha pull <node>
//! <state>` runs on the node and fetches the bundle from `pacha render` on the master.
//! Either way the node applies it with the same code (apply.rs), commits the result to
//! its history and reports per file (report.rs).

pub mod apply;
pub mod bundle;
pub mod nodefile;
pub mod pull;
pub mod push;
pub mod report;
pub mod ssh;
pub mod template;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::cli::ExitError;
use crate::config::ConfigError;

pub use ssh::SshSettings;

/// Exit status: a node file, template or script is wrong (pacha's configuration code).
pub const EXIT_CONFIG: u8 = 3;
/// Exit status: an unknown node or state, a bad name (pacha's usage code).
pub const EXIT_USAGE: u8 = 4;
/// Exit status: an apply failed on a node (or on some nodes of a meta-node).
pub const EXIT_FAILED: u8 = 10;
/// Exit status: ssh could not reach a node or the master.
pub const EXIT_SSH: u8 = 11;
/// Exit status: a host key was unknown or changed, and refused.
pub const EXIT_HOST_KEY: u8 = 12;

#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A node file, template or script that cannot be used: unknown app, missing
    /// template, include cycle, ...
    #[error("{0}")]
    Setup(String),
    /// An unknown node or state, a bad name on the command line.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("ssh {host}: {line}")]
    Ssh { host: String, line: String },
    #[error("ssh {host}: host key refused (unknown or changed; add the right key to {known_hosts}): {line}")]
    HostKey {
        host: String,
        known_hosts: String,
        line: String,
    },
    /// The far side's pacha failed before it could report; `code` is its exit status.
    #[error("{host}: {line}")]
    Remote {
        host: String,
        line: String,
        code: u8,
    },
    /// An apply failed (the report on stdout says where).
    #[error("{0}")]
    Failed(String),
}

impl ExitError for NodesError {
    /// 3 a bad node file, template or bundle; 4 an unknown node or state; 10 an apply
    /// failed; 11 ssh failed; 12 a host key was refused; the far side's own code when
    /// its pacha failed before reporting.
    fn code(&self) -> u8 {
        match self {
            NodesError::Config(_) | NodesError::Setup(_) | NodesError::Bundle(_) => EXIT_CONFIG,
            NodesError::Usage(_) => EXIT_USAGE,
            NodesError::Failed(_) => EXIT_FAILED,
            NodesError::Ssh { .. } => EXIT_SSH,
            NodesError::HostKey { .. } => EXIT_HOST_KEY,
            NodesError::Remote { code, .. } => *code,
        }
    }
}

/// What push, pull, render and apply-bundle need from pacha.ini.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The master's tree (templates, scripts, nodes).
    pub master_root: PathBuf,
    /// Where a node applies dests (`/`; a temporary directory in tests).
    pub node_root: PathBuf,
    /// The pacha command line on the nodes (a node file's `command` overrides it).
    pub node_command: String,
    /// The master (host, port) a pull fetches from.
    pub master: Option<(String, Option<u16>)>,
    /// The pacha command line on the master.
    pub master_command: String,
    pub ssh: SshSettings,
    /// For each pre/post script and validation.
    pub script_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            master_root: PathBuf::from("/opt/pacha"),
            node_root: PathBuf::from("/"),
            node_command: "pacha".into(),
            master: None,
            master_command: "pacha".into(),
            ssh: SshSettings::default(),
            script_timeout: Duration::from_secs(300),
        }
    }
}

/// The keys [`Settings::from_section`] reads (for the section's `reject_unknown`).
pub const KEYS: &[&str] = &[
    "master_root",
    "node_root",
    "node_command",
    "master",
    "master_command",
    "ssh_user",
    "ssh_port",
    "ssh_identity",
    "ssh_known_hosts",
    "ssh_connect_timeout",
    "ssh_timeout",
    "script_timeout",
];

impl Settings {
    /// From pacha.ini's section (every key optional; defaults as [`Settings::default`]).
    pub fn from_section(sec: &crate::config::Section<'_>) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let master = match sec.string("master")? {
            None => None,
            Some(m) => {
                Some(nodefile::split_address(&m).map_err(|r| sec.bad_value("master", &m, r))?)
            }
        };
        let secs = |k: &str, def: Duration| {
            sec.duration(k, def, Duration::from_secs(1)..=Duration::from_secs(86400))
        };
        Ok(Settings {
            master_root: sec.path_or("master_root", "/opt/pacha")?,
            node_root: sec.path_or("node_root", "/")?,
            node_command: sec.string_or("node_command", &d.node_command)?,
            master,
            master_command: sec.string_or("master_command", &d.master_command)?,
            ssh: SshSettings {
                program: d.ssh.program.clone(),
                user: sec.string_or("ssh_user", &d.ssh.user)?,
                port: sec.number("ssh_port", d.ssh.port, 1..=65535)?,
                identity: sec.path("ssh_identity")?,
                known_hosts: sec.path("ssh_known_hosts")?,
                connect_timeout: secs("ssh_connect_timeout", d.ssh.connect_timeout)?,
                timeout: secs("ssh_timeout", d.ssh.timeout)?,
                extra: Vec::new(),
            },
            script_timeout: secs("script_timeout", d.script_timeout)?,
        })
    }
}

/// What the caller (pacha's `run`) hands in: the settings, and how to record a commit in
/// this host's history (`Ok(Some(id))` committed, `Ok(None)` nothing to commit).
pub struct Context<'a> {
    pub settings: Settings,
    pub commit: &'a dyn Fn(&str) -> Result<Option<String>, String>,
}

fn node_state(about: &'static str) -> [Arg; 3] {
    [
        Arg::new("node").required(true).help(about),
        Arg::new("state")
            .required(true)
            .help("The state: templates/<app>/<state>/ for each app of the node"),
        Arg::new("check")
            .long("check")
            .action(ArgAction::SetTrue)
            .help("Show what would change (with diffs), change nothing"),
    ]
}

/// `push`, `pull`, and the two hidden halves of the transport.
pub fn subcommands() -> Vec<Command> {
    vec![
        Command::new("push")
            .about("Render a node's (or meta-node's) files for a state and apply them over ssh")
            .args(node_state(
                "The node (nodes/<node>/<node>.conf on this master)",
            )),
        Command::new("pull")
            .about("Fetch this node's files for a state from the master and apply them")
            .args(node_state("This host's node name on the master")),
        Command::new("apply-bundle")
            .hide(true)
            .about("Apply a bundle read on stdin (the node's side of push)")
            .arg(Arg::new("check").long("check").action(ArgAction::SetTrue))
            .arg(
                Arg::new("root")
                    .long("root")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("via")
                    .long("via")
                    .value_parser(["push", "pull"])
                    .default_value("push"),
            ),
        Command::new("render")
            .hide(true)
            .about("Write a node's bundle for a state to stdout (the master's side of pull)")
            .arg(Arg::new("node").required(true))
            .arg(Arg::new("state").required(true)),
    ]
}

/// Is `name` one of ours?
pub fn handles(name: &str) -> bool {
    matches!(name, "push" | "pull" | "apply-bundle" | "render")
}

fn arg<'m>(m: &'m ArgMatches, id: &str) -> &'m str {
    m.get_one::<String>(id).map(String::as_str).unwrap_or("")
}

pub fn run(name: &str, m: &ArgMatches, ctx: &Context<'_>) -> Result<ExitCode, NodesError> {
    let check = m
        .try_get_one::<bool>("check")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    match name {
        "push" => push::push(ctx, arg(m, "node"), arg(m, "state"), check),
        "pull" => pull::pull(ctx, arg(m, "node"), arg(m, "state"), check),
        "render" => {
            let mut out = std::io::stdout().lock();
            pull::render(ctx, arg(m, "node"), arg(m, "state"), &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        "apply-bundle" => {
            let root = m
                .get_one::<PathBuf>("root")
                .cloned()
                .unwrap_or_else(|| ctx.settings.node_root.clone());
            let mut input = Vec::new();
            std::io::stdin()
                .lock()
                .take(bundle::MAX_BUNDLE + (2 << 20))
                .read_to_end(&mut input)
                .map_err(|e| bundle::BundleError(format!("reading stdin: {e}")))?;
            let plan = bundle::read(&mut &input[..])?;
            let report = apply_here(ctx, &plan, check, &root, arg(m, "via"));
            let json = serde_json::to_string(&report).unwrap_or_default();
            println!("{json}");
            Ok(if report.failed() {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        other => Err(NodesError::Usage(format!("no such command {other}"))),
    }
}

/// Apply `plan` on this host under `root`, then commit what changed to its history.
pub fn apply_here(
    ctx: &Context<'_>,
    plan: &template::Plan,
    check: bool,
    root: &Path,
    via: &str,
) -> report::NodeReport {
    let opts = apply::Options {
        root,
        check,
        timeout: ctx.settings.script_timeout,
    };
    let mut r = apply::apply(plan, &opts);
    let replaced = r.error.is_none() || r.partial;
    if !check && replaced && !r.all_unchanged() {
        let files: Vec<&str> = r
            .files
            .iter()
            .filter(|f| f.status != report::Status::Unchanged)
            .map(|f| f.dest.as_str())
            .collect();
        let msg = format!(
            "pacha {via}: node {} state {}: {}",
            plan.node,
            plan.state,
            files.join(", ")
        );
        match (ctx.commit)(&msg) {
            Ok(c) => r.commit = c,
            Err(e) => r.scripts.push(report::ScriptReport {
                what: "commit to this host's history".into(),
                ok: false,
                status: "failed".into(),
                output: e,
            }),
        }
    }
    r
}
