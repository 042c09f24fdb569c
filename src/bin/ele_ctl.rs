fn main() -> std::process::ExitCode {
    hostkit::ele::ctl::main()
}
