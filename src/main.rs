//! The `ferrotune` command line.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferrotune", version, about = "QLoRA fine-tuning of Llama-family models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this machine offers: CPU, threads, memory, GPU.
    Doctor,
    /// Generate text from a prompt.
    Generate(cli::generate::Args),
    /// Measure a training step of a random-init model on the GPU.
    Bench(cli::bench::Args),
    /// Fine-tune LoRA adapters from a TOML run file and/or flags.
    Train(Box<cli::train::Args>),
    /// Merge an adapter into its base and write a llama.cpp GGUF and an Ollama Modelfile.
    Export(cli::export::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => {
            print!("{}", cli::doctor::report());
            Ok(())
        }
        Command::Generate(args) => cli::generate::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Train(args) => cli::train::run(*args),
        Command::Export(args) => cli::export::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
