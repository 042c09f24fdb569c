//! What an apply did, per file and per script: made on the node, sent back to the master
//! as one JSON document on stdout, printed for the operator by whoever started it.
//!
//! Printed form (one block per node; `--check` adds the unified diff after each line):
//!
//! ```text
//! web1 (state production):
//!   created   /etc/motd
//!   changed   /etc/nginx/nginx.conf (content, mode 0644 -> 0640)
//!   unchanged /etc/hosts
//!   ran script pre/nginx/10-check
//!   script post/nginx/50-reload failed (exited with exit status: 1):
//!     | nginx: [emerg] ...
//!   committed 3f2a9c1
//! web1: ok: 1 created, 1 changed, 1 unchanged
//! ```

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Changed,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    pub dest: String,
    pub status: Status,
    /// What differs: "content", "owner root -> www-data", "mode 0644 -> 0600".
    #[serde(default)]
    pub changes: Vec<String>,
    /// `--check`: the unified diff of the content.
    #[serde(default)]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptReport {
    /// `pre/<action>/<name>`, `post/...`, or `validate <dest>`.
    pub what: String,
    pub ok: bool,
    pub status: String,
    pub output: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub state: String,
    pub check: bool,
    pub files: Vec<FileReport>,
    /// Every script and validation that ran, in order.
    pub scripts: Vec<ScriptReport>,
    /// Why the apply stopped (nothing was changed then, unless `partial`).
    #[serde(default)]
    pub error: Option<String>,
    /// Files were replaced although a later step failed (a post script).
    #[serde(default)]
    pub partial: bool,
    #[serde(default)]
    pub commit: Option<String>,
}

impl NodeReport {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.scripts.iter().any(|s| !s.ok)
    }

    pub fn count(&self, s: Status) -> usize {
        self.files.iter().filter(|f| f.status == s).count()
    }

    /// Nothing to replace.
    pub fn all_unchanged(&self) -> bool {
        self.files.iter().all(|f| f.status == Status::Unchanged)
    }

    /// A failed node that never got as far as a report (ssh, a bad bundle).
    pub fn failure(node: &str, state: &str, check: bool, error: String) -> NodeReport {
        NodeReport {
            node: node.into(),
            state: state.into(),
            check,
            error: Some(error),
            ..NodeReport::default()
        }
    }

    /// The operator's text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{} (state {}):", self.node, self.state);
        for f in &self.files {
            let word = match f.status {
                Status::Created => "created",
                Status::Changed => "changed",
                Status::Unchanged => "unchanged",
            };
            // Nothing was replaced: say what the apply was going to do.
            let undone = self.check || (self.error.is_some() && !self.partial);
            let word = if undone && f.status != Status::Unchanged {
                format!("would be {word}")
            } else {
                word.to_string()
            };
            if f.changes.is_empty() || f.status != Status::Changed {
                let _ = writeln!(o, "  {word:<9} {}", f.dest);
            } else {
                let _ = writeln!(o, "  {word:<9} {} ({})", f.dest, f.changes.join(", "));
            }
            if let Some(d) = &f.diff {
                o.push_str(d);
                if !d.ends_with('\n') {
                    o.push('\n');
                }
            }
        }
        for s in &self.scripts {
            if s.ok {
                let _ = writeln!(o, "  ran {}", s.what);
            } else {
                let _ = writeln!(o, "  {} failed ({}):", s.what, s.status);
                for l in s.output.lines() {
                    let _ = writeln!(o, "    | {l}");
                }
            }
        }
        if let Some(c) = &self.commit {
            let _ = writeln!(o, "  committed {c}");
        }
        let counts = format!(
            "{} created, {} changed, {} unchanged",
            self.count(Status::Created),
            self.count(Status::Changed),
            self.count(Status::Unchanged)
        );
        match (&self.error, self.failed(), self.check) {
            (Some(e), _, _) if self.partial => {
                let _ = writeln!(
                    o,
                    "{}: FAILED after replacing files ({counts}): {e}",
                    self.node
                );
            }
            (Some(e), _, _) => {
                let _ = writeln!(o, "{}: FAILED, nothing changed: {e}", self.node);
            }
            (None, true, _) => {
                let _ = writeln!(o, "{}: FAILED ({counts}): a post script failed", self.node);
            }
            (None, false, true) => {
                let _ = writeln!(o, "{}: check: {counts} (nothing changed)", self.node);
            }
            (None, false, false) => {
                let _ = writeln!(o, "{}: ok: {counts}", self.node);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_prints_per_file_and_round_trips_as_json() {
        let r = NodeReport {
            node: "web1".into(),
            state: "prod".into(),
            check: false,
            files: vec![
                FileReport {
                    dest: "/etc/a".into(),
                    status: Status::Created,
                    changes: vec![],
                    diff: None,
                },
                FileReport {
                    dest: "/etc/b".into(),
                    status: Status::Changed,
                    changes: vec!["mode 0644 -> 0600".into()],
                    diff: None,
                },
            ],
            scripts: vec![ScriptReport {
                what: "post/web/reload".into(),
                ok: false,
                status: "exited with exit status: 1".into(),
                output: "no reload\n".into(),
            }],
            error: None,
            partial: false,
            commit: Some("abc".into()),
        };
        let text = r.render();
        assert!(text.contains("  created   /etc/a\n"), "{text}");
        assert!(
            text.contains("  changed   /etc/b (mode 0644 -> 0600)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "post/web/reload failed (exited with exit status: 1):\n    | no reload\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "web1: FAILED (1 created, 1 changed, 0 unchanged): a post script failed\n"
            ),
            "{text}"
        );
        let back: NodeReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(back.failed());
    }
}
