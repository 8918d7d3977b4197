//! The preload's `cr_*` functions, looked up once with `dlsym(RTLD_DEFAULT)`: present when
//! the program runs under crust (LD_PRELOAD), absent otherwise. The only unsafe code of
//! the crate.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

pub type HookFn = unsafe extern "C" fn(i64, *mut c_void);

pub struct Api {
    pub is_enabled: unsafe extern "C" fn() -> i32,
    pub checkpoint: unsafe extern "C" fn() -> i64,
    pub disable: unsafe extern "C" fn() -> i32,
    pub enable: unsafe extern "C" fn() -> i32,
    pub ignore_fd: unsafe extern "C" fn(i32) -> i32,
    pub unignore_fd: unsafe extern "C" fn(i32) -> i32,
    pub on_checkpoint: unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32,
    pub on_resume: unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32,
    pub on_restart: unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32,
}

fn sym(name: &CStr) -> Option<usize> {
    // SAFETY: dlsym with a valid C string; RTLD_DEFAULT searches the global scope, where
    // an LD_PRELOAD library is.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p as usize)
}

/// The functions, when every one of them is there.
pub fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: each symbol is the preload's function of exactly this signature
        // (preload/src/api.rs, api/include/crust.h); a non-null address is a function.
        unsafe {
            Some(Api {
                is_enabled: std::mem::transmute::<usize, unsafe extern "C" fn() -> i32>(sym(c"cr_is_enabled")?),
                checkpoint: std::mem::transmute::<usize, unsafe extern "C" fn() -> i64>(sym(c"cr_checkpoint")?),
                disable: std::mem::transmute::<usize, unsafe extern "C" fn() -> i32>(sym(c"cr_disable")?),
                enable: std::mem::transmute::<usize, unsafe extern "C" fn() -> i32>(sym(c"cr_enable")?),
                ignore_fd: std::mem::transmute::<usize, unsafe extern "C" fn(i32) -> i32>(sym(c"cr_ignore_fd")?),
                unignore_fd: std::mem::transmute::<usize, unsafe extern "C" fn(i32) -> i32>(sym(c"cr_unignore_fd")?),
                on_checkpoint: std::mem::transmute::<usize, unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32>(
                    sym(c"cr_on_checkpoint")?,
                ),
                on_resume: std::mem::transmute::<usize, unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32>(sym(
                    c"cr_on_resume",
                )?),
                on_restart: std::mem::transmute::<usize, unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32>(
                    sym(c"cr_on_restart")?,
                ),
            })
        }
    })
    .as_ref()
    .filter(|a| {
        // SAFETY: a function of the preload taking no arguments.
        unsafe { (a.is_enabled)() != 0 }
    })
}

pub type Hook = Box<dyn Fn(u64) + Send + Sync + 'static>;

/// Calls the boxed closure `arg` points to.
pub unsafe extern "C" fn trampoline(crid: i64, arg: *mut c_void) {
    // SAFETY: `arg` is a leaked `Box<Hook>` registered by `register_hook`, never freed.
    let f = unsafe { &*(arg as *const Hook) };
    f(crid.max(0) as u64);
}

/// Register `hook` with one of the registration functions; the closure is leaked (hooks
/// live as long as the program).
pub fn register_hook(reg: unsafe extern "C" fn(Option<HookFn>, *mut c_void) -> i32, hook: Hook) -> i32 {
    let arg = Box::into_raw(Box::new(hook)) as *mut c_void;
    // SAFETY: the preload stores the pointers and calls `trampoline(crid, arg)` later;
    // `arg` stays valid forever.
    let r = unsafe { reg(Some(trampoline), arg) };
    if r != 0 {
        // SAFETY: not registered: we still own it.
        drop(unsafe { Box::from_raw(arg as *mut Hook) });
    }
    r
}

pub fn call0(f: unsafe extern "C" fn() -> i32) -> i32 {
    // SAFETY: a preload function taking no arguments.
    unsafe { f() }
}

pub fn call_fd(f: unsafe extern "C" fn(i32) -> i32, fd: i32) -> i32 {
    // SAFETY: a preload function taking a descriptor number (any value is accepted).
    unsafe { f(fd) }
}

pub fn checkpoint(a: &Api) -> i64 {
    // SAFETY: a preload function taking no arguments.
    unsafe { (a.checkpoint)() }
}
