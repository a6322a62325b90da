//! Helpers of the end-to-end CLI tests: run the `ferrotune` binary from the repository root
//! and read what it printed.

#![allow(dead_code)] // each test file uses a different subset

use std::process::{Command, Output};

/// The demo model, fetched by scripts/fetch-smollm2.sh (relative to the repository root).
pub const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Runs the binary with `args` in the repository root.
pub fn ferrotune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ferrotune")
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
