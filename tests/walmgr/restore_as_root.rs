use super::*;
use hostkit::skytools::walmgr::backupset::{self, BackupInfo, CommitInfo, SetName, Staging};
use hostkit::skytools::walmgr::basebackup::{Tablespace, TarWriter};
use hostkit::skytools::walmgr::codec::Compression;
use std::os::unix::fs::MetadataExt;

// ---------------------------------------------------------------------------------------
// restore run as root works as the store's owner (postgres)
// ---------------------------------------------------------------------------------------

/// A small fake cluster with one tablespace, committed into `store` as one set, the
/// whole store then given to postgres (as a real one is).
fn fake_set(sb: &Sandbox, store: &Path) -> SetName {
    let src = sb.p("src");
    let ts = sb.p("ts-src");
    fs::create_dir_all(src.join("base/1")).unwrap();
    fs::create_dir_all(src.join("pg_tblspc")).unwrap();
    fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    fs::write(src.join("base/1/1259"), vec![4u8; 20_000]).unwrap();
    fs::create_dir_all(ts.join("PG_15_1/5")).unwrap();
    fs::write(ts.join("PG_15_1/5/16385"), b"tablespace data").unwrap();
    std::os::unix::fs::symlink(&ts, src.join("pg_tblspc/16400")).unwrap();
    let mut w = TarWriter::new(Vec::new());
    w.data_dir(
        &src,
        &[Tablespace {
            oid: 16400,
            location: ts.clone(),
        }],
    )
    .unwrap();
    let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n";
    w.add_bytes("backup_label", label.as_bytes(), 0o600)
        .unwrap();
    w.add_bytes(
        "tablespace_map",
        format!("16400 {}\n", ts.display()).as_bytes(),
        0o600,
    )
    .unwrap();
    let tar = w.finish().unwrap();
    let fb = store.join("data.master");
    fs::create_dir_all(&fb).unwrap();
    let set = SetName::parse("20261122T200000Z").unwrap();
    let mut st = Staging::create(&fb, &set, Compression::None, 0).unwrap();
    let r = st.receive(&mut &tar[..]).unwrap();
    st.commit(
        &r,
        &CommitInfo {
            stop_lsn: "0/3000000".parse().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    ok(Command::new("chown").arg("-R").arg("postgres:").arg(store));
    set
}

fn owner(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .uid()
}

#[test]
fn a_root_restore_runs_as_the_store_owner() {
    let _g = serial();
    let sb = Sandbox::new("rootrestore");
    let store = sb.p("store");
    let set = fake_set(&sb, &store);
    let (pg_uid, _) = pg_ids();
    let dst = sb.p("standby");
    let tbs = sb.p("tbs");
    let slave = slave_ini(
        &sb,
        "slave.ini",
        &store,
        &dst,
        &format!("tablespace_dir = {}\n", tbs.display()),
    );
    // As root (the binary under target/ is fine: root runs it).
    ok(Command::new(env!("CARGO_BIN_EXE_walmgr"))
        .arg(&slave)
        .arg("restore"));
    for p in [
        dst.clone(),
        dst.join("base/1/1259"),
        dst.join("postgresql.auto.conf"),
        dst.join("standby.signal"),
        tbs.join("16400"),
        tbs.join("16400/PG_15_1/5/16385"),
    ] {
        assert_eq!(owner(&p), pg_uid, "{} belongs to postgres", p.display());
    }
    let log = fs::read_to_string(sb.p("walmgr-slave.log")).unwrap_or_default();
    assert!(log.contains("restore: running as postgres"), "{log}");

    // The store's owner rewrites tablespace_map (and its sha256 in backup.json) to aim
    // the tablespace at a root-owned directory that tablespace_roots allows: as
    // postgres the restore cannot write there, and nothing is written.
    let rootdir = tempfile::Builder::new()
        .prefix("hk-root-owned-")
        .tempdir_in(common::pg::tmp_root())
        .unwrap();
    fs::set_permissions(rootdir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let target = rootdir.path().join("cron.d");
    let map = format!("16400 {}\n", target.display());
    let setdir = store.join("data.master").join(set.as_str());
    fs::write(setdir.join(backupset::TABLESPACE_MAP), &map).unwrap();
    let info_path = setdir.join(backupset::INFO);
    let mut info: BackupInfo = serde_json::from_slice(&fs::read(&info_path).unwrap()).unwrap();
    info.tablespace_map_sha256 = Some(hostkit::digest::sha256_hex(map.as_bytes()));
    fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
    let steered = slave_ini(
        &sb,
        "steered.ini",
        &store,
        &sb.p("standby2"),
        &format!("tablespace_roots = {}\n", rootdir.path().display()),
    );
    let err = fails(
        Command::new(env!("CARGO_BIN_EXE_walmgr"))
            .arg(&steered)
            .arg("restore"),
    );
    assert_one_line_error(&err, &target.display().to_string());
    assert!(!target.exists(), "root-owned {} written", target.display());
    assert_eq!(fs::read_dir(rootdir.path()).unwrap().count(), 0);
    assert!(!sb.p("standby2").exists());
    finish();
}
