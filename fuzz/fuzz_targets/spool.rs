//! A spool entry file (header line + one JSON message per line), as eventd reads back
//! what the hook, the progress monitor or an earlier run left (or a disk corrupted).
#![no_main]
use std::sync::OnceLock;

use hostkit::amqp::spool::Spool;
use libfuzzer_sys::fuzz_target;

const NAME: &str = "01700000000000000000-fuzz-1.msgs";

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join(NAME), data).unwrap();
    let spool = Spool::open(dir.path(), 1 << 30).unwrap();
    if let Ok(msgs) = spool.read(NAME) {
        for m in &msgs {
            m.check().expect("read back only publishable messages");
        }
    }
});
