//! TEMPORARY (branch pnodes): only so src/pacha/nodes compiles before the pacha branch's
//! mod.rs is merged; replaced by that file.
pub mod nodes;
