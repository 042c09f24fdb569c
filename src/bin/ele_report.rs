fn main() -> std::process::ExitCode {
    hostkit::ele::report::main()
}
