//! File descriptors (issue 6): the fd table at the start of every image
//! (`crrestart --list-fds`), fd substitution at restart (`crrestart --fd [VPID:]N=PATH`),
//! fds of kinds crust cannot restore refused at checkpoint time unless marked "do not
//! checkpoint", and what regular files and devices keep across a restart (O_APPEND,
//! close-on-exec, offsets, /dev/zero, /dev/urandom, a file deleted while open and a memfd
//! held as an fd, with their contents; eventfds with their counter and semaphore mode;
//! timerfds with the time left, interval and unread expirations; signalfds; epoll
//! instances with their interest lists). The probe is `tests/probes/fdtab.c`.

use crust_tests::*;
use std::fs;


fn fdtab() -> Program {
    Program::c("fdtab")
}

/// The probe built with the application API (`cr_ignore_fd`).
fn fdtab_api() -> Program {
    use std::hash::{Hash, Hasher};
    let include = workspace_dir().join("api").join("include");
    let mut h = std::hash::DefaultHasher::new();
    fs::read(include.join("crust.h")).expect("api/include/crust.h").hash(&mut h);
    Program::new(compile_c("fdtab", &["-DWITH_API", "-I", include.to_str().unwrap()], &format!("api{:x}", h.finish())))
}

fn crrestart(s: &Session, args: &[&str]) -> std::process::Output {
    std::process::Command::new(&bins().crrestart)
        .args(args)
        .env("CR_COORD", s.coord())
        .current_dir(&s.root)
        .output()
        .expect("run crrestart")
}

fn text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The row of fd `fd` in `crrestart --list-fds` output.
fn row(listing: &str, fd: i32) -> Vec<String> {
    listing
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|w| w.first().map(String::as_str) == Some(&fd.to_string()))
        .unwrap_or_else(|| panic!("no row for fd {fd} in:\n{listing}"))
}

/// Regular files keep O_APPEND, close-on-exec and their offsets; /dev/zero and
/// /dev/urandom are devices again; a file deleted while open comes back unlinked with its
/// content and offset (the probe reads on, appends and hashes it), a memfd as a memfd of
/// the same name; eventfds keep their counters (semaphore mode too), timerfds their
/// interval, time left and unread expiration; a signalfd its mask (the pending signal is
/// read through it); an epoll instance its interest list with events and data (all three
/// watched fds reported ready); the whole output equals an uninterrupted run's. Before
/// the restart, `crrestart --list-fds` shows every fd (table and JSON), also when the
/// image's metadata is damaged (the table is read on its own, without the memory).
#[test]
fn files_and_devices_keep_flags_and_list_fds_shows_them() {
    let s = Session::new("fds_files");
    let f = Flow::new(&s, fdtab());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);

    let out = s.list_fds(&ck.gen, &[]);
    let log = row(&out, 10);
    assert_eq!(&log[1..4], ["file", "O_RDWR|O_APPEND", "7"], "fd 10 in:\n{out}");
    assert!(log[4].ends_with("/log.txt"), "fd 10 path in:\n{out}");
    let data = row(&out, 11);
    assert_eq!(&data[1..4], ["file", "O_RDONLY|O_CLOEXEC", "6"], "fd 11 in:\n{out}");
    assert_eq!(&row(&out, 12)[1..], ["device", "O_RDONLY", "0", "/dev/zero"], "fd 12 in:\n{out}");
    assert_eq!(&row(&out, 13)[1..], ["device", "O_RDONLY|O_CLOEXEC", "0", "/dev/urandom"], "fd 13 in:\n{out}");
    assert!(out.lines().next().is_some_and(|l| l.starts_with("process vpid ")), "no process line in:\n{out}");
    let deleted = row(&out, 16);
    assert_eq!(&deleted[1..4], ["deleted", "O_RDWR", "100"], "fd 16 in:\n{out}");
    assert!(deleted[4].ends_with("/scratch.tmp") && deleted[6] == "2500", "fd 16 in:\n{out}");
    assert_eq!(&row(&out, 17)[1..5], ["deleted", "O_RDWR|O_CLOEXEC", "3", "/memfd:probe-memfd"], "fd 17 in:\n{out}");
    assert_eq!(&row(&out, 18)[1..], ["eventfd", "O_RDWR|O_NONBLOCK", "0", "eventfd", "count", "5"], "fd 18 in:\n{out}");
    assert_eq!(&row(&out, 19)[1..], ["eventfd", "O_RDWR", "0", "eventfd", "count", "3", "(semaphore)"], "fd 19 in:\n{out}");
    let timer = row(&out, 21);
    assert_eq!((timer[1].as_str(), timer[4].as_str(), timer[6].as_str()), ("timerfd", "timerfd", "1"), "fd 21 in:\n{out}");
    assert!(row(&out, 22).join(" ").ends_with("1 unread"), "fd 22 in:\n{out}");
    assert_eq!(&row(&out, 23)[1..], ["epoll", "O_RDWR", "0", "epoll", "watching", "fds", "[18,22,24]"], "fd 23 in:\n{out}");
    assert_eq!(&row(&out, 24)[1..], ["signalfd", "O_RDWR|O_NONBLOCK", "0", "signalfd", "mask", "0x200"], "fd 24 in:\n{out}");

    let v: serde_json::Value = serde_json::from_str(&s.list_fds(&ck.gen, &["--json"])).expect("--list-fds --json gives JSON");
    let fds = v[0]["fds"].as_array().expect("fds array");
    let e = fds.iter().find(|e| e["fd"] == 11).expect("fd 11 in the JSON");
    assert_eq!((e["kind"].as_str(), e["offset"].as_i64(), e["cloexec"].as_bool()), (Some("file"), Some(6), Some(true)));

    // Damage the metadata at the end of a copy of the image: the table still reads, a
    // restart from it is refused.
    let img = images_of(&ck.gen).into_iter().next().expect("an image");
    let damaged = s.root.join("damaged.crimg");
    fs::copy(&img, &damaged).unwrap();
    let mut bytes = fs::read(&damaged).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x5a;
    fs::write(&damaged, &bytes).unwrap();
    let o = crrestart(&s, &["--list-fds", damaged.to_str().unwrap()]);
    let (out2, err2) = text(&o);
    assert!(o.status.success(), "--list-fds of an image with damaged metadata failed: {err2}");
    assert_eq!(row(&out2, 13), row(&out, 13));

    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// The log moved after the checkpoint: a plain restart fails naming it; `--fd 10=NEW`
/// restarts with fd 10 on the moved file, at its offset, still O_APPEND (the output, which
/// reads the log back through fd 10, equals an uninterrupted run's).
#[test]
fn fd_substitution_restarts_with_a_moved_log() {
    let s = Session::new("fds_subst");
    let f = Flow::new(&s, fdtab());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let moved_dir = s.root.join("moved");
    fs::create_dir_all(&moved_dir).unwrap();
    let moved = moved_dir.join("log.txt");
    fs::rename(s.work_dir.join("log.txt"), &moved).unwrap();

    let o = s.restart_expecting_failure(&ck.gen);
    assert!(!o.status.success(), "a restart without the moved log succeeded: {}", o.describe());
    assert!(o.stderr_text().contains("log.txt"), "the error does not name the missing log: {}", o.describe());

    // Bad specs and fds the image does not hold: non-zero exit, a message naming them.
    let bad = |args: &[&str], want: &str| {
        let o = s.restart_expecting_failure_with(&ck.gen, args);
        assert!(!o.status.success(), "crrestart {args:?} succeeded: {}", o.describe());
        assert!(o.stderr_text().contains(want), "crrestart {args:?}: the error does not say {want:?}: {}", o.describe());
    };
    bad(&["--fd", "10"], "bad --fd");
    bad(&["--fd", "x=/tmp/a"], "bad --fd");
    bad(&["--fd", "99=/tmp/a"], "no fd 99");
    bad(&["--fd", "4242:10=/tmp/a"], "no process vpid 4242");
    let log_subst = format!("10={}", moved.display());
    bad(&["--fd", &log_subst, "--fd", "12=/nonexistent/dir/dev"], "/nonexistent/dir/dev");
    bad(&["--fd", &log_subst, "--fd", &log_subst], "substituted twice");

    let mut f = f;
    f.restart_args = vec!["--fd".into(), log_subst];
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    assert_eq!(fs::read_to_string(&moved).unwrap(), "line 1\nline 2\n", "the moved log");
    assert!(!s.work_dir.join("log.txt").exists(), "the log came back at its old path");
}

/// A socket the program did not mark: the checkpoint fails naming the fd and its kind,
/// no generation is left, and the program runs on to the same end as an uninterrupted run.
#[test]
fn checkpoint_refuses_an_fd_it_cannot_restore_naming_it() {
    let s = Session::new("fds_refuse");
    let prog = fdtab().env("PROBE_SOCKET", "1");
    let f = Flow::new(&s, prog);
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.settle_gate_fds();
    s.wait_registered(1);
    let o = s.crctl(&["checkpoint", "--wait"]);
    assert!(!o.status.success(), "the checkpoint of a program with a socket succeeded: {}", o.describe());
    let msg = o.all_text_lower();
    assert!(msg.contains("fd 14") && msg.contains("socket"), "the error does not name fd 14 and its kind: {}", o.describe());
    assert!(complete_generations(&s.ckpt_dir).is_empty(), "a generation was left: {:?}", complete_generations(&s.ckpt_dir));
    f.finish(&mut run);
}

/// A userfaultfd (not restorable): the checkpoint fails naming fd 25 and its kind.
#[test]
fn checkpoint_refuses_a_userfaultfd_naming_it() {
    let s = Session::new("fds_refuse_uffd");
    let f = Flow::new(&s, fdtab().env("PROBE_UFFD", "1"));
    let mut run = f.launch();
    s.advance_to(&mut run, 1);
    s.settle_gate_fds();
    s.wait_registered(1);
    let o = s.crctl(&["checkpoint", "--wait"]);
    assert!(!o.status.success(), "the checkpoint of a program with a userfaultfd succeeded: {}", o.describe());
    let msg = o.all_text_lower();
    assert!(msg.contains("fd 25") && msg.contains("userfaultfd"), "the error does not name fd 25 and its kind: {}", o.describe());
    f.finish(&mut run);
}

/// A socketpair marked "do not checkpoint": the checkpoint succeeds, `--list-fds` shows
/// the fds as ignored, and a restart substitutes one (a kind crust cannot restore) with
/// /dev/null and closes the other.
#[test]
fn ignored_fds_are_closed_or_substituted_after_a_restart() {
    let s = Session::new("fds_ignored");
    let prog = fdtab_api().env("PROBE_SOCKET", "1").env("PROBE_IGNORE", "1");
    let mut f = Flow::new(&s, prog);
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let out = s.list_fds(&ck.gen, &[]);
    assert_eq!(row(&out, 14)[1], "ignored", "fd 14 in:\n{out}");
    assert!(row(&out, 14)[4].starts_with("socket:"), "fd 14 in:\n{out}");

    f.restart_args = vec!["--fd".into(), "14=/dev/null".into()];
    let mut r = f.restart(&ck);
    let status = s.drive_to_exit(&mut r);
    assert_eq!(status.code(), Some(PROBE_EXIT_CODE), "the restarted probe: {}", s.diagnostics());
    let got = fs::read_to_string(&f.out).unwrap();
    let want = f.reference.stdout_text().replace("fd 14: socket, fd 15: socket", "fd 14: character device, fd 15: closed");
    assert_same_bytes(want.as_bytes(), got.as_bytes(), "output after the restart");
}


/// A tree: `--list-fds` shows the parent's and the child's tables; the data file's
/// description stays shared (the child's read moves the parent's offset, as in the
/// reference run); the parent's pidfd of the child refers to the new child (it reports its
/// exit); the child's log,
/// moved after the checkpoint, is substituted with `--fd VPID:20=NEW` (VPID as listed),
/// and fd 20 of another process, or of a vpid not in the generation, is refused.
#[test]
fn fd_substitution_in_one_process_of_a_tree() {
    let s = Session::new("fds_tree");
    let mut f = Flow::new(&s, fdtab().env("PROBE_CHILD", "1"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);

    let out = s.list_fds(&ck.gen, &[]);
    let procs: Vec<&str> = out.lines().filter(|l| l.starts_with("process vpid ")).collect();
    assert_eq!(procs.len(), 2, "two processes in:\n{out}");
    // The child's section is the one with fd 20.
    let mut child_vpid = None;
    let mut current = None;
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("process vpid ") {
            current = rest.split_whitespace().next().and_then(|v| v.parse::<i32>().ok());
        } else if l.split_whitespace().next() == Some("20") {
            child_vpid = current;
        }
    }
    let child_vpid = child_vpid.unwrap_or_else(|| panic!("no process with fd 20 in:\n{out}"));
    let pidfd = row(&out, 28);
    assert_eq!(&pidfd[1..], ["pidfd", "O_RDWR", "0", "pidfd", "of", "process", &child_vpid.to_string()], "fd 28 in:\n{out}");
    let child_log = row(&out, 20);
    assert_eq!(&child_log[1..4], ["file", "O_RDWR|O_APPEND", "8"], "fd 20 in:\n{out}");

    let moved = s.root.join("child-moved.log");
    fs::rename(s.work_dir.join("child.log"), &moved).unwrap();
    let o = s.restart_expecting_failure_with(&ck.gen, &["--fd", &format!("20={}", moved.display())]);
    assert!(o.stderr_text().contains("no fd 20"), "fd 20 of the root: {}", o.describe());
    let o = s.restart_expecting_failure(&ck.gen);
    assert!(o.stderr_text().contains("child.log"), "the error does not name the moved log: {}", o.describe());

    f.restart_args = vec!["--fd".into(), format!("{child_vpid}:20={}", moved.display())];
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    assert_eq!(fs::read_to_string(&moved).unwrap(), "child 1\nchild 2\n", "the moved child log");
}

/// Files changed after the checkpoint are refused with a message naming them and the
/// `--fd` to use: a file only read that changed, a written file now shorter (data lost),
/// a file replaced by another one at its path. Substituted, the same files restart fine.
#[test]
fn changed_files_are_refused_naming_them_unless_substituted() {
    let s = Session::new("fds_changed");
    let mut f = Flow::new(&s, fdtab());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let data = s.work_dir.join("data.txt");
    let log = s.work_dir.join("log.txt");
    let copy = s.root.join("data-copy.txt");
    fs::copy(&data, &copy).unwrap();

    let refused = |want: &[&str]| {
        let o = s.restart_expecting_failure(&ck.gen);
        assert!(!o.status.success(), "the restart succeeded: {}", o.describe());
        for w in want {
            assert!(o.stderr_text().contains(w), "the error does not say {w:?}: {}", o.describe());
        }
    };
    let mut d = fs::read(&data).unwrap();
    d.extend_from_slice(b"more\n");
    fs::write(&data, &d).unwrap();
    refused(&["data.txt", "changed since the checkpoint", "--fd 11=PATH"]);
    fs::copy(&copy, &data).unwrap(); // same bytes, a new modification time
    refused(&["data.txt", "changed since the checkpoint"]);

    let subst_data = format!("11={}", copy.display());
    // A new file (created while the old one exists, so a new inode) renamed over it.
    let new_log = s.work_dir.join("log.new");
    fs::write(&new_log, b"line 1\n").unwrap();
    fs::rename(&new_log, &log).unwrap();
    let o = s.restart_expecting_failure_with(&ck.gen, &["--fd", &subst_data]);
    assert!(o.stderr_text().contains("log.txt") && o.stderr_text().contains("was replaced"), "{}", o.describe());

    // The written file shorter than at the checkpoint (same inode).
    let s2 = Session::new("fds_shorter");
    let f2 = Flow::new(&s2, fdtab());
    let mut run2 = f2.launch();
    let ck2 = f2.checkpoint_at(&mut run2, 1);
    s2.advance_to(&mut run2, 2);
    f2.kill(&mut [&mut run2]);
    fs::OpenOptions::new().write(true).open(s2.work_dir.join("log.txt")).unwrap().set_len(3).unwrap();
    let o = s2.restart_expecting_failure(&ck2.gen);
    assert!(o.stderr_text().contains("log.txt") && o.stderr_text().contains("shorter"), "{}", o.describe());

    f.restart_args = vec!["--fd".into(), subst_data, "--fd".into(), format!("10={}", log.display())];
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// sqlite3 (the Debian package), fed by bash through a pipe, checkpointed in the middle
/// of a transaction (its rollback journal open), killed after two more commits (which
/// changed the database in place and deleted the journal), restarted: the database and
/// the journal come back as they were at the checkpoint (files open read-write are saved
/// whole), sqlite3 commits the transaction and the rest, and the final content, checksum
/// and integrity check equal an uninterrupted run's.
#[test]
fn sqlite3_checkpointed_mid_transaction_restarts_to_the_same_database() {
    if which("sqlite3").is_none() {
        panic!("sqlite3 is needed by this test (apt-get install sqlite3)");
    }
    let s = Session::new("fds_sqlite");
    let f = Flow::new(&s, Program::bash("sqlite.sh"));
    let reference = f.reference.stdout_text();
    assert!(reference.contains("journal exists mid-transaction\n"), "the reference run had no journal at gate 1:\n{reference}");
    assert!(reference.contains("1800|") && reference.contains("\nok\n"), "the reference run's result:\n{reference}");
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    assert!(!s.work_dir.join("test.db-journal").exists(), "the journal is still there after later commits");
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
}

/// fds of one process that share a description (dup2, F_DUPFD, a dup of stdout) share it
/// again after a restart: writes through each land one after the other, a status flag set
/// through one shows through the other, and a separate open keeps its own offset
/// (`tests/probes/dup_fds.c`). Before the fix, fd 20 and 30 came back as descriptions of
/// their own and overwrote each other's lines.
#[test]
fn dup_fds_in_one_process_share_their_description_after_a_restart() {
    let s = Session::new("fds_dups");
    Flow::new(&s, Program::c("dup_fds")).canonical();
}

/// After a restart from a stop-the-world checkpoint (which records the preload's own fds of
/// that moment, the image file being written among them) the program can close every fd
/// it opens, whatever its number, from its first instruction on (`tests/probes/close_fds.c`).
/// Before, the restored record made the close wrapper refuse fd 3 (the image file's old
/// number) until the new checkpoint thread had started: this test failed 3 runs in 6, and
/// an inotify test lost a CLOSE_WRITE event that way once in a stop-the-world sweep.
#[test]
fn program_closes_every_fd_right_after_a_stop_the_world_restart() {
    let s = Session::new("close_fds");
    let out = s.root.join("program.out");
    Flow::with_opts(&s, Program::c("close_fds"), LaunchOpts::file(&out).no_forked()).canonical();
}
