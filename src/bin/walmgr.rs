fn main() -> std::process::ExitCode {
    hostkit::walmgr::main()
}
