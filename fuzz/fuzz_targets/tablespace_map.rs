//! tablespace_map (`<oid> <path>` lines) from the backup store, as restore reads it.
#![no_main]
use std::path::Path;

use hostkit::skytools::walmgr::restore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = restore::parse_tablespace_map(text, Path::new("/store/tablespace_map"));
});
