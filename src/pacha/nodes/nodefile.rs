//! Node files: `<master>/nodes/<node>/<node>.conf`, INI read by `crate::config::Config`.
//!
//! ```ini
//! [node]
//! address = web1.example.com:22
//! apps = nginx, sudo
//!
//! [vars]
//! listen = 8080
//!
//! [nginx.conf]
//! app = nginx
//! dest = /etc/nginx/nginx.conf
//! mode = 0640
//! validate = nginx -t -c %s
//! ```
//!
//! `[node]` keys: `address` (ssh `host`, `host:port` or `[v6]:port`; default the node
//! name), `user` (ssh user; default pacha.ini's), `command` (the pacha command line on
//! the node; default pacha.ini's), `apps` (required: `templates/<app>/<state>/` for each),
//! `actions` (which `scripts/{pre,post}/<action>/` run; default the apps), `description`.
//! `[vars]`: values for files with `render = yes` (template.rs). Every other section is
//! one file (its name a label): `app` (required when the node has several apps),
//! `source` (relative to `templates/<app>/<state>/`; default the label), `dest`
//! (required, absolute), `owner` (default root), `group` (default the owner's primary
//! group, resolved on the node), `mode` (octal, setuid/setgid/sticky allowed; default
//! 0644), `validate` (a shell command taken literally, without `%(name)s` interpolation: `%s` =
//! the staged file, `%%` = `%`), `render`.
//!
//! A meta-node has only `[node] include_nodes = ['srv1.conf', 'srv2.conf']` (Python list
//! syntax as Pacha's design wrote it, or a plain comma list); each item names a node
//! (`srv1` or `srv1.conf`, found at `nodes/srv1/srv1.conf`), possibly another meta-node.
//! They are expanded depth-first in the order written; a node reached twice is applied
//! once (at its first place); a cycle is an error naming the chain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::config::{Config, Section};

use super::NodesError;

const NODE_KEYS: &[&str] = &[
    "address",
    "user",
    "command",
    "apps",
    "actions",
    "include_nodes",
    "description",
];
const FILE_KEYS: &[&str] = &[
    "app", "source", "dest", "owner", "group", "mode", "validate", "render",
];

/// One file of a node, as its section says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub section: String,
    pub app: String,
    /// Relative to `templates/<app>/<state>/`, no `..`.
    pub source: String,
    /// Absolute path on the node.
    pub dest: String,
    pub owner: String,
    /// None: the owner's primary group (resolved on the node).
    pub group: Option<String>,
    pub mode: u32,
    pub validate: Option<String>,
    pub render: bool,
}

/// A node (not a meta-node): where to reach it and what goes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub path: PathBuf,
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub command: Option<String>,
    pub apps: Vec<String>,
    pub actions: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub files: Vec<FileSpec>,
}

/// What a node file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFile {
    Node(Box<Node>),
    /// The node names it includes, in order.
    Meta {
        path: PathBuf,
        include: Vec<String>,
    },
}

/// A name used as a path component (node, app, state, action): no `/`, no leading `.`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not valid (letters, digits, '.', '_', '-', '@', '+'; not starting with '.' or '-')"
        ))
    }
}

pub fn node_path(master: &Path, name: &str) -> PathBuf {
    master.join("nodes").join(name).join(format!("{name}.conf"))
}

/// Read `nodes/<name>/<name>.conf`.
pub fn load(master: &Path, name: &str) -> Result<NodeFile, NodesError> {
    check_name("node", name).map_err(NodesError::Usage)?;
    let path = node_path(master, name);
    if !path.is_file() {
        return Err(NodesError::Usage(format!(
            "unknown node {name:?}: {} does not exist",
            path.display()
        )));
    }
    let cfg = Config::load(&path)?;
    parse(&cfg, name)
}

/// Interpret a parsed node file (its name is `name`).
pub fn parse(cfg: &Config, name: &str) -> Result<NodeFile, NodesError> {
    let path = cfg.path().to_path_buf();
    let setup = |m: String| NodesError::Setup(format!("{}: {m}", path.display()));
    cfg.require_section("node")?;
    let node = cfg.section("node");
    node.reject_unknown(NODE_KEYS)?;
    if let Some(raw) = node.string("include_nodes")? {
        let include = parse_include(&node, &raw)?;
        let other: Vec<&str> = cfg
            .sections()
            .filter(|s| *s != "node")
            .chain(
                ["address", "user", "command", "apps", "actions"]
                    .into_iter()
                    .filter(|k| node.string(k).ok().flatten().is_some()),
            )
            .collect();
        if !other.is_empty() {
            return Err(setup(format!(
                "a meta-node (include_nodes) lists nodes only; remove {}",
                other.join(", ")
            )));
        }
        return Ok(NodeFile::Meta { path, include });
    }

    let (host, port) = match node.string("address")? {
        None => (name.to_string(), None),
        Some(a) => split_address(&a).map_err(|r| node.bad_value("address", &a, r))?,
    };
    let user = node.string("user")?;
    let command = node.string("command")?;
    let apps = node.list("apps")?;
    if apps.is_empty() {
        return Err(NodesError::Config(crate::config::ConfigError::MissingKey {
            path: path.clone(),
            section: "node".into(),
            key: "apps".into(),
        }));
    }
    for a in &apps {
        check_name("app", a).map_err(|r| node.bad_value("apps", a, r))?;
    }
    let actions = match node.string("actions")? {
        None => apps.clone(),
        Some(_) => node.list("actions")?,
    };
    for a in &actions {
        check_name("action", a).map_err(|r| node.bad_value("actions", a, r))?;
    }
    let mut vars = BTreeMap::new();
    if cfg.has_section("vars") {
        for k in cfg.keys("vars") {
            vars.insert(k.clone(), cfg.section("vars").raw(&k)?.unwrap_or_default());
        }
    }
    let mut files = Vec::new();
    let mut dests = BTreeMap::new();
    for s in cfg.sections().filter(|s| *s != "node" && *s != "vars") {
        let f = file_spec(&cfg.section(s), &apps)?;
        if let Some(prev) = dests.insert(f.dest.clone(), s.to_string()) {
            return Err(setup(format!(
                "[{s}] dest = {:?}: already the dest of [{prev}]",
                f.dest
            )));
        }
        files.push(f);
    }
    if files.is_empty() {
        return Err(setup(
            "no file sections: a node needs at least one file".into(),
        ));
    }
    Ok(NodeFile::Node(Box::new(Node {
        name: name.to_string(),
        path,
        host,
        port,
        user,
        command,
        apps,
        actions,
        vars,
        files,
    })))
}

fn file_spec(s: &Section<'_>, apps: &[String]) -> Result<FileSpec, NodesError> {
    s.reject_unknown(FILE_KEYS)?;
    let app = match s.string("app")? {
        Some(a) if apps.contains(&a) => a,
        Some(a) => {
            return Err(s
                .bad_value(
                    "app",
                    &a,
                    format!("not in [node] apps ({})", apps.join(", ")),
                )
                .into())
        }
        None if apps.len() == 1 => apps[0].clone(),
        None => {
            return Err(s
                .bad_value(
                    "app",
                    "",
                    format!("required: the node has several apps ({})", apps.join(", ")),
                )
                .into())
        }
    };
    let source = s.string_or("source", s.name())?;
    let p = Path::new(&source);
    if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(s
            .bad_value(
                "source",
                &source,
                "must be a relative path inside the state directory (no '..')",
            )
            .into());
    }
    let dest = s.required("dest")?;
    let d = Path::new(&dest);
    if !d.is_absolute()
        || dest.ends_with('/')
        || d.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(s
            .bad_value(
                "dest",
                &dest,
                "must be an absolute file path without '.' or '..'",
            )
            .into());
    }
    let owner = s.string_or("owner", "root")?;
    check_owner(&owner).map_err(|r| s.bad_value("owner", &owner, r))?;
    let group = s.string("group")?;
    if let Some(g) = &group {
        check_owner(g).map_err(|r| s.bad_value("group", g, r))?;
    }
    let mode = match s.string("mode")? {
        None => 0o644,
        Some(m) => parse_mode(&m).map_err(|r| s.bad_value("mode", &m, r))?,
    };
    // Literal: `%s` is ours, not ConfigParser's interpolation.
    let validate = s.literal("validate");
    let render = s.bool("render", false)?;
    Ok(FileSpec {
        section: s.name().to_string(),
        app,
        source,
        dest,
        owner,
        group,
        mode,
        validate,
        render,
    })
}

/// An octal mode: `644`, `0644`, `4755`, `0o600`; at most 07777.
pub fn parse_mode(v: &str) -> Result<u32, String> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    let bad = || "not an octal mode such as 0644 (at most 07777)".to_string();
    if digits.is_empty() || digits.len() > 5 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m > 0o7777 {
        return Err(bad());
    }
    Ok(m)
}

/// A user or group: a name as useradd allows (or a number). Whether it exists is the
/// node's business (checked there before anything changes).
pub fn check_owner(v: &str) -> Result<(), String> {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
        return Ok(());
    }
    let mut chars = v.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest = v.trim_end_matches('$');
    let rest_ok = rest
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if first_ok && rest_ok && v.len() <= 32 {
        Ok(())
    } else {
        Err(
            "not a user or group name (lower-case letters, digits, '_', '-', '.', or a number)"
                .into(),
        )
    }
}

/// `host`, `host:port`, `[v6]:port`, `[v6]`.
pub fn split_address(a: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("port {p:?} is not a number from 1 to 65535");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(bad_port(p)),
    };
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        match after {
            "" => (h.to_string(), None),
            _ => match after.strip_prefix(':') {
                Some(p) => (h.to_string(), port(p)?),
                None => return Err("expected ':port' after ']'".into()),
            },
        }
    } else {
        match a.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h.to_string(), port(p)?),
            Some(_) => return Err("an IPv6 address must be written [addr]:port".into()),
            None => (a.to_string(), None),
        }
    };
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err("not a host name or address".into());
    }
    Ok((host, port))
}

/// `['a.conf', "b"]` or `a.conf, b` → node names.
fn parse_include(node: &Section<'_>, raw: &str) -> Result<Vec<String>, NodesError> {
    let inner = raw.trim();
    let inner = match (inner.strip_prefix('['), inner.ends_with(']')) {
        (Some(i), true) => &i[..i.len() - 1],
        (None, false) => inner,
        _ => {
            return Err(node
                .bad_value("include_nodes", raw, "unbalanced '[' ']'")
                .into())
        }
    };
    let mut names = Vec::new();
    for item in inner.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let unq = match (item.chars().next(), item.chars().last()) {
            (Some(q @ ('\'' | '"')), Some(l)) if item.len() >= 2 && l == q => {
                &item[1..item.len() - 1]
            }
            (Some('\'' | '"'), _) => {
                return Err(node
                    .bad_value(
                        "include_nodes",
                        raw,
                        format!("unterminated quote in {item}"),
                    )
                    .into())
            }
            _ => item,
        };
        let name = unq.strip_suffix(".conf").unwrap_or(unq);
        check_name("node", name).map_err(|r| node.bad_value("include_nodes", raw, r))?;
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(node.bad_value("include_nodes", raw, "lists no node").into());
    }
    Ok(names)
}

/// The nodes `name` stands for, in order: itself, or what a meta-node includes, expanded.
pub fn resolve(master: &Path, name: &str) -> Result<Vec<Node>, NodesError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut chain = Vec::new();
    walk(master, name, &mut chain, &mut seen, &mut out)?;
    Ok(out)
}

fn walk(
    master: &Path,
    name: &str,
    chain: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<Node>,
) -> Result<(), NodesError> {
    if chain.iter().any(|c| c == name) {
        let parent = chain.last().cloned().unwrap_or_default();
        chain.push(name.to_string());
        return Err(NodesError::Setup(format!(
            "{}: [node] include_nodes: cycle {}",
            node_path(master, &parent).display(),
            chain.join(" -> ")
        )));
    }
    match load(master, name).map_err(|e| match (e, chain.last()) {
        (NodesError::Usage(m), Some(parent)) => NodesError::Setup(format!(
            "{}: [node] include_nodes: {m}",
            node_path(master, parent).display()
        )),
        (e, _) => e,
    })? {
        NodeFile::Node(n) => {
            if seen.insert(n.name.clone()) {
                out.push(*n);
            }
        }
        NodeFile::Meta { include, .. } => {
            chain.push(name.to_string());
            for i in &include {
                walk(master, i, chain, seen, out)?;
            }
            chain.pop();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(master: &Path, name: &str, text: &str) {
        let p = node_path(master, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn err(master: &Path, name: &str) -> String {
        resolve(master, name).unwrap_err().to_string()
    }

    const WEB: &str = "[node]\naddress = 10.0.0.5:2222\napps = nginx, sudo\n\
        [nginx.conf]\napp = nginx\ndest = /etc/nginx/nginx.conf\nmode = 0640\n\
        [sudoers]\napp = sudo\nsource = sudoers.d/web\ndest = /etc/sudoers.d/web\n\
        mode = 0440\nvalidate = visudo -cf %s\n";

    #[test]
    fn a_node_file_reads_into_files_with_defaults() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "web1", WEB);
        let nodes = resolve(d.path(), "web1").unwrap();
        assert_eq!(nodes.len(), 1);
        let n = &nodes[0];
        assert_eq!((n.host.as_str(), n.port), ("10.0.0.5", Some(2222)));
        assert_eq!(n.actions, ["nginx", "sudo"]);
        assert_eq!(n.files.len(), 2);
        let f = &n.files[0];
        assert_eq!(
            (f.source.as_str(), f.dest.as_str(), f.owner.as_str(), f.mode),
            ("nginx.conf", "/etc/nginx/nginx.conf", "root", 0o640)
        );
        assert_eq!(f.group, None);
        assert_eq!(n.files[1].validate.as_deref(), Some("visudo -cf %s"));
        assert_eq!(n.files[1].source, "sudoers.d/web");
    }

    #[test]
    fn meta_nodes_expand_in_order_once_and_cycles_are_named() {
        let d = tempfile::tempdir().unwrap();
        let one = "[node]\napps = a\n[f]\ndest = /etc/f\n";
        for n in ["srv1", "srv2", "srv3"] {
            write(d.path(), n, one);
        }
        write(d.path(), "inner", "[node]\ninclude_nodes = srv3, srv1\n");
        write(
            d.path(),
            "all",
            "[node]\ninclude_nodes = ['srv2.conf', \"inner\", 'srv1.conf']\n",
        );
        let names: Vec<String> = resolve(d.path(), "all")
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["srv2", "srv3", "srv1"]);

        write(d.path(), "a", "[node]\ninclude_nodes = ['b.conf']\n");
        write(
            d.path(),
            "b",
            "[node]\ninclude_nodes = ['srv1.conf', 'a.conf']\n",
        );
        let e = err(d.path(), "a");
        assert!(
            e.ends_with("b/b.conf: [node] include_nodes: cycle a -> b -> a"),
            "{e}"
        );
        write(d.path(), "self", "[node]\ninclude_nodes = self\n");
        assert!(err(d.path(), "self").ends_with("cycle self -> self"));

        write(d.path(), "gone", "[node]\ninclude_nodes = srv1, nosuch\n");
        let e = err(d.path(), "gone");
        assert!(
            e.contains("gone/gone.conf: [node] include_nodes: unknown node \"nosuch\""),
            "{e}"
        );
        write(
            d.path(),
            "mixed",
            "[node]\ninclude_nodes = srv1\napps = a\n",
        );
        assert!(err(d.path(), "mixed").contains("remove apps"));
    }

    #[test]
    fn bad_node_files_name_file_section_key_value() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\nmode = 0999\n",
                "[f] mode = \"0999\": not an octal mode",
            ),
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\nmode = 17777\n",
                "[f] mode = \"17777\"",
            ),
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\nowner = Root!\n",
                "[f] owner = \"Root!\": not a user",
            ),
            (
                "[node]\napps = a\n[f]\ndest = etc/f\n",
                "[f] dest = \"etc/f\": must be an absolute",
            ),
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\nsource = ../../x\n",
                "[f] source = \"../../x\"",
            ),
            (
                "[node]\napps = a, b\n[f]\ndest = /etc/f\n",
                "[f] app = \"\": required",
            ),
            (
                "[node]\napps = a\n[f]\napp = c\ndest = /etc/f\n",
                "[f] app = \"c\": not in [node] apps",
            ),
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\ncolour = red\n",
                "[f] colour: unknown key",
            ),
            (
                "[node]\napps = a\n[f]\n",
                "[f] dest: required key is missing",
            ),
            (
                "[node]\n[f]\ndest = /etc/f\n",
                "[node] apps: required key is missing",
            ),
            ("[node]\napps = a\n", "no file sections"),
            (
                "[node]\napps = a\n[f]\ndest = /etc/f\n[g]\ndest = /etc/f\n",
                "[g] dest = \"/etc/f\": already the dest of [f]",
            ),
            (
                "[node]\naddress = h:0\napps = a\n[f]\ndest = /etc/f\n",
                "[node] address = \"h:0\": port",
            ),
            ("[f]\ndest = /etc/f\n", "no section [node]"),
            ("[node]\ninclude_nodes = ['a.conf'\n", "unbalanced"),
            (
                "[node]\ninclude_nodes = ../x\n",
                "node name \"../x\" is not valid",
            ),
        ];
        for (text, want) in cases {
            write(d.path(), "n", text);
            let e = err(d.path(), "n");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("nodes/n/n.conf"), "{e}");
        }
        let e = err(d.path(), "nosuch");
        assert!(e.starts_with("unknown node \"nosuch\": "), "{e}");
        assert!(err(d.path(), "../etc").contains("not valid"));
    }

    #[test]
    fn modes_and_addresses() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("04755"), Ok(0o4755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("").is_err());
        assert_eq!(split_address("[::1]:22"), Ok(("::1".into(), Some(22))));
        assert_eq!(split_address("h"), Ok(("h".into(), None)));
        assert!(split_address("::1").is_err());
        assert!(split_address("-oProxyCommand=x").is_err());
        assert!(check_owner("www-data").is_ok() && check_owner("1000").is_ok());
        assert!(check_owner("-x").is_err());
    }
}
