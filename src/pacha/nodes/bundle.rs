//! What travels over ssh: one tar stream (the `tar` crate), checksummed.
//!
//! Members, in this order:
//! - `pacha-bundle.json`: the manifest — format version, node, state, and for every file
//!   its section, app, dest, owner, group, mode, validate command, size and SHA-256, for
//!   every script its phase, action, name, size and SHA-256;
//! - `files/<n>` and `scripts/<n>`: the contents, in manifest order.
//!
//! The reader accepts nothing else: the manifest must come first, every member must be
//! the next one the manifest announces with exactly its size and checksum, and every
//! announced member must be there (a stream cut short by a dropped connection is
//! refused, even when it ends on a member boundary). The whole bundle is held in memory
//! (it is applied all or nothing), so it is capped at [`MAX_BUNDLE`].

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::nodefile::FileSpec;
use super::template::{Plan, Rendered, Script};
use crate::digest::sha256_hex;

pub const MANIFEST: &str = "pacha-bundle.json";
pub const FORMAT: u32 = 1;
/// The most a bundle may hold (contents and manifest).
pub const MAX_BUNDLE: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
#[error("bad bundle: {0}")]
pub struct BundleError(pub String);

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    node: String,
    state: String,
    files: Vec<FileEntry>,
    scripts: Vec<ScriptEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    section: String,
    app: String,
    source: String,
    dest: String,
    owner: String,
    group: Option<String>,
    mode: u32,
    validate: Option<String>,
    size: u64,
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScriptEntry {
    phase: String,
    action: String,
    name: String,
    size: u64,
    sha256: String,
}

fn add(b: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, name, data)
}

/// The bundle of `plan`, as bytes.
pub fn write(plan: &Plan) -> Vec<u8> {
    let manifest = Manifest {
        format: FORMAT,
        node: plan.node.clone(),
        state: plan.state.clone(),
        files: plan
            .files
            .iter()
            .map(|r| FileEntry {
                section: r.spec.section.clone(),
                app: r.spec.app.clone(),
                source: r.spec.source.clone(),
                dest: r.spec.dest.clone(),
                owner: r.spec.owner.clone(),
                group: r.spec.group.clone(),
                mode: r.spec.mode,
                validate: r.spec.validate.clone(),
                size: r.content.len() as u64,
                sha256: sha256_hex(&r.content),
            })
            .collect(),
        scripts: plan
            .scripts
            .iter()
            .map(|s| ScriptEntry {
                phase: s.phase.clone(),
                action: s.action.clone(),
                name: s.name.clone(),
                size: s.content.len() as u64,
                sha256: sha256_hex(&s.content),
            })
            .collect(),
    };
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        // Writing into a Vec cannot fail.
        let json = serde_json::to_vec(&manifest).unwrap_or_default();
        let _ = add(&mut b, MANIFEST, &json);
        for (i, f) in plan.files.iter().enumerate() {
            let _ = add(&mut b, &format!("files/{i}"), &f.content);
        }
        for (i, s) in plan.scripts.iter().enumerate() {
            let _ = add(&mut b, &format!("scripts/{i}"), &s.content);
        }
        let _ = b.finish();
    }
    out
}

/// Write the bundle of `plan` to `w`.
pub fn write_to(plan: &Plan, w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(&write(plan))
}

fn member<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    want: &str,
    size: Option<u64>,
) -> Result<Vec<u8>, BundleError> {
    let mut e = match entries.next() {
        None => return Err(BundleError(format!("cut short: {want} is missing"))),
        Some(Err(e)) => return Err(BundleError(format!("reading {want}: {e}"))),
        Some(Ok(e)) => e,
    };
    let name = e
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != want {
        return Err(BundleError(format!(
            "expected member {want}, found {name:?}"
        )));
    }
    let len = e.header().size().unwrap_or(u64::MAX);
    let cap = size.unwrap_or(16 << 20);
    if len > cap || (size.is_some() && Some(len) != size) {
        return Err(BundleError(format!(
            "{want} is {len} bytes, the manifest says {cap}"
        )));
    }
    let mut data = Vec::with_capacity(len as usize);
    e.read_to_end(&mut data)
        .map_err(|err| BundleError(format!("reading {want}: {err}")))?;
    if data.len() as u64 != len {
        return Err(BundleError(format!("cut short inside {want}")));
    }
    Ok(data)
}

/// Read and check a bundle.
pub fn read(r: &mut dyn Read) -> Result<Plan, BundleError> {
    let mut archive = tar::Archive::new(r.take(MAX_BUNDLE + (1 << 20)));
    let mut entries = archive
        .entries()
        .map_err(|e| BundleError(format!("not a tar stream: {e}")))?;
    let json = member(&mut entries, MANIFEST, None)?;
    let m: Manifest =
        serde_json::from_slice(&json).map_err(|e| BundleError(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(BundleError(format!(
            "format {} (this pacha reads format {FORMAT})",
            m.format
        )));
    }
    let total: u64 =
        m.files.iter().map(|f| f.size).sum::<u64>() + m.scripts.iter().map(|s| s.size).sum::<u64>();
    if total > MAX_BUNDLE {
        return Err(BundleError(format!(
            "{total} bytes of content, more than the {MAX_BUNDLE} a bundle may hold"
        )));
    }
    let check = |name: &str, data: &[u8], sha: &str| {
        let got = sha256_hex(data);
        if got == sha {
            Ok(())
        } else {
            Err(BundleError(format!(
                "{name}: checksum {got} does not match the manifest's {sha}"
            )))
        }
    };
    let mut files = Vec::new();
    for (i, f) in m.files.into_iter().enumerate() {
        let name = format!("files/{i}");
        let data = member(&mut entries, &name, Some(f.size))?;
        check(&name, &data, &f.sha256)?;
        let bad = |what: &str| BundleError(format!("{name} ({}): {what}", f.dest));
        if !f.dest.starts_with('/') || f.dest.split('/').any(|c| c == "..") {
            return Err(bad("dest is not an absolute path without '..'"));
        }
        if f.mode > 0o7777 {
            return Err(bad("mode is more than 07777"));
        }
        files.push(Rendered {
            spec: FileSpec {
                section: f.section,
                app: f.app,
                source: f.source,
                dest: f.dest,
                owner: f.owner,
                group: f.group,
                mode: f.mode,
                validate: f.validate,
                render: false,
            },
            content: data,
        });
    }
    let mut scripts = Vec::new();
    for (i, s) in m.scripts.into_iter().enumerate() {
        let name = format!("scripts/{i}");
        let data = member(&mut entries, &name, Some(s.size))?;
        check(&name, &data, &s.sha256)?;
        if s.name.contains('/')
            || s.action.contains('/')
            || !matches!(s.phase.as_str(), "pre" | "post")
        {
            return Err(BundleError(format!("{name}: bad script name")));
        }
        scripts.push(Script {
            phase: s.phase,
            action: s.action,
            name: s.name,
            content: data,
        });
    }
    match entries.next() {
        None => {}
        Some(Ok(e)) => {
            let n = e
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(BundleError(format!(
                "unexpected member {n:?} after the last"
            )));
        }
        Some(Err(e)) => return Err(BundleError(format!("after the last member: {e}"))),
    }
    Ok(Plan {
        node: m.node,
        state: m.state,
        files,
        scripts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Plan {
        let spec = |dest: &str, mode| FileSpec {
            section: "s".into(),
            app: "a".into(),
            source: "src".into(),
            dest: dest.into(),
            owner: "root".into(),
            group: None,
            mode,
            validate: Some("true %s".into()),
            render: false,
        };
        Plan {
            node: "n1".into(),
            state: "prod".into(),
            files: vec![
                Rendered {
                    spec: spec("/etc/a", 0o4755),
                    content: b"alpha\n".to_vec(),
                },
                Rendered {
                    spec: spec("/etc/b", 0o600),
                    content: vec![0u8; 70000],
                },
            ],
            scripts: vec![Script {
                phase: "pre".into(),
                action: "a".into(),
                name: "10-x".into(),
                content: b"#!/bin/sh\nexit 0\n".to_vec(),
            }],
        }
    }

    #[test]
    fn a_bundle_reads_back_as_written() {
        let p = sample();
        let bytes = write(&p);
        let back = read(&mut &bytes[..]).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn truncated_or_altered_bundles_are_refused() {
        let bytes = write(&sample());
        // Cut at every 512-byte block boundary and in between: never accepted.
        for cut in (0..bytes.len() - 1024).step_by(256) {
            let e = read(&mut &bytes[..cut]).unwrap_err().to_string();
            assert!(e.starts_with("bad bundle: "), "{cut}: {e}");
        }
        let mut bad = bytes.clone();
        let at = bad.windows(6).position(|w| w == b"alpha\n").unwrap();
        bad[at] = b'A';
        let e = read(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("files/0: checksum"), "{e}");
        let e = read(&mut &b"garbage that is not tar"[..]).unwrap_err();
        assert!(e.to_string().starts_with("bad bundle: "), "{e}");
    }
}
