fn main() -> std::process::ExitCode {
    hostkit::calink::main()
}
