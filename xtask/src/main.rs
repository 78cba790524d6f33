//! `cargo xtask`: workspace automation around the OpenAPI spec: code generation
//! (`codegen`) and the breaking-change check (`breaking`).

mod breaking;
mod codegen;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Workspace automation for the messaging API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the server crate (poem-openapi) and the client crate (progenitor) from
    /// openapi/messaging.yaml.
    Codegen {
        /// Fail instead of writing when a generated file is stale.
        #[arg(long)]
        check: bool,
    },
    /// Compare openapi/messaging.yaml in the working tree with a base version and report
    /// changes that break existing callers or code built on the generated client.
    /// Exit status: 0 nothing breaking, 1 breaking changes, 2 the comparison failed.
    Breaking {
        /// Git ref whose openapi/messaging.yaml is the base (a branch, `origin/main`, a tag).
        #[arg(
            long,
            value_name = "GIT-REF",
            default_value = "HEAD",
            conflicts_with = "base_file"
        )]
        base: String,
        /// Compare with this file instead of a git ref.
        #[arg(long, value_name = "PATH")]
        base_file: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let root = workspace_root();
    match Cli::parse().command {
        Command::Codegen { check } => codegen::run(&root, check).map(|()| ExitCode::SUCCESS),
        Command::Breaking { base, base_file } => {
            let base = match base_file {
                Some(path) => breaking::Base::File(path),
                None => breaking::Base::Git(base),
            };
            Ok(breaking::run(&root, &base))
        }
    }
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
