//! `verify` (every stored file's checksums, gaps in the segment sequence) and `cleanup`.

use std::collections::BTreeSet;

use super::backupset;
use super::config::StoreSettings;
use super::error::{Result, WalmgrError};
use super::store::WalStore;
use super::walname::{Kind, WalName};

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
    pub first: Option<String>,
    pub last: Option<String>,
}

pub fn verify(st: &StoreSettings) -> Result<Report> {
    let store = WalStore::new(&st.paths);
    let mut r = Report::default();
    // segno → seen, per segment size (a store serves one cluster, so one size).
    let mut segnos = BTreeSet::new();
    let mut seg_size = None;
    let mut tli_of = std::collections::BTreeMap::new();
    for name in store.list()? {
        let Ok(wal) = WalName::parse(&name) else {
            r.problems.push(format!(
                "{}: unexpected file name",
                store.meta_path(&name).display()
            ));
            continue;
        };
        let meta = match store.lookup(&name) {
            Ok(Some(m)) => m,
            Ok(None) => {
                r.problems.push(format!(
                    "{name}: meta without a complete data file (interrupted write; `walmgr cleanup` removes it)"
                ));
                continue;
            }
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        if let Err(e) = store.read_verified(&meta, &mut std::io::sink()) {
            r.problems.push(e.to_string());
            continue;
        }
        r.files += 1;
        r.bytes += meta.size;
        // PostgreSQL's segment sizes: powers of two from 1 MiB to 1 GiB.
        if wal.kind == Kind::Segment
            && meta.size.is_power_of_two()
            && (1 << 20..=1 << 30).contains(&meta.size)
            && wal.start_address(meta.size).is_some()
        {
            seg_size.get_or_insert(meta.size);
            let n = wal.segno(meta.size);
            segnos.insert(n);
            tli_of.entry(n).or_insert(wal.tli);
        }
    }
    if let Some(size) = seg_size {
        let from = match backupset::newest_start_segment(&st.paths.full_backup)? {
            Some(s) => WalName::parse(&s)?.segno(size),
            None => *segnos.first().expect("a segment"),
        };
        let last = *segnos.last().expect("a segment");
        let tli = |n: u64| *tli_of.range(..=n).next_back().map(|(_, t)| t).unwrap_or(&1);
        r.first = Some(WalName::segment_name(tli(from), from, size));
        r.last = Some(WalName::segment_name(tli(last), last, size));
        let mut gap_start = None;
        for n in from..=last + 1 {
            let have = n > last || segnos.contains(&n);
            match (have, gap_start) {
                (false, None) => gap_start = Some(n),
                (true, Some(g)) => {
                    r.problems.push(format!(
                        "gap: segments {} to {} are missing",
                        WalName::segment_name(tli(g), g, size),
                        WalName::segment_name(tli(g), n - 1, size)
                    ));
                    gap_start = None;
                }
                _ => {}
            }
        }
    }
    Ok(r)
}

/// Run verify and print its report; an error when anything is wrong.
pub fn verify_command(st: &StoreSettings) -> Result<()> {
    let r = verify(st)?;
    for p in &r.problems {
        eprintln!("walmgr: verify: {p}");
    }
    let range = match (&r.first, &r.last) {
        (Some(a), Some(b)) => format!(", segments {a} to {b}"),
        _ => String::new(),
    };
    println!("{} files, {} bytes verified{range}", r.files, r.bytes);
    let legacy = WalStore::new(&st.paths).list_legacy()?;
    if let (Some(a), Some(b)) = (legacy.first(), legacy.last()) {
        println!(
            "{} files without .meta ({a} .. {b}): a Skytools archive or interrupted writes; \
             xrestore serves them after a header check, without a checksum",
            legacy.len()
        );
    }
    if r.problems.is_empty() {
        Ok(())
    } else {
        Err(WalmgrError::Verify(format!(
            "verify: {} problem(s) in {}",
            r.problems.len(),
            st.paths.completed_wals.display()
        )))
    }
}

pub fn cleanup(st: &StoreSettings, dry_run: bool) -> Result<()> {
    let store = WalStore::new(&st.paths);
    if dry_run {
        println!("would remove stale temp files, unacknowledged files and WAL older than the oldest backup");
        return Ok(());
    }
    for p in store.cleanup()? {
        println!("removed {}", p.display());
    }
    for p in backupset::cleanup_staging(&st.paths.full_backup)? {
        println!("removed {}", p.display());
    }
    if let Some(oldest) = backupset::oldest_start_segment(&st.paths.full_backup)? {
        let n = store.purge_before(&WalName::parse(&oldest)?)?;
        println!("removed {n} archived files older than {oldest}");
    }
    Ok(())
}
