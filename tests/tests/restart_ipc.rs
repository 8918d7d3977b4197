//! SysV IPC and POSIX message queues (issue 6): objects shared between a parent and its
//! child, checkpointed mid-use (the child blocked in `msgrcv` or `mq_receive`), killed,
//! restarted: the program goes on with the ids it holds, the contents as they were at the
//! checkpoint (segment bytes, semaphore values, queued messages in order with their types
//! or priorities), segments attached at the same addresses and shared again, a removed
//! segment still attached. A keyed object replaced after the checkpoint stops the restart
//! with a message naming its key. Probes: `tests/probes/sysv.c`, `tests/probes/mqueue.c`,
//! `tests/probes/sysv.pl` (perl's IPC::SysV modules).

use crust_tests::*;
use std::fs;
use std::path::Path;

/// Remove what a killed run left behind (the ids the probe wrote), ignoring errors.
fn remove_leftovers(work_dir: &Path) {
    let Ok(text) = fs::read_to_string(work_dir.join("ipc-ids.txt")) else { return };
    let ids: Vec<i32> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    if let [shm, priv_shm, sem, q] = ids[..] {
        // SAFETY: removing objects by id; failures (already gone) are ignored.
        unsafe {
            libc::shmctl(shm, libc::IPC_RMID, std::ptr::null_mut());
            libc::shmctl(priv_shm, libc::IPC_RMID, std::ptr::null_mut());
            libc::semctl(sem, 0, libc::IPC_RMID);
            libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn ftok(dir: &Path, id: u8) -> libc::key_t {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    unsafe { libc::ftok(c.as_ptr(), id as i32) }
}

/// The canonical scenario on a parent and its child: checkpoint at gate 1 (the child
/// blocked in msgrcv), run on to gate 2 (the keyed objects changed and left behind), kill,
/// restart, run to the end: the output equals an uninterrupted run's.
#[test]
fn sysv_shm_sem_msg_shared_by_parent_and_child_restart_with_contents() {
    let s = Session::new("ipc_sysv");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    remove_leftovers(&s.work_dir);
}

/// Restarted twice from the same checkpoint: the second restart finds the objects the
/// first restart made (and its killed run changed) and resets them.
#[test]
fn sysv_restart_twice_from_one_checkpoint() {
    let s = Session::new("ipc_sysv_twice");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    s.advance_to(&mut r, 2);
    f.kill(&mut [&mut r]);
    let mut r2 = f.restart(&ck);
    f.finish(&mut r2);
    remove_leftovers(&s.work_dir);
}

/// perl (a real interpreter, through its own IPC::Msg, IPC::Semaphore and shmread/
/// shmwrite, which attach and detach the segment by id at each call): private objects,
/// so every id changes at restart; the child is blocked in semop at the checkpoint.
#[test]
fn perl_sysv_ipc_between_parent_and_child_restarts_identically() {
    let s = Session::new("ipc_perl");
    let f = Flow::new(&s, Program::new("/usr/bin/perl").arg(probes_dir().join("sysv.pl")));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    remove_leftovers(&s.work_dir);
}

/// A restarted tree checkpointed again (its private queue and segment have new kernel
/// ids behind the ids the program holds) restarts again from that second checkpoint.
#[test]
fn sysv_checkpoint_after_a_restart_keeps_the_programs_ids() {
    let s = Session::new("ipc_sysv_again");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    s.wait_registered(2);
    let ck2 = f.checkpoint_at(&mut r, 1);
    assert_ne!(ck.gen, ck2.gen);
    s.advance_to(&mut r, 2);
    f.kill(&mut [&mut r]);
    let mut r2 = f.restart(&ck2);
    f.finish(&mut r2);
    remove_leftovers(&s.work_dir);
}

/// The keyed segment and semaphore set are gone at restart (removed after the kill):
/// they are created again with their keys, modes and contents.
#[test]
fn sysv_keyed_objects_removed_after_the_kill_are_created_again() {
    let s = Session::new("ipc_sysv_recreate");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    f.kill(&mut [&mut run]);
    let key = ftok(&s.work_dir, b'c');
    // SAFETY: removing the killed run's keyed objects.
    unsafe {
        let shm = libc::shmget(key, 0, 0);
        let sem = libc::semget(key, 0, 0);
        assert!(shm >= 0 && sem >= 0, "the killed run's keyed objects are gone already");
        libc::shmctl(shm, libc::IPC_RMID, std::ptr::null_mut());
        libc::semctl(sem, 0, libc::IPC_RMID);
    }
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    remove_leftovers(&s.work_dir);
}

/// A restart while the checkpointed program still runs (its keyed segment attached) is
/// refused naming the segment: resetting it would change memory under the live program.
#[test]
fn sysv_segment_attached_by_a_running_program_is_refused_naming_it() {
    let s = Session::new("ipc_sysv_live");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    let key = ftok(&s.work_dir, b'c');
    let out = s.restart_expecting_failure(&ck.gen);
    let err = out.stderr_text();
    let want = format!("{:#x}", key as u32);
    assert!(!out.status.success(), "the restart succeeded beside the running program: {}", out.describe());
    assert!(
        err.contains("shared memory segment") && err.contains(&want) && err.contains("running processes have it attached"),
        "the error must name the segment's key {want} and say it is attached: {err}"
    );
    f.kill(&mut [&mut run]);
    remove_leftovers(&s.work_dir);
}

/// A semaphore set with the checkpointed key, but another one, exists at restart: the
/// restart stops before starting anything, naming the key and how to remove it.
#[test]
fn sysv_key_taken_by_another_object_is_refused_naming_it() {
    let s = Session::new("ipc_sysv_key");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let key = ftok(&s.work_dir, b'c');
    // SAFETY: replacing the set with that key by a new one.
    let other = unsafe {
        let old = libc::semget(key, 0, 0);
        assert!(old >= 0, "the killed run's semaphore set is gone");
        libc::semctl(old, 0, libc::IPC_RMID);
        libc::semget(key, 3, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)
    };
    assert!(other >= 0, "cannot create the replacing set: {}", std::io::Error::last_os_error());
    let out = s.restart_expecting_failure(&ck.gen);
    let err = out.stderr_text();
    let want = format!("{:#x}", key as u32);
    assert!(!out.status.success(), "the restart succeeded with the key taken: {}", out.describe());
    assert!(
        err.contains("semaphore set") && err.contains(&want) && err.contains("ipcrm -S"),
        "the error must name the semaphore set's key {want} and ipcrm -S: {err}"
    );
    // SAFETY: removing our own set.
    unsafe { libc::semctl(other, 0, libc::IPC_RMID) };
    remove_leftovers(&s.work_dir);
}

/// POSIX message queues: a named one holding messages of several priorities and an
/// unlinked one the child is blocked on at the checkpoint.
#[test]
fn posix_mqueues_shared_by_parent_and_child_restart_with_messages() {
    let s = Session::new("ipc_mqueue");
    let f = Flow::new(&s, Program::c("mqueue"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let listing = s.list_fds(&ck.gen, &[]);
    assert!(listing.contains("mqueue /crust-probe-") && listing.contains("(deleted)"), "--list-fds shows both queues:\n{listing}");
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// The checkpointed queue's name is taken by another queue at restart: the restart stops
/// before starting anything, naming the queue.
#[test]
fn mqueue_name_taken_by_another_queue_is_refused_naming_it() {
    use std::os::unix::fs::MetadataExt;
    let s = Session::new("ipc_mqueue_name");
    let f = Flow::new(&s, Program::c("mqueue"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    f.kill(&mut [&mut run]);
    let name = format!("/crust-probe-{:x}", fs::metadata(&s.work_dir).unwrap().ino());
    let c = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: replacing the queue of that name by a new one.
    let q = unsafe {
        assert_eq!(libc::mq_unlink(c.as_ptr()), 0, "the killed run's queue {name} is gone");
        libc::mq_open(c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600, std::ptr::null_mut::<libc::mq_attr>())
    };
    assert!(q >= 0, "cannot create the replacing queue: {}", std::io::Error::last_os_error());
    let out = s.restart_expecting_failure(&ck.gen);
    let err = out.stderr_text();
    assert!(!out.status.success(), "the restart succeeded with the name taken: {}", out.describe());
    assert!(err.contains(&name) && err.contains("another queue"), "the error must name the queue {name}: {err}");
    // SAFETY: removing our own queue.
    unsafe {
        libc::mq_close(q);
        libc::mq_unlink(c.as_ptr());
    }
}

/// The bytes of the segment with `key` now.
fn segment_bytes(key: libc::key_t) -> Vec<u8> {
    // SAFETY: looking the segment up, attaching it read-only at a kernel-chosen address,
    // copying its `shm_segsz` bytes, detaching it.
    unsafe {
        let id = libc::shmget(key, 0, 0);
        assert!(id >= 0, "no segment with key {key:#x}");
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0, "IPC_STAT of segment {id}");
        let at = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
        assert_ne!(at as isize, -1, "attach segment {id}");
        let v = std::slice::from_raw_parts(at as *const u8, ds.shm_segsz).to_vec();
        libc::shmdt(at);
        v
    }
}

/// Flip a byte in the middle of the largest run of private memory of the generation's
/// images (in a compressed image, of the largest chunk).
fn corrupt_private_page(gen: &Path) {
    use crust_format::image::{read_image, RegionKind};
    let mut best: Option<(std::path::PathBuf, u64, u64)> = None;
    for img in images_of(gen) {
        let meta = read_image(&img).expect("pristine image reads").meta;
        let spots: Vec<(u64, u64)> = if meta.chunks.is_empty() {
            let private = meta.regions.iter().filter(|r| !r.shared && !matches!(r.kind, RegionKind::ShmFile { .. }));
            private.flat_map(|r| r.runs.iter()).map(|r| (r.offset, r.len)).collect()
        } else {
            meta.chunks.iter().map(|c| (c.offset, c.clen as u64)).collect()
        };
        for (off, len) in spots {
            if best.as_ref().is_none_or(|b| len > b.2) {
                best = Some((img.clone(), off, len));
            }
        }
    }
    let (img, off, len) = best.expect("the images store private memory");
    let mut bytes = fs::read(&img).expect("read image");
    bytes[(off + len / 2 + 17) as usize] ^= 0xa5;
    fs::write(&img, &bytes).expect("write image");
}

/// An eager restart abandoned at the restart barrier (a corrupt page in one image) leaves
/// every IPC object as it found it: the keyed segment that survived the kill keeps what
/// the killed run last wrote (it is given its checkpoint-time contents only once every
/// process has its memory back), and the keyed semaphore set removed after the kill, which
/// the restart made again, is removed again. The pristine generation then restarts.
#[test]
fn sysv_abandoned_eager_restart_leaves_the_objects_as_they_were() {
    let s = Session::new("ipc_sysv_abandoned");
    let f = Flow::new(&s, Program::c("sysv"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let key = ftok(&s.work_dir, b'c');
    let segment = segment_bytes(key);
    // SAFETY: removing the killed run's keyed semaphore set.
    unsafe {
        let sem = libc::semget(key, 0, 0);
        assert!(sem >= 0, "the killed run's keyed semaphore set is gone already");
        libc::semctl(sem, 0, libc::IPC_RMID);
    }
    let gen = s.root.join("copies").join("corrupt").join(ck.gen.file_name().expect("generation name"));
    copy_dir_files(&ck.gen, &gen);
    corrupt_private_page(&gen);
    s.prepare_restart_at(1);
    let out = s.restart_expecting_failure_with(&gen, &["--eager"]);
    assert!(out.status.code().is_some_and(|c| c != 0), "the restart of a corrupt image succeeded: {}", out.describe());
    assert!(out.all_text_lower().contains("checksum"), "the message must name the checksum: {}", out.describe());
    let left = s.leftovers_after(std::time::Duration::from_secs(10));
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(s.gate.reached().is_empty(), "the program ran although the restart failed");
    assert!(segment_bytes(key) == segment, "the abandoned restart changed the surviving keyed segment");
    // SAFETY: a lookup by key.
    assert!(unsafe { libc::semget(key, 0, 0) } < 0, "the semaphore set the abandoned restart made is still there");
    let mut r = f.restart(&ck);
    f.finish(&mut r);
    remove_leftovers(&s.work_dir);
}
