fn main() -> std::process::ExitCode {
    hostkit::synnefo::hook::main()
}
