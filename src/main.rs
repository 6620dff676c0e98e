use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tuma::cli::Cli::parse();
    tuma::init_logging("warn,tuma=info");
    match tuma::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
