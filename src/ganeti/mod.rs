//! Ganeti's on-disk formats and the messages derived from them.

pub mod configdata;
pub mod hookenv;
pub mod jobfile;
pub mod messages;
pub mod ssconf;
