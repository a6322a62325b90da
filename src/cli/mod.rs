//! Subcommands of the CLI, one module each.

pub mod bench;
pub mod doctor;
pub mod export;
pub mod generate;
pub mod gpu_check;
pub mod train;
