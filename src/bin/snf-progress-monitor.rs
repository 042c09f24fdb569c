fn main() -> std::process::ExitCode {
    hostkit::progress::main()
}
