fn main() -> std::process::ExitCode {
    hostkit::eventd::main()
}
