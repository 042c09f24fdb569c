fn main() -> std::process::ExitCode {
    hostkit::pacha::main()
}
