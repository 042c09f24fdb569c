//! Run a program and judge how it ended: exit status, output, and the one-line error
//! contract (`<program>: <what failed>` on exactly one stderr line).

use std::process::{Child, Command, Output, Stdio};

/// The command and everything it printed, for assertion messages.
pub fn show(c: &Command, o: &Output) -> String {
    format!(
        "{c:?}\n  status: {}\n  stdout: {}\n  stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

/// Run to completion with stdin from /dev/null; panic only if it cannot be started.
pub fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"))
}

/// Run; panic with the full output unless it exits 0. Returns stdout.
pub fn ok(c: &mut Command) -> String {
    let o = run(c);
    assert!(o.status.success(), "command failed: {}", show(c, &o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run; panic unless it exits non-zero. Returns stderr.
pub fn fails(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        !o.status.success(),
        "command should have failed: {}",
        show(c, &o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

thread_local! {
    /// Contract violations that do not stop a test (error-message shape): reported
    /// together by `finish()` at the end, so one wording problem does not hide the rest.
    static PROBLEMS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Record a contract violation; the test goes on and `finish()` fails it.
pub fn problem(msg: String) {
    eprintln!("PROBLEM: {msg}");
    PROBLEMS.with(|p| p.borrow_mut().push(msg));
}

/// Panic with every recorded problem (call last in a test).
pub fn finish() {
    let p = PROBLEMS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    assert!(p.is_empty(), "{} problem(s):\n{}", p.len(), p.join("\n"));
}

/// stderr of a failed `prog`: exactly one line, `<prog>: ...`, mentioning `what`.
/// Violations are recorded with `problem()`.
pub fn assert_one_line_error(prog: &str, stderr: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        problem(format!("expected one line on stderr, got: {stderr:?}"));
    }
    let Some(last) = lines.last() else {
        return problem("nothing on stderr".into());
    };
    if !last.starts_with(&format!("{prog}: ")) {
        problem(format!(
            "error line should start with '{prog}: ': {stderr:?}"
        ));
    }
    if !last.contains(what) {
        problem(format!("error line should name {what:?}: {stderr:?}"));
    }
}

/// A background process killed (SIGKILL) and reaped on drop.
pub struct Bg(pub Option<Child>);

impl Bg {
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.take().unwrap().wait().unwrap()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
