//! `libcrpreload.so`: the part of crust that lives inside every checkpointed process.
//!
//! Loaded with LD_PRELOAD by `crlaunch`. At load time ([`init`]) it resolves the real libc
//! functions it wraps, installs the checkpoint signal handler and starts the checkpoint
//! thread, which talks to the coordinator. Module map:
//!
//! * [`sys`]: raw system calls: the preload never calls libc for its own work.
//! * [`heap`]: the private allocator (never libc malloc).
//! * [`config`]: settings from the environment, read once at load.
//! * [`vpid`]: the virtual pid/tid table (what the program sees vs the kernel's ids).
//! * [`quiesce`]: the checkpoint signal handler, the wrapper lock, stopping and resuming threads.
//! * [`procfs`]: reading /proc/self (maps, pagemap, stat, fds).
//! * [`dump`]: writing the image; [`pagescan`]: which pages hold data (PAGEMAP_SCAN).
//! * [`mapped`]: memory mapped from the restart image (the `madvise` wrapper).
//! * [`tree`]: the process-tree part of the image (children, zombies, shared fds, pipe bytes).
//! * [`writer`]: the forked copy-on-write writer that runs `dump` while the program runs on.
//! * [`ckpt_thread`]: the checkpoint thread and its coordinator connection.
//! * [`kobjects`]: inotify watches (the `inotify_add_watch` wrapper remembers their paths).
//! * [`posix_timers`]: POSIX timers (`timer_create`) saved and recreated with their ids;
//!   [`wrap_timers`]: `SIGEV_THREAD` timers served by a helper thread crust can stop.
//! * [`restore`]: what runs after the restorer has put memory back: threads, signals, timers.
//! * [`wrappers`]: the libc functions we interpose.
//! * [`api`]: the `cr_*` functions programs may call (`api/include/crust.h`).
//! * [`wrappers`]: the libc functions we interpose (signals, fds, ids);
//!   [`wrap_pids`]: virtual pids wherever a pid crosses libc; [`wrap_proc`]: fork, exec,
//!   spawn, exit — every process of the tree under control; [`wrap_ipc`]: SysV IPC with
//!   virtual ids, POSIX message queues.

#![allow(clippy::missing_safety_doc)]

pub mod api;
pub mod heap;
pub mod kobjects;
pub mod ckpt_thread;
pub mod config;
pub mod dump;
pub mod mapped;
pub mod pagescan;
pub mod posix_timers;
pub mod procfs;
pub mod quiesce;
pub mod restore;
pub mod sys;
pub mod tree;
pub mod vpid;
pub mod wrap_ipc;
pub mod wrap_pids;
pub mod wrap_proc;
pub mod wrap_timers;
pub mod wrappers;
pub mod writer;

#[global_allocator]
static GLOBAL: heap::PreloadAlloc = heap::PreloadAlloc;

use core::sync::atomic::{AtomicBool, Ordering};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Runs when the dynamic loader maps the library, before the program's `main`.
/// glibc passes `argc, argv, envp` to `.init_array` functions.
extern "C" fn init(argc: i32, argv: *const *const u8, envp: *const *const u8) {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: argv/envp come from the loader and are NUL-terminated arrays of C strings.
    unsafe {
        config::load(argc, argv, envp);
    }
    // Real functions are needed even when disabled: the wrappers still forward to them.
    wrappers::resolve_real_symbols();
    let cfg = config::get();
    if cfg.disabled {
        wrap_proc::notify_registered(cfg.notify_fd);
        return;
    }
    api::ENABLED.store(1, Ordering::Relaxed);
    // After an exec: the same virtual pid (and what it knew) as before.
    // A spawned program gets its parent's table only: a mapping to its own real pid is stale.
    wrap_ipc::decode_inherited(&cfg.inherited_ipcids);
    if !cfg.inherited_vpids.is_empty() {
        vpid::decode_into(&cfg.inherited_vpids);
        if cfg.inherited_vpid <= 0 {
            if vpid::is_virtual_in_use(sys::getpid()) {
                // Our real pid is a virtual pid the tree knows: the spawning parent reaps
                // us and spawns again (wrap_proc.rs), before any of the program runs.
                sys::exit_group(127);
            }
            vpid::remove_real(sys::getpid());
        }
    }
    if cfg.inherited_vpid > 0 {
        vpid::set_self(cfg.inherited_vpid);
    }
    quiesce::install_handler();
    wrappers::set_active();
    // A spawning parent waits until we are registered (wrap_proc.rs).
    wrap_proc::set_notify_fd(cfg.notify_fd);
    ckpt_thread::start();
    // Register before main(): a checkpoint asked for right after launch then includes us.
    ckpt_thread::wait_first_contact(2_000_000_000);
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT_ARRAY: extern "C" fn(i32, *const *const u8, *const *const u8) = init;

/// Runs when the program exits normally: a forked image writer still at work for this
/// process gets to finish first (bounded), so the generation can complete.
extern "C" fn fini() {
    if INITIALIZED.load(Ordering::Relaxed) && !config::get().disabled {
        ckpt_thread::wait_at_exit();
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI_ARRAY: extern "C" fn() = fini;
