//! calink: one command gathers a host's facts, command output and files into one
//! archive (CaLink's job, with sos' bounds and without its temporary copy).

pub mod archive;
pub mod commands;
pub mod config;
pub mod glob;
pub mod info;
pub mod manifest;
pub mod obfuscate;
pub mod scrub;
pub mod walk;
