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

/// What push, pull, render and apply-bundle need from pacha.ini: its `[nodes]` section
/// ([`Settings::from_section`]), with `master` from `[pacha]` and the ssh settings from
/// `[ssh]` filled in by [`run`].
#[derive(Debug, Clone, PartialEq)]
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

/// The keys of pacha.ini's `[nodes]` section.
pub const KEYS: &[&str] = &[
    "master_root",
    "node_root",
    "node_command",
    "master_command",
    "ssh_timeout",
    "script_timeout",
];

impl Settings {
    /// From pacha.ini's `[nodes]` (every key optional; defaults as [`Settings::default`]).
    pub fn from_section(sec: &crate::config::Section<'_>) -> Result<Settings, ConfigError> {
        sec.reject_unknown(KEYS)?;
        let d = Settings::default();
        let absolute = |k: &str, p: PathBuf| {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(sec.bad_value(k, &p.display().to_string(), "must be an absolute path"))
            }
        };
        let secs = |k: &str, def: Duration| {
            sec.duration(k, def, Duration::from_secs(1)..=Duration::from_secs(86400))
        };
        Ok(Settings {
            master_root: absolute("master_root", sec.path_or("master_root", "/opt/pacha")?)?,
            node_root: absolute("node_root", sec.path_or("node_root", "/")?)?,
            node_command: sec.string_or("node_command", &d.node_command)?,
            master: None,
            master_command: sec.string_or("master_command", &d.master_command)?,
            ssh: SshSettings {
                timeout: secs("ssh_timeout", d.ssh.timeout)?,
                ..d.ssh.clone()
            },
            script_timeout: secs("script_timeout", d.script_timeout)?,
        })
    }
}

/// Records a commit in this host's history: the message and the paths just written
/// (tracked first if they are not). `Ok(Some(id))` committed, `Ok(None)` nothing to.
pub type CommitFn<'a> = &'a dyn Fn(&str, &[PathBuf]) -> Result<Option<String>, String>;

/// What [`run_with`] works with: the settings, and how to record a commit.
pub struct Context<'a> {
    pub settings: Settings,
    pub commit: CommitFn<'a>,
}

fn node_state(about: &'static str) -> [Arg; 3] {
    [
        Arg::new("node")
            .value_name("NODE")
            .required(true)
            .help(about),
        Arg::new("state")
            .value_name("STATE")
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

/// Run one of [`subcommands`] with pacha's configuration: `[nodes]`, `[pacha] master`
/// (`host` or `host:port`) and `[ssh]`; commits go to this host's history
/// ([`super::repo`]), the written files tracked first when they are not yet.
pub fn run(name: &str, m: &ArgMatches, cfg: &super::Config) -> Result<ExitCode, NodesError> {
    let mut settings = cfg.nodes.clone();
    settings.master = match &cfg.master {
        None => None,
        Some(m) => Some(nodefile::split_address(m).map_err(|r| {
            NodesError::Setup(format!(
                "{}: [pacha] master = {m:?}: {r}",
                cfg.path.display()
            ))
        })?),
    };
    settings.ssh = SshSettings {
        user: cfg.ssh.user.clone(),
        port: cfg.ssh.port,
        connect_timeout: Duration::from_secs(cfg.ssh.connect_timeout.into()),
        identity: cfg.ssh.identity.clone(),
        known_hosts: cfg.ssh.known_hosts.clone(),
        extra: cfg.ssh.options.clone(),
        ..settings.ssh
    };
    let commit = |msg: &str, paths: &[PathBuf]| -> Result<Option<String>, String> {
        let mut new = Vec::new();
        for p in paths {
            if super::repo::tracked_root(cfg, p)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                new.push(p.clone());
            }
        }
        if !new.is_empty() {
            super::repo::track(cfg, &new).map_err(|e| e.to_string())?;
        }
        super::repo::commit(cfg, msg).map_err(|e| e.to_string())
    };
    run_with(
        name,
        m,
        &Context {
            settings,
            commit: &commit,
        },
    )
}

/// Run one of [`subcommands`] with explicit settings.
pub fn run_with(name: &str, m: &ArgMatches, ctx: &Context<'_>) -> Result<ExitCode, NodesError> {
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
        let paths: Vec<PathBuf> = files.iter().map(|d| apply::target(root, d)).collect();
        let msg = format!(
            "pacha {via}: node {} state {}: {}",
            plan.node,
            plan.state,
            files.join(", ")
        );
        match (ctx.commit)(&msg, &paths) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommands_are_well_formed_and_ours() {
        let c = Command::new("pacha").subcommands(subcommands());
        c.clone().debug_assert();
        for s in c.get_subcommands() {
            assert!(handles(s.get_name()), "{}", s.get_name());
        }
        let m = c
            .try_get_matches_from(["pacha", "push", "web1", "prod", "--check"])
            .unwrap();
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(
            (name, arg(sub, "node"), arg(sub, "state")),
            ("push", "web1", "prod")
        );
        assert!(sub.get_flag("check"));
    }

    #[test]
    fn settings_from_the_nodes_section() {
        let ini = crate::config::Config::parse(
            "[nodes]\nmaster_root = /srv/pacha\nscript_timeout = 5\n",
            Path::new("p.ini"),
        )
        .unwrap();
        let s = Settings::from_section(&ini.section("nodes")).unwrap();
        assert_eq!(s.master_root, PathBuf::from("/srv/pacha"));
        assert_eq!(s.script_timeout, Duration::from_secs(5));
        assert_eq!(s.node_root, PathBuf::from("/"));
        let ini =
            crate::config::Config::parse("[nodes]\nnode_root = rel\n", Path::new("p.ini")).unwrap();
        let e = Settings::from_section(&ini.section("nodes")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.ini: [nodes] node_root = \"rel\": must be an absolute path"
        );
        let ini = crate::config::Config::parse("[nodes]\nroot = /x\n", Path::new("p.ini")).unwrap();
        let e = Settings::from_section(&ini.section("nodes")).unwrap_err();
        assert_eq!(e.to_string(), "p.ini: [nodes] root: unknown key");
    }
}
