//! The long page header at the start of a WAL segment (magic, system id, segment size),
//! parsed and checked against the name the segment was archived under.
#![no_main]
use std::path::Path;

use hostkit::skytools::walmgr::walheader;
use hostkit::skytools::walmgr::walname::WalName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walheader::parse(data);
    let name = WalName::parse("000000010000000100000002").unwrap();
    let _ = walheader::check(Path::new("/wal/x"), data, &name, None);
    let _ = walheader::check(Path::new("/wal/x"), data, &name, Some(0x0807060504030201));
});
