//! snf-image's progress stream on snf-progress-monitor's stdin: concatenated JSON
//! objects and garbage, in chunks of any size. The first byte picks the chunk size.
#![no_main]
use hostkit::synnefo::progress::{Item, Splitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut s = Splitter::default();
    let mut objects = 0usize;
    for piece in rest.chunks(chunk) {
        s.push(piece);
        while let Some(item) = s.next(false) {
            if let Item::Object(_) = item {
                objects += 1;
            }
        }
    }
    while let Some(item) = s.next(true) {
        if let Item::Object(_) = item {
            objects += 1;
        }
    }
    // Each object takes at least its two braces.
    assert!(objects * 2 <= rest.len());
});
