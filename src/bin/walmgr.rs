fn main() -> std::process::ExitCode {
    hostkit::skytools::walmgr::main()
}
