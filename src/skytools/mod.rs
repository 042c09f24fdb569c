//! The Skytools family (packages skytools3, skytools3-ticker, skytools3-walmgr).

pub mod pgqd;
pub mod scriptmgr;
pub mod walmgr;
