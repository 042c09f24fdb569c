fn main() -> std::process::ExitCode {
    hostkit::scriptmgr::main()
}
