//! The snf-cyclades-gtools family: the programs Synnefo runs on a Ganeti node, over their
//! shared `/etc/synnefo/gtools.conf`.

pub mod eventd;
pub mod gtools;
pub mod hook;
pub mod progress;
