//! The `masq` binary: see `masq --help`.
fn main() -> std::process::ExitCode {
    masq::cli_main()
}
