//! placeholder

pub mod admission;
pub mod log;
