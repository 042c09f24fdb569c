//! A Ganeti job file from the queue directory, as eventd reads it, and the messages
//! eventd builds from it (routing keys, bodies) and wraps for AMQP.
#![no_main]
use hostkit::amqp::Message;
use hostkit::ganeti::{jobfile, messages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = jobfile::job_id_from_name(name);
    }
    let Ok(job) = jobfile::parse(data, None) else {
        return;
    };
    for (i, op) in job.ops.iter().enumerate() {
        let _ = (op.op_id(), op.logmsg(), messages::event_time(&job, op));
        if let Some(m) = messages::op_message(&job, i, "cluster.example", &mut messages::NoLookup) {
            // Too-long names are refused here, never a panic in lapin later.
            let _ = Message::new("ganeti", &m.routing_key, &m.body);
        }
    }
});
