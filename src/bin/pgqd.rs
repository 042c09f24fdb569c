fn main() -> std::process::ExitCode {
    hostkit::skytools::pgqd::main()
}
