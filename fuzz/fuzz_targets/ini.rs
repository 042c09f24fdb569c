//! An INI file with ConfigParser semantics ([DEFAULT], %(name)s interpolation, typed
//! values), read back through every accessor.
#![no_main]
use std::path::Path;

use hostkit::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text, Path::new("/fuzz.ini")) else {
        return;
    };
    let sections: Vec<String> = cfg.sections().map(str::to_string).collect();
    for s in sections
        .iter()
        .map(String::as_str)
        .chain(["DEFAULT", "missing"])
    {
        for k in cfg.keys(s) {
            let _ = cfg.get(s, &k);
            let _ = cfg.get_bool(s, &k);
            let _ = cfg.get_list(s, &k);
            let _ = cfg.get_parsed::<u64>(s, &k);
            let sec = cfg.section(s);
            let _ = sec.duration(
                &k,
                std::time::Duration::ZERO,
                std::time::Duration::ZERO..std::time::Duration::from_secs(86400),
            );
            let _ = sec.number::<i64>(&k, 0, ..);
            let _ = sec.path(&k);
        }
        let _ = cfg.reject_unknown(s, &["a"]);
    }
});
