//! backup_label as found in a base backup's tar (START WAL LOCATION line).
#![no_main]
use hostkit::skytools::walmgr::backupset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(label) = std::str::from_utf8(data) else {
        return;
    };
    let _ = backupset::parse_label(label);
    let _ = backupset::valid_set_name(label);
});
