//! The `postern` binary: parse the command line and hand over to [`postern::cli`].

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
