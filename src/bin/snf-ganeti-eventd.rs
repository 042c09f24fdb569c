fn main() -> std::process::ExitCode {
    hostkit::synnefo::eventd::main()
}
