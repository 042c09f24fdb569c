//! A WAL file name (segment, .history, .backup, .partial) as archive_command,
//! restore_command and the store's listing hand it to walmgr.
#![no_main]
use hostkit::skytools::walmgr::walname::WalName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(w) = WalName::parse(name) else {
        return;
    };
    let _ = w.position();
    for seg_size in [1u64 << 20, 16 << 20, 1 << 30] {
        let _ = w.start_address(seg_size);
        if w.is_segment() {
            let (tli, _) = w.position();
            let segno = w.segno(seg_size);
            let _ = WalName::segment_name(tli, segno, seg_size);
        }
    }
});
