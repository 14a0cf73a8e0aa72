//! Thin binary: everything lives in the library (see `walletd::cli`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    walletd::cli::run().await
}
