fn main() -> std::process::ExitCode {
    hostkit::hook::main()
}
