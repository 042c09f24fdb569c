//! The tar stream of a stored base backup, unpacked the way `walmgr restore` does
//! (tablespace oid 16384 into its own directory). Whatever the bytes, nothing may land
//! outside the data directory and the tablespace directory, and no link may be made.
#![no_main]
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use hostkit::skytools::walmgr::restore::{unpack_tar, TsTarget};
use libfuzzer_sys::fuzz_target;

fn no_links(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        assert!(!t.is_symlink(), "link {} restored", e.path().display());
        if t.is_dir() {
            no_links(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let (data_dir, ts) = (root.join("data"), root.join("ts"));
    for d in [&data_dir, &ts] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir(d).unwrap();
    }
    let _ = unpack_tar(data, &data_dir, &[TsTarget::new(16384, ts.clone())], None);
    let mut names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["data", "ts"],
        "something written beside the targets"
    );
    no_links(&data_dir);
    no_links(&ts);
});
