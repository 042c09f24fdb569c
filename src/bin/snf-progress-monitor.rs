fn main() -> std::process::ExitCode {
    hostkit::synnefo::progress::main()
}
