//! Every program's clap command is well-formed: `debug_assert` catches what clap only
//! reports when a user happens to hit it (duplicate flags, conflicting or missing
//! argument ids, bad defaults, positional ordering).

#[test]
fn every_program_command_is_well_formed() {
    let commands = [
        ("snf-ganeti-eventd", hostkit::synnefo::eventd::command()),
        ("snf-ganeti-hook", hostkit::synnefo::hook::command()),
        (
            "snf-progress-monitor",
            hostkit::synnefo::progress::command(),
        ),
        ("pgqd", hostkit::skytools::pgqd::command()),
        ("scriptmgr", hostkit::skytools::scriptmgr::command()),
        ("walmgr", hostkit::skytools::walmgr::command()),
        ("calink", hostkit::calink::command()),
        ("ele_report", hostkit::ele::report::command()),
        ("ele_ctl", hostkit::ele::ctl::command()),
        ("pacha", hostkit::pacha::command()),
    ];
    for (program, cmd) in commands {
        assert_eq!(cmd.get_name(), program, "command() of {program}");
        cmd.debug_assert();
    }
}
