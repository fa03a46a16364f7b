//! `crmessenger-operator`: the operator binary.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "crmessenger-operator", version, about = "The CRMessenger Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the API types.
    Crds {
        /// Directory to write into.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"))]
        dir: PathBuf,
        /// Print the YAML to stdout instead of writing files.
        #[arg(long)]
        stdout: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir, stdout } => {
            if stdout {
                for (_, yaml) in crmessenger_operator::crdgen::render()? {
                    println!("---\n{yaml}");
                }
            } else {
                for path in crmessenger_operator::crdgen::write_all(&dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
        }
    }
    Ok(())
}
