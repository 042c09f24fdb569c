//! The GANETI_* environment of a hook run (`KEY=value` lines), parsed and turned into
//! the ganeti-net-status message the hook publishes.
#![no_main]
use hostkit::amqp::Message;
use hostkit::ganeti::hookenv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = hookenv::parse_env_dump(text);
    if let Ok(hook) = hookenv::parse(&vars) {
        let (key, body) = hostkit::synnefo::hook::net_status(&hook);
        let _ = Message::new("ganeti", &key, &body);
    }
});
