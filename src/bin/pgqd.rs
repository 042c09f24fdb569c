fn main() -> std::process::ExitCode {
    hostkit::pgqd::main()
}
