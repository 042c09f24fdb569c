//! The layering rule of src/, checked on the source text: infrastructure at the top, then
//! programs grouped by family. A program uses infrastructure, its family's shared modules
//! and itself — never another program; a family's shared modules use infrastructure and
//! each other; infrastructure uses only infrastructure. A binary calls its own program.
//!
//! The check reads every `crate::…` path (grouped `use crate::{a, b::{c, d}}` included) and
//! every `super::…` path (resolved against the file's module and any inline `mod x { }`),
//! outside comments and string literals. A module the tables below do not name fails the
//! test: a new program or infrastructure module is added to the table on purpose.

use std::fs;
use std::path::{Path, PathBuf};

/// Infrastructure: `src/<name>.rs` or `src/<name>/`.
const INFRASTRUCTURE: &[&str] = &[
    "cli", "config", "daemon", "digest", "logging", "fsutil", "glob", "proc", "pg", "amqp",
    "monitor", "ganeti", "s3",
];

/// A family: `src/<name>/`, its programs, and its modules every program of it may use.
/// A family without programs listed is one program (the whole directory).
struct Family {
    name: &'static str,
    programs: &'static [&'static str],
    shared: &'static [&'static str],
}

const FAMILIES: &[Family] = &[
    Family {
        name: "synnefo",
        programs: &["eventd", "hook", "progress"],
        shared: &["gtools"],
    },
    Family {
        name: "skytools",
        programs: &["pgqd", "scriptmgr", "walmgr"],
        shared: &[],
    },
    Family {
        name: "ele",
        programs: &["report", "ctl"],
        shared: &["checkin", "discover"],
    },
    Family {
        name: "calink",
        programs: &[],
        shared: &[],
    },
    Family {
        name: "pacha",
        programs: &[],
        shared: &[],
    },
];

/// `src/bin/<name>.rs` and the program it runs.
const BINARIES: &[(&str, &str)] = &[
    ("snf-ganeti-eventd", "synnefo::eventd"),
    ("snf-ganeti-hook", "synnefo::hook"),
    ("snf-progress-monitor", "synnefo::progress"),
    ("pgqd", "skytools::pgqd"),
    ("scriptmgr", "skytools::scriptmgr"),
    ("walmgr", "skytools::walmgr"),
    ("calink", "calink"),
    ("ele_report", "ele::report"),
    ("ele_ctl", "ele::ctl"),
    ("pacha", "pacha"),
];

/// Where a module stands in the layering.
#[derive(Debug, Clone, PartialEq)]
enum Unit {
    /// `lib.rs` itself: it only lists modules.
    Root,
    Infrastructure(String),
    /// The family's root module or one of its shared modules.
    FamilyShared(String),
    /// `family::program`.
    Program(String, String),
}

fn classify(path: &[String]) -> Result<Unit, String> {
    let Some(first) = path.first() else {
        return Ok(Unit::Root);
    };
    if INFRASTRUCTURE.contains(&first.as_str()) {
        return Ok(Unit::Infrastructure(first.clone()));
    }
    let Some(f) = FAMILIES.iter().find(|f| f.name == first) else {
        return Err(format!(
            "module `{first}` is neither infrastructure nor a family: add it to tests/layering.rs"
        ));
    };
    if f.programs.is_empty() {
        return Ok(Unit::Program(f.name.into(), f.name.into()));
    }
    let Some(second) = path.get(1) else {
        return Ok(Unit::FamilyShared(f.name.into()));
    };
    if f.programs.contains(&second.as_str()) {
        Ok(Unit::Program(f.name.into(), second.clone()))
    } else if f.shared.contains(&second.as_str()) {
        Ok(Unit::FamilyShared(f.name.into()))
    } else {
        Err(format!(
            "module `{}::{second}` is neither a program nor shared in its family: add it to \
             tests/layering.rs",
            f.name
        ))
    }
}

/// May code in `from` use something in `to`?
fn allowed(from: &Unit, to: &Unit) -> bool {
    match (from, to) {
        (_, Unit::Infrastructure(_)) => true,
        (Unit::Root, _) => true,
        (Unit::Infrastructure(_), _) => false,
        (Unit::FamilyShared(f), Unit::FamilyShared(g)) => f == g,
        (Unit::FamilyShared(_), _) => false,
        (Unit::Program(f, _), Unit::FamilyShared(g)) => f == g,
        (Unit::Program(f, p), Unit::Program(g, q)) => f == g && p == q,
        (Unit::Program(..), Unit::Root) => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

/// Tokens with their line, comments and string/char literals dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == 'r' && (at(i + 1) == '"' || (at(i + 1) == '#' && at(i + 2) == '#'))
            || ch == 'r' && at(i + 1) == '#' && at(i + 2) == '"'
        {
            // Raw string: r"…", r#"…"#, r##"…"##.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(c[j] == '\n');
                j += 1;
            }
            i = j;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            if at(i) == '"' && (word == "b" || word == "c") {
                continue; // b"…": the string follows.
            }
            if (at(i) == '"' || at(i) == '#') && (word == "br" || word == "cr") {
                i -= 1; // br"…", br#"…"#: read from the `r` as a raw string.
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((
                match ch {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    '*' => Tok::Star,
                    _ => Tok::Other,
                },
                line,
            ));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// The paths of a use tree (or a plain path) starting at `i`, each under `prefix`, with
/// the line its last segment is on. Returns where the tree ends.
fn use_tree(
    t: &[(Tok, usize)],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let line = |i: usize| t.get(i).or(t.last()).map_or(0, |x| x.1);
    let kind = |i: usize| t.get(i).map(|x| &x.0);
    match kind(i) {
        Some(Tok::Open) => {
            i += 1;
            while i < t.len() && t[i].0 != Tok::Close {
                i = use_tree(t, i, prefix.clone(), out);
                if ident(t.get(i)) == Some("as") {
                    i += 2;
                }
                // The comma, or whatever a tree we do not read ended on.
                if kind(i) != Some(&Tok::Close) {
                    i += 1;
                }
            }
            i + 1
        }
        Some(Tok::Star) => {
            out.push((prefix, line(i)));
            i + 1
        }
        Some(Tok::Ident(s)) if s == "self" => {
            out.push((prefix, line(i)));
            i + 1
        }
        Some(Tok::Ident(s)) => {
            let mut p = prefix;
            p.push(s.clone());
            if kind(i + 1) == Some(&Tok::PathSep) {
                use_tree(t, i + 2, p, out)
            } else {
                out.push((p, line(i)));
                i + 1
            }
        }
        _ => {
            out.push((prefix, line(i.saturating_sub(1))));
            i
        }
    }
}

/// Every module path `text` (the file of module `module`) refers to through `crate::` or
/// `super::`, with its line. Binaries' `hostkit::` paths count as `crate::`.
fn references(
    module: &[String],
    text: &str,
    extern_name: Option<&str>,
) -> Vec<(Vec<String>, usize)> {
    let t = tokens(text);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth at which its body opened).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        match &t[i].0 {
            Tok::Open => {
                depth += 1;
                if let (Some("mod"), Some(name)) = (
                    ident(i.checked_sub(2).and_then(|j| t.get(j))),
                    ident(t.get(i.wrapping_sub(1))),
                ) {
                    inline.push((name.to_string(), depth));
                }
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w) => {
                let after_sep = i > 0 && t[i - 1].0 == Tok::PathSep;
                let next_sep = t.get(i + 1).map(|x| &x.0) == Some(&Tok::PathSep);
                if !after_sep && next_sep && (w == "crate" || Some(w.as_str()) == extern_name) {
                    i = use_tree(&t, i + 2, Vec::new(), &mut out);
                    continue;
                }
                if !after_sep && next_sep && w == "super" {
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(inline.iter().map(|(n, _)| n.clone()));
                    while ident(t.get(i)) == Some("super")
                        && t.get(i + 1).map(|x| &x.0) == Some(&Tok::PathSep)
                    {
                        here.pop();
                        i += 2;
                    }
                    i = use_tree(&t, i, here, &mut out);
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The module a file under src/ is (`a/b.rs` and `a/b/mod.rs` are `a::b`), or None for a
/// binary.
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return None;
    }
    let mut parts = parts;
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Some(parts)
}

/// Layering violations in one file (`rel` relative to src/).
fn check_file(rel: &Path, text: &str) -> Vec<String> {
    let shown = Path::new("src").join(rel).display().to_string();
    let (from, refs) = match module_of(rel) {
        Some(module) => {
            let from = match classify(&module) {
                Ok(u) => u,
                Err(e) => return vec![format!("{shown}: {e}")],
            };
            (from, references(&module, text, None))
        }
        None => {
            let name = rel.file_stem().unwrap().to_string_lossy().into_owned();
            let Some((_, program)) = BINARIES.iter().find(|(b, _)| *b == name) else {
                return vec![format!(
                    "{shown}: binary `{name}` is not in BINARIES of tests/layering.rs"
                )];
            };
            let p: Vec<String> = program.split("::").map(String::from).collect();
            (
                classify(&p).unwrap(),
                references(&[], text, Some("hostkit")),
            )
        }
    };
    let mut bad = Vec::new();
    for (path, line) in refs {
        match classify(&path) {
            Ok(to) if allowed(&from, &to) => {}
            Ok(to) => bad.push(format!(
                "{shown}:{line}: {from:?} uses `{}` ({to:?})",
                path.join("::")
            )),
            Err(e) => bad.push(format!("{shown}:{line}: {e}")),
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_program_imports_another_program() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "src/ scanned: {files:?}");
    let mut bad = Vec::new();
    let mut refs = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let text = fs::read_to_string(f).unwrap();
        refs += module_of(rel)
            .map(|m| references(&m, &text, None).len())
            .unwrap_or(0);
        bad.extend(check_file(rel, &text));
    }
    // The scan sees the tree's real cross-module references (infrastructure use is common).
    assert!(refs > 50, "only {refs} crate::/super:: references found");
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

// The checker itself: each rule can fail.

fn check(rel: &str, text: &str) -> Vec<String> {
    check_file(Path::new(rel), text)
}

#[test]
fn a_program_using_another_program_is_caught() {
    let v = check(
        "skytools/walmgr/pg.rs",
        "pub fn f() { crate::skytools::pgqd::db::one_line(e) }\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("src/skytools/walmgr/pg.rs:1: "), "{v:?}");
    assert!(v[0].contains("skytools::pgqd::db::one_line"), "{v:?}");
    // Across families too, and through `use`.
    let v = check("synnefo/hook.rs", "use crate::skytools::walmgr::Error;\n");
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn grouped_and_nested_use_is_read_path_by_path() {
    let v = check(
        "skytools/walmgr/setup.rs",
        "use crate::{\n    cli,\n    pg::{self, one_line},\n    skytools::{walmgr::config, pgqd::db as other},\n};\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains(":4: ") && v[0].contains("skytools::pgqd::db"),
        "{v:?}"
    );
}

#[test]
fn super_paths_are_resolved_including_inline_modules() {
    // From walmgr/pg.rs, super::super is skytools: pgqd is another program.
    let v = check("skytools/walmgr/pg.rs", "use super::super::pgqd::db;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    // super:: within the program is fine; an inline test module's super is the file.
    assert!(check("skytools/walmgr/pg.rs", "use super::error::Error;\n").is_empty());
    assert!(check(
        "pg/mod.rs",
        "mod tests {\n    use super::*;\n    fn t() { super::one_line(); }\n}\n"
    )
    .is_empty());
    // Without the inline module, `super::*` from pg/mod.rs would be the crate root.
    let v = check("pg/mod.rs", "use super::skytools::walmgr;\n");
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn infrastructure_must_not_use_a_family() {
    let v = check(
        "config.rs",
        "fn f() -> crate::synnefo::gtools::Gtools { todo!() }\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(check("config.rs", "use crate::{fsutil, cli::Error};\n").is_empty());
}

#[test]
fn family_shared_modules_and_own_program_are_allowed() {
    assert!(check(
        "synnefo/eventd/mod.rs",
        "use crate::synnefo::gtools::Gtools;\n"
    )
    .is_empty());
    assert!(check(
        "synnefo/eventd/watch.rs",
        "use crate::synnefo::eventd::state::State;\n"
    )
    .is_empty());
    // Shared modules do not reach into a program.
    assert_eq!(
        check(
            "synnefo/gtools.rs",
            "use crate::synnefo::eventd::Settings;\n"
        )
        .len(),
        1
    );
    // skytools has no shared modules: a program there uses only infrastructure.
    assert!(check("skytools/pgqd/db.rs", "use crate::pg::one_line;\n").is_empty());
}

#[test]
fn comments_and_strings_do_not_count() {
    let text = "// crate::skytools::pgqd::db\n/* crate::skytools::pgqd */\n\
                const S: &str = \"crate::skytools::pgqd\";\n\
                const R: &str = r#\"crate::skytools::pgqd \"x\"\"#;\n\
                const C: char = '\"'; use crate::skytools::pgqd::x;\n";
    let v = check("skytools/walmgr/pg.rs", text);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains(":5: "), "{v:?}");
}

#[test]
fn binaries_run_their_own_program_and_unknown_modules_fail() {
    assert!(check(
        "bin/walmgr.rs",
        "fn main() { hostkit::skytools::walmgr::main() }"
    )
    .is_empty());
    assert_eq!(
        check(
            "bin/walmgr.rs",
            "fn main() { hostkit::skytools::pgqd::main() }"
        )
        .len(),
        1
    );
    assert_eq!(check("bin/newprog.rs", "fn main() {}").len(), 1);
    assert_eq!(check("newinfra.rs", "").len(), 1);
    assert_eq!(
        check("skytools/walmgr/pg.rs", "use crate::nosuch::x;\n").len(),
        1
    );
    assert_eq!(check("skytools/newprog.rs", "").len(), 1);
}
