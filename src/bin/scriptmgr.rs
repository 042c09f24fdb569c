fn main() -> std::process::ExitCode {
    hostkit::skytools::scriptmgr::main()
}
