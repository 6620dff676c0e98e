use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tuma::cli::Cli::parse();
    if !cli.runs_until_stopped() {
        end_quietly_on_a_closed_stdout();
    }
    tuma::init_logging("warn,tuma=info");
    match tuma::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tuma deliveries list | head`: when the reader goes away, end at once
/// and silently, killed by SIGPIPE as other Unix tools are (status 141 in a
/// shell), instead of Rust's default of ignoring the signal, which turns the
/// next write into a "Broken pipe" error or a panic. Not for `serve` and
/// `worker`, which must not die because a log reader did.
fn end_quietly_on_a_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists;
    // restoring a signal's default disposition touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
