//! The canonical checkpoint/kill/restart scenario (see `restart_c.rs`) for programs that
//! are not C: a Rust program (std threads, mpsc channels), the CPython interpreter with
//! threads, and bash running a builtin-only loop.

use crust_tests::*;

#[test]
fn rust_threads_and_channels_restart_identically() {
    let s = Session::new("rust_restart");
    Flow::new(&s, probe::rust(env!("CARGO_BIN_EXE_rust_probe"))).canonical();
}

#[test]
fn python_threads_restart_identically() {
    let s = Session::new("python_restart");
    Flow::new(&s, probe::python()).canonical();
}

#[test]
fn bash_builtin_loop_restarts_identically() {
    let s = Session::new("bash_restart");
    Flow::new(&s, probe::bash()).canonical();
}
