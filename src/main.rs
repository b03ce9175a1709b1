//! The native CLI: `info`, `selftest`, `bench-ops`, `tokenize`, `parity`.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

/// Errors end the run with one line: the failure and its causes joined (`anyhow`'s `{:#}`),
/// never a multi-line chain or a panic trace a user has to read.
#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
