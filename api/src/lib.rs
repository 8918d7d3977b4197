//! The crust application API for Rust programs (the C version is `api/include/crust.h`).
//!
//! A program using this crate runs the same with and without crust: when it is not
//! started by `crlaunch` (the preload library is absent), [`is_enabled`] is false and the
//! other functions return [`Error::NotEnabled`]. Nothing is linked: the functions are
//! looked up at run time in the preload library.
//!
//! ```no_run
//! match crust_api::checkpoint() {
//!     Ok(crust_api::Checkpoint::Taken(crid)) => println!("checkpoint {crid} is on disk"),
//!     Ok(crust_api::Checkpoint::Restarted) => println!("restarted from that checkpoint"),
//!     Err(e) => eprintln!("no checkpoint: {e}"),
//! }
//! let _section = crust_api::disable(); // no checkpoint stops the program until it is dropped
//! ```
//!
//! The rules (where hooks run, what they may do, nesting of critical sections) are those
//! of the C header.

mod ffi;

use std::os::fd::RawFd;

/// Errors of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the program does not run under crust (start it with crlaunch)")]
    NotEnabled,
    #[error("the checkpoint failed (no coordinator, a process failed, or called from a hook or a critical section)")]
    CheckpointFailed,
    #[error("not inside a critical section")]
    NotDisabled,
    #[error("too many {0} registered")]
    TooMany(&'static str),
}

/// What [`checkpoint`] returns, like fork(): once in the running program, once in a
/// program restarted from that checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The checkpoint with this id (CRID, the generation number) is complete.
    Taken(u64),
    /// The program was restarted from the checkpoint it asked for.
    Restarted,
}

/// Whether the program runs under crust.
pub fn is_enabled() -> bool {
    ffi::api().is_some()
}

fn api() -> Result<&'static ffi::Api, Error> {
    ffi::api().ok_or(Error::NotEnabled)
}

/// Checkpoint the whole computation and wait until the generation is complete.
pub fn checkpoint() -> Result<Checkpoint, Error> {
    match ffi::checkpoint(api()?) {
        n if n > 0 => Ok(Checkpoint::Taken(n as u64)),
        0 => Ok(Checkpoint::Restarted),
        _ => Err(Error::CheckpointFailed),
    }
}

/// A critical section: no checkpoint stops the program while it lives (on this thread;
/// sections nest). Dropping it calls `cr_enable`.
#[derive(Debug)]
pub struct CriticalSection {
    /// Sections are per thread: not Send.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            ffi::call0(a.enable);
        }
    }
}

/// Enter a critical section (waits while a checkpoint is under way).
pub fn disable() -> Result<CriticalSection, Error> {
    let a = api()?;
    if ffi::call0(a.disable) != 0 {
        return Err(Error::NotEnabled);
    }
    Ok(CriticalSection { _not_send: std::marker::PhantomData })
}

/// Keep descriptor `fd` out of checkpoints (closed after a restart).
pub fn ignore_fd(fd: RawFd) -> Result<(), Error> {
    match ffi::call_fd(api()?.ignore_fd, fd) {
        0 => Ok(()),
        _ => Err(Error::TooMany("ignored descriptors")),
    }
}

/// Checkpoint `fd` again.
pub fn unignore_fd(fd: RawFd) -> Result<(), Error> {
    ffi::call_fd(api()?.unignore_fd, fd);
    Ok(())
}

fn hook(reg: unsafe extern "C" fn(Option<ffi::HookFn>, *mut std::ffi::c_void) -> i32, f: ffi::Hook) -> Result<(), Error> {
    match ffi::register_hook(reg, f) {
        0 => Ok(()),
        _ => Err(Error::TooMany("hooks")),
    }
}

/// Run `f(crid)` before each checkpoint, before the program's threads are stopped.
pub fn on_checkpoint(f: impl Fn(u64) + Send + Sync + 'static) -> Result<(), Error> {
    hook(api()?.on_checkpoint, Box::new(f))
}

/// Run `f(crid)` when the program runs again after a checkpoint.
pub fn on_resume(f: impl Fn(u64) + Send + Sync + 'static) -> Result<(), Error> {
    hook(api()?.on_resume, Box::new(f))
}

/// Run `f(crid)` after a restart from checkpoint `crid`.
pub fn on_restart(f: impl Fn(u64) + Send + Sync + 'static) -> Result<(), Error> {
    hook(api()?.on_restart, Box::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test` does not run under crust: everything says so and nothing breaks.
    #[test]
    fn without_crust_nothing_is_enabled() {
        assert!(!is_enabled());
        assert_eq!(checkpoint(), Err(Error::NotEnabled));
        assert_eq!(disable().unwrap_err(), Error::NotEnabled);
        assert_eq!(ignore_fd(0), Err(Error::NotEnabled));
        assert_eq!(on_checkpoint(|_| {}), Err(Error::NotEnabled));
    }
}
