//! Templates and states on the master, rendered for one node.
//!
//! A *state* is a directory name under every app of the node:
//! `templates/<app>/<state>/` holds the files of `<app>` in that state (`default`,
//! `production`, `test`...). Rendering a node for a state reads, for each file section of
//! its node file, `templates/<app>/<state>/<source>`; every app of the node must have the
//! state (no silent fallback to another state).
//!
//! Templates are plain files, copied byte for byte, unless their section says
//! `render = yes`: then (UTF-8 text only) every `{{ name }}` is replaced by the variable
//! `name` — `node`, `state`, `app`, or a key of the node file's `[vars]` — and `{{{{` is a
//! literal `{{`. An unknown variable is an error naming the template, line and name.
//! Nothing else (no conditionals, no loops): a state directory is how variants are made.
//!
//! The pre and post scripts come along: for each action of the node (its apps unless
//! `actions` says otherwise), every regular file of `scripts/{pre,post}/<action>/`, sorted
//! by name, names starting with `.` or ending in `~` skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::nodefile::{check_name, FileSpec, Node};
use super::NodesError;

/// A file ready to travel: its spec and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub spec: FileSpec,
    pub content: Vec<u8>,
}

/// A script to run on the node before (`pre`) or after (`post`) the files are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub phase: String,
    pub action: String,
    pub name: String,
    pub content: Vec<u8>,
}

impl Script {
    /// `pre/<action>/<name>`, as reports name it.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.phase, self.action, self.name)
    }
}

/// Everything one node gets for one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub node: String,
    pub state: String,
    pub files: Vec<Rendered>,
    pub scripts: Vec<Script>,
}

pub fn state_dir(master: &Path, app: &str, state: &str) -> PathBuf {
    master.join("templates").join(app).join(state)
}

/// Render `node` for `state` from the master's tree.
pub fn render(master: &Path, node: &Node, state: &str) -> Result<Plan, NodesError> {
    check_name("state", state).map_err(NodesError::Usage)?;
    for app in &node.apps {
        let app_dir = master.join("templates").join(app);
        if !app_dir.is_dir() {
            return Err(NodesError::Setup(format!(
                "{}: unknown app {app:?}: {} is not a directory",
                node.path.display(),
                app_dir.display()
            )));
        }
        let dir = state_dir(master, app, state);
        if !dir.is_dir() {
            let mut known: Vec<String> = std::fs::read_dir(&app_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            known.sort();
            return Err(NodesError::Usage(format!(
                "unknown state {state:?} of app {app:?}: {} is not a directory (states: {})",
                dir.display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    let mut files = Vec::new();
    for spec in &node.files {
        let src = state_dir(master, &spec.app, state).join(&spec.source);
        let raw = std::fs::read(&src).map_err(|e| {
            NodesError::Setup(format!(
                "{}: [{}] source = {:?}: cannot read template {}: {e}",
                node.path.display(),
                spec.section,
                spec.source,
                src.display()
            ))
        })?;
        let content = if spec.render {
            let mut vars = node.vars.clone();
            vars.insert("node".into(), node.name.clone());
            vars.insert("state".into(), state.to_string());
            vars.insert("app".into(), spec.app.clone());
            substitute(&raw, &vars)
                .map_err(|m| NodesError::Setup(format!("template {}: {m}", src.display())))?
        } else {
            raw
        };
        files.push(Rendered {
            spec: spec.clone(),
            content,
        });
    }
    let mut scripts = Vec::new();
    for phase in ["pre", "post"] {
        for action in &node.actions {
            let dir = master.join("scripts").join(phase).join(action);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !n.ends_with('~'))
                .collect();
            names.sort();
            for name in names {
                let p = dir.join(&name);
                let content = std::fs::read(&p).map_err(|e| {
                    NodesError::Setup(format!("cannot read script {}: {e}", p.display()))
                })?;
                scripts.push(Script {
                    phase: phase.into(),
                    action: action.clone(),
                    name,
                    content,
                });
            }
        }
    }
    Ok(Plan {
        node: node.name.clone(),
        state: state.to_string(),
        files,
        scripts,
    })
}

/// `{{ name }}` → its value; `{{{{` → `{{`.
pub fn substitute(raw: &[u8], vars: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let text =
        std::str::from_utf8(raw).map_err(|e| format!("render = yes needs UTF-8 text: {e}"))?;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("{{") {
        out.push_str(&rest[..pos]);
        let line = text[..text.len() - rest.len() + pos].matches('\n').count() + 1;
        let after = &rest[pos + 2..];
        if let Some(a) = after.strip_prefix("{{") {
            out.push_str("{{");
            rest = a;
            continue;
        }
        let end = after
            .find("}}")
            .ok_or_else(|| format!("line {line}: '{{{{' without '}}}}'"))?;
        let name = after[..end].trim().to_lowercase();
        let value = vars.get(&name).ok_or_else(|| {
            format!("line {line}: {{{{ {name} }}}}: no such variable (node, state, app or a key of [vars])")
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::nodefile;
    use super::*;

    fn put(p: &Path, content: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn renders_files_and_scripts_of_a_state() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path();
        put(
            &nodefile::node_path(m, "web1"),
            "[node]\napps = web\n[vars]\nport = 8080\n\
             [site]\ndest = /etc/site\nrender = yes\n[raw]\nsource = sub/raw\ndest = /etc/raw\n",
        );
        put(
            &m.join("templates/web/prod/site"),
            "{{node}} listens on {{ PORT }} in {{state}}; {{{{literal}}\n",
        );
        put(&m.join("templates/web/prod/sub/raw"), "{{ untouched }}\n");
        put(&m.join("templates/web/test/site"), "x\n");
        put(&m.join("scripts/pre/web/20-b"), "#!/bin/sh\n");
        put(&m.join("scripts/pre/web/10-a"), "#!/bin/sh\n");
        put(&m.join("scripts/pre/web/10-a~"), "backup\n");
        put(&m.join("scripts/post/web/reload"), "#!/bin/sh\n");
        let node = nodefile::resolve(m, "web1").unwrap().remove(0);
        let plan = render(m, &node, "prod").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&plan.files[0].content),
            "web1 listens on 8080 in prod; {{literal}}\n"
        );
        assert_eq!(plan.files[1].content, b"{{ untouched }}\n");
        let labels: Vec<String> = plan.scripts.iter().map(Script::label).collect();
        assert_eq!(labels, ["pre/web/10-a", "pre/web/20-b", "post/web/reload"]);

        let e = render(m, &node, "staging").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown state \"staging\" of app \"web\": ")
                && e.ends_with("(states: prod, test)"),
            "{e}"
        );
        let e = render(m, &node, "test").unwrap_err().to_string();
        assert!(
            e.contains("[raw] source = \"sub/raw\": cannot read template"),
            "{e}"
        );
        put(&m.join("templates/web/prod/site"), "a\n{{ nope }}\n");
        let e = render(m, &node, "prod").unwrap_err().to_string();
        assert!(
            e.ends_with(
                "line 2: {{ nope }}: no such variable (node, state, app or a key of [vars])"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(m.join("templates/web")).unwrap();
        let e = render(m, &node, "prod").unwrap_err().to_string();
        assert!(e.contains("unknown app \"web\""), "{e}");
    }
}
