//! Subcommands of the CLI, one module each.

pub mod doctor;
pub mod generate;
