//! Kernel objects (issue 6) beyond plain fds: POSIX timers (`timer_create`) with their
//! ids, signals, values, threads and settings (probe `tests/probes/ptimers.c`).

use crust_tests::*;

/// Timers of every kind (a signal with a value, a signal to one thread, SIGEV_NONE,
/// glibc's SIGEV_THREAD, one never armed, ids with a gap) keep their ids, settings and
/// signals across a restart: every `timer_t` stays valid, they fire on with the right
/// values, and new timers (also SIGEV_THREAD ones) work after the restart. The output
/// equals an uninterrupted run's.
#[test]
fn posix_timers_keep_ids_signals_and_settings() {
    let s = Session::new("kobj_ptimers");
    Flow::new(&s, Program::c("ptimers")).canonical();
}

/// A restored process's timers are checkpointed again: restart, checkpoint the restored
/// program at the same gate, kill it, restart again; the output equals the reference.
#[test]
fn posix_timers_survive_a_second_restart() {
    let s = Session::new("kobj_ptimers_twice");
    let f = Flow::new(&s, Program::c("ptimers"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    let ck2 = f.checkpoint_at(&mut r, 1);
    f.kill(&mut [&mut r]);
    let mut r2 = f.restart(&ck2);
    f.finish(&mut r2);
}

/// An inotify instance keeps its watches, their numbers (with gaps, and the next number
/// handed out), paths and masks (one-shot included): after the restart the probe's
/// changes to the watched files give the same events, with the same watch numbers, as an
/// uninterrupted run; a child holding the same instance (inherited) adds the next watch
/// number after the restart. `crrestart --list-fds` shows the watches.
#[test]
fn inotify_watches_keep_their_numbers_and_masks() {
    let s = Session::new("kobj_inotify");
    let f = Flow::new(&s, Program::c("inotify"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let listing = s.list_fds(&ck.gen, &[]);
    let row = listing.lines().find(|l| l.trim_start().starts_with("30 ")).unwrap_or_else(|| panic!("no fd 30 in:\n{listing}"));
    assert!(row.contains("inotify") && row.contains("1:/") && row.contains("3:/") && row.contains("4:/"), "fd 30: {row}");
    assert!(!row.contains(" 2:/") && !row.contains(",2:/"), "the removed watch 2 is listed: {row}");
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// A watched directory removed after the checkpoint: the restart fails before starting
/// anything, naming the fd, the watch and the path.
#[test]
fn inotify_watch_on_a_removed_path_is_refused_naming_it() {
    let s = Session::new("kobj_inotify_gone");
    let f = Flow::new(&s, Program::c("inotify"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    let dir = s.work_dir.join("watched").join("sub2");
    std::fs::remove_dir_all(&dir).expect("remove watched/sub2");
    let o = s.restart_expecting_failure(&ck.gen);
    let msg = o.all_text_lower();
    assert!(
        msg.contains("fd 30") && msg.contains("watch 4") && msg.contains("sub2") && msg.contains("no longer exists"),
        "the error does not name fd 30, watch 4 and its path: {}",
        o.describe()
    );
}

/// A unique POSIX shared-memory name for a session.
fn shm_name(s: &Session) -> String {
    format!("/crust-test-{}", s.root.file_name().and_then(|n| n.to_str()).unwrap_or("x"))
}

/// A tmpfs file (shm_open) and a disk file, mapped MAP_SHARED by a parent and inherited
/// by its child: after the restart the shm object has its checkpoint-time content again
/// (the killed run had overwritten it), both mappings are shared by the two processes
/// again, and the output equals an uninterrupted run's.
#[test]
fn shared_file_mappings_come_back_shared_with_their_content() {
    let s = Session::new("kobj_shmfile");
    let name = shm_name(&s);
    Flow::new(&s, Program::c("shmfile").env("PROBE_SHM", &name)).canonical();
    let _ = std::fs::remove_file(format!("/dev/shm{name}"));
}

/// The shm object vanished after the checkpoint (as after a reboot): the restart makes it
/// again from the image (saying so) and the program sees its checkpoint-time content. A
/// disk file mapped MAP_SHARED that became shorter is refused, naming it.
#[test]
fn shared_file_mappings_vanished_shm_is_recreated_and_shortened_file_refused() {
    let s = Session::new("kobj_shmfile_gone");
    let name = shm_name(&s);
    let f = Flow::new(&s, Program::c("shmfile").env("PROBE_SHM", &name));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let shm = std::path::PathBuf::from(format!("/dev/shm{name}"));
    std::fs::remove_file(&shm).expect("the shm object exists after the kill");

    let disk = s.work_dir.join("shared.dat");
    let full = std::fs::read(&disk).expect("shared.dat");
    std::fs::write(&disk, b"short").unwrap();
    let o = s.restart_expecting_failure(&ck.gen);
    let msg = o.all_text_lower();
    assert!(msg.contains("shared.dat") && msg.contains("shorter"), "the error does not name shared.dat: {}", o.describe());
    std::fs::write(&disk, &full).unwrap();

    let mut r = f.restart(&ck);
    f.finish(&mut r);
    let own_err = r.stderr_text();
    assert!(own_err.contains(&name) && own_err.contains("made again"), "no warning about the recreated shm object: {own_err}");
    let _ = std::fs::remove_file(&shm);
}

/// memfd seals come back (a sealed memfd refuses writes and resizes and keeps its
/// content; one created sealable can still be sealed; a plain one cannot), and a
/// CLOCK_REALTIME timerfd set TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET keeps both flags
/// and its expiry; the output equals an uninterrupted run's. `--list-fds` shows the seals.
#[test]
fn memfd_seals_and_absolute_timerfd_flags_are_kept() {
    let s = Session::new("kobj_seals");
    let f = Flow::new(&s, Program::c("seals"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let listing = s.list_fds(&ck.gen, &[]);
    let row = |fd: &str| listing.lines().find(|l| l.trim_start().starts_with(fd)).unwrap_or_else(|| panic!("no fd {fd} in:\n{listing}")).to_string();
    assert!(row("40 ").contains("seals 0xe"), "fd 40: {}", row("40 "));
    assert!(row("43 ").contains("absolute, cancel on set"), "fd 43: {}", row("43 "));
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// A memfd both mapped MAP_SHARED and held as an fd (by a parent and its child) is one
/// object after the restart: a write through the fd shows in the child's mapping and the
/// other way round; it keeps its name, seals and the content beyond the mapping.
#[test]
fn memfd_mapped_and_held_is_one_object() {
    let s = Session::new("kobj_memfd_shared");
    Flow::new(&s, Program::c("memfd_shared")).canonical();
}

/// The way timer ids come back on kernels before 6.17 (no PR_TIMER_CREATE_RESTORE_IDS:
/// timers made in id order, placeholders for the gaps), forced with `CR_TIMER_IDS=linear`:
/// the same output as an uninterrupted run.
#[test]
fn posix_timers_keep_ids_without_the_prctl() {
    let s = Session::new("kobj_ptimers_linear");
    Flow::new(&s, Program::c("ptimers").env("CR_TIMER_IDS", "linear")).canonical();
}
