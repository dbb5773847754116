//! `fleetd`: the real-time location backend for fleets.
//!
//! This file is wiring only: parse the command line, load settings, run a
//! subcommand. `serve` lives in `serve.rs`, the simulator front-end in
//! `simulate.rs`; the end-to-end benchmark is the `fleetd-bench` crate.

// A binary exports nothing; `pub` marks what modules offer each other.
#![allow(unreachable_pub)]

mod access;
mod cert;
mod cli;
mod config;
mod limits;
mod serve;
mod simulate;
mod store_cmd;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: with a million devices glibc's
/// per-thread arenas held ~1.2 GB (fjall memtables and batches freed on
/// other threads than they were allocated on); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init_logging(cli.verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleetd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
