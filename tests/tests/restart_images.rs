//! Ways of storing and loading memory: mapped restore (the default: large runs mapped
//! straight from the image), eager restore (`crrestart --eager`), and compressed images
//! (`crlaunch --compress zstd|lz4`). Each restarts the probes identically to the
//! uninterrupted reference; a corrupted compressed chunk is refused with a message naming
//! the image and the chunk. Every test here chooses its modes itself: its sessions are
//! `exact_modes`, so the suite-wide variants (`CR_COMPRESS`, `CRUST_TEST_NO_FORKED`...)
//! do not change what it checks.

use crust_format::image::{read_image, Compression};
use crust_tests::*;
use std::fs;
use std::path::{Path, PathBuf};

fn the_image(gen: &Path) -> PathBuf {
    let imgs = images_of(gen);
    assert_eq!(imgs.len(), 1, "expected one image in {}: {imgs:?}", gen.display());
    imgs.into_iter().next().expect("one")
}

/// Lines of the restored program's /proc/PID/maps that map an image file.
fn image_mappings(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(".crimg") || l.contains("crust-pages"))
        .map(str::to_string)
        .collect()
}

fn eager_flow<'a>(s: &'a Session, prog: Program) -> Flow<'a> {
    let mut f = Flow::new(s, prog);
    f.restart_args.push("--eager".into());
    f
}

#[test]
fn memory_c_restarts_identically_with_eager_restore() {
    let s = Session::new("eager_memory").exact_modes();
    eager_flow(&s, probe::memory()).canonical();
}

#[test]
fn threads_c_restarts_identically_with_eager_restore() {
    let s = Session::new("eager_threads").exact_modes();
    eager_flow(&s, probe::threads()).canonical();
}

/// Mapped restore really maps runs from the image; the restored program's next checkpoint
/// stores that memory as its own, so the newer generation restarts after the older one
/// (whose image the memory was mapped from) is deleted.
#[test]
fn mapped_restore_maps_the_image_and_the_next_generation_stands_alone() {
    let s = Session::new("mapped_chain").exact_modes();
    let f = Flow::new(&s, probe::memory());
    let mut run = f.launch();
    let ck1 = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);

    let mut second = f.restart(&ck1);
    let maps = image_mappings(second.pid);
    assert!(
        !maps.is_empty(),
        "the restored program maps nothing from its image (mapped restore is the default)\n{}",
        fs::read_to_string(format!("/proc/{}/maps", second.pid)).unwrap_or_default()
    );
    let ck2 = f.checkpoint_at(&mut second, 2);
    s.advance_to(&mut second, 3);
    f.kill(&mut [&mut second]);
    fs::remove_dir_all(&ck1.gen).expect("delete the first generation");

    s.prepare_restart_at(2);
    let mut eager = f.s.restart_with(&ck2.gen, &StdoutTo::File(s.root.join("own.out")), &["--eager"]);
    assert_eq!(s.wait_any_reached(&mut eager), 2);
    assert!(image_mappings(eager.pid).is_empty(), "an eager restore maps nothing from the image");
    f.kill(&mut [&mut eager]);

    let mut third = f.restart(&ck2);
    f.finish(&mut third);
}

fn compressed_flow<'a>(s: &'a Session, prog: Program, how: &str) -> Flow<'a> {
    let out = s.root.join("program.out");
    Flow::with_opts(s, prog, LaunchOpts::file(&out).arg("--compress").arg(how))
}

fn check_compressed(gen: &Path, want: Compression) {
    let img = the_image(gen);
    let meta = read_image(&img).expect("compressed image reads").meta;
    assert_eq!(meta.compression, want, "{}", img.display());
    assert!(!meta.chunks.is_empty(), "a compressed image without chunks: {}", img.display());
    let stored: u64 = meta.chunks.iter().map(|c| c.clen as u64).sum();
    assert!(stored < meta.memory_bytes(), "compression saved nothing: {stored} of {} bytes", meta.memory_bytes());
}

fn compressed_canonical(name: &str, prog: Program, how: &str, want: Compression, eager: bool) {
    let s = Session::new(name).exact_modes();
    let mut f = compressed_flow(&s, prog, how);
    if eager {
        f.restart_args.push("--eager".into());
    }
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    check_compressed(&ck.gen, want);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

#[test]
fn memory_c_restarts_identically_from_zstd_image() {
    compressed_canonical("zstd_memory", probe::memory(), "zstd", Compression::Zstd, false);
}

#[test]
fn threads_c_restarts_identically_from_zstd_image_eagerly() {
    compressed_canonical("zstd_threads", probe::threads(), "zstd", Compression::Zstd, true);
}

#[test]
fn memory_c_restarts_identically_from_lz4_image_eagerly() {
    compressed_canonical("lz4_memory", probe::memory(), "lz4", Compression::Lz4, true);
}

#[test]
fn threads_c_restarts_identically_from_lz4_image() {
    compressed_canonical("lz4_threads", probe::threads(), "lz4", Compression::Lz4, false);
}

/// `crlaunch --zstd-level` reaches the writer: the slowest level allowed stores the same
/// program's memory in far fewer bytes than the fastest, and both restart identically.
/// The program is python3 (about 10 MiB of compressible heap: 6.3 MB stored at -50, 1.25
/// MB at 9); the memory probe, mostly pseudo-random bytes stored raw at any level, left
/// a difference of a few KiB that the run-to-run variation of its content could reverse.
#[test]
fn zstd_level_option_is_honoured() {
    let mut stored = Vec::new();
    for level in ["-50", "9"] {
        let s = Session::new(&format!("zstd_level{level}")).exact_modes();
        let out = s.root.join("program.out");
        let f = Flow::with_opts(&s, Program::python("threads.py"), LaunchOpts::file(&out).arg("--compress").arg("zstd").arg("--zstd-level").arg(level));
        let mut run = f.launch();
        let ck = f.checkpoint_at(&mut run, 1);
        check_compressed(&ck.gen, Compression::Zstd);
        let meta = read_image(&the_image(&ck.gen)).expect("image reads").meta;
        stored.push(meta.chunks.iter().map(|c| c.clen as u64).sum::<u64>());
        s.advance_to(&mut run, 2);
        f.kill(&mut [&mut run]);
        let mut r = f.restart(&ck);
        f.finish(&mut r);
    }
    assert!(
        stored[1] * 3 < stored[0] * 2,
        "zstd level 9 stored {} bytes, level -50 {}: the level was not applied",
        stored[1],
        stored[0]
    );
}

/// `CR_COMPRESS` in the environment of crlaunch works like `--compress`.
#[test]
fn cr_compress_environment_selects_compression() {
    let s = Session::new("zstd_env").exact_modes();
    let f = Flow::new(&s, probe::memory().env("CR_COMPRESS", "zstd"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    check_compressed(&ck.gen, Compression::Zstd);
    f.finish(&mut run);
}

/// A flipped byte in a compressed chunk: crrestart refuses the image before starting
/// anything, naming the image file and the chunk; the pristine generation still restarts.
#[test]
fn corrupted_compressed_chunk_is_refused_naming_image_and_chunk() {
    let s = Session::new("zstd_corrupt").exact_modes();
    let f = compressed_flow(&s, probe::memory(), "zstd");
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);

    let copy = s.root.join("copies").join(ck.gen.file_name().expect("generation name"));
    copy_dir_files(&ck.gen, &copy);
    let img = the_image(&copy);
    let meta = read_image(&img).expect("pristine image reads").meta;
    let k = meta.chunks.len() / 2;
    let chunk = meta.chunks[k];
    let mut bytes = fs::read(&img).expect("read image");
    bytes[(chunk.offset + chunk.clen as u64 / 2) as usize] ^= 0x41;
    fs::write(&img, &bytes).expect("write image");

    s.prepare_restart_at(1);
    let out_before = fs::read(&f.out).expect("read program output");
    let out = s.restart_expecting_failure(&copy);
    assert!(!out.status.success() && out.status.code().is_some(), "crrestart on a corrupt chunk: {}", out.describe());
    let text = out.stderr_text();
    let name = img.file_name().and_then(|n| n.to_str()).expect("image name");
    assert!(
        text.contains(name) && text.contains(&format!("chunk {k}")) && text.contains("checksum"),
        "the message must name the image ({name}) and chunk {k}: {}",
        out.describe()
    );
    assert!(s.gate.reached().is_empty(), "the program ran although its image is corrupt");
    assert_eq!(fs::read(&f.out).expect("read output"), out_before, "crrestart changed the output file");

    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// `crcoord --compress lz4` imposes its setting on a program launched with
/// `--compress zstd`; the image restarts identically.
#[test]
fn coordinator_compress_setting_overrides_the_programs() {
    let s = Session::new("coord_compress").exact_modes();
    let _coord = s.start_coordinator(&["--compress", "lz4"], &[]);
    let f = compressed_flow(&s, probe::threads(), "zstd");
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    check_compressed(&ck.gen, Compression::Lz4);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    f.finish(&mut r);
}

/// After a mapped restart, MADV_DONTNEED gives zeros (the madvise wrapper replaces image
/// pages with anonymous memory) and growing a block with mremap gives zeros in the new
/// part (the last page of a mapped region stays anonymous): as without crust.
#[test]
fn dontneed_and_mremap_behave_as_anonymous_memory_after_mapped_restart() {
    let s = Session::new("dontneed").exact_modes();
    let f = Flow::new(&s, Program::c("dontneed"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    assert!(!image_mappings(r.pid).is_empty(), "the probe's memory was not mapped from the image");
    f.finish(&mut r);
}

/// After a mapped restart, large malloc'd blocks that were adjacent (one merged mapping, one
/// run of the image) grow with glibc's realloc, whose internal mremap no wrapper sees, and
/// the grown part is usable: no block is a plain mapping of the image file that mremap could
/// extend past the file's end (SIGBUS).
#[test]
fn realloc_grows_adjacent_blocks_after_mapped_restart() {
    let s = Session::new("realloc_grow").exact_modes();
    let f = Flow::new(&s, Program::c("realloc_grow"));
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    s.advance_to(&mut run, 2);
    f.kill(&mut [&mut run]);
    let mut r = f.restart(&ck);
    assert!(!image_mappings(r.pid).is_empty(), "the probe's memory was not mapped from the image");
    f.finish(&mut r);
}

/// Whether files in `dir` can be opened with `O_DIRECT` (tmpfs refuses it).
fn takes_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(".o_direct_probe");
    let ok = fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&p).is_ok();
    let _ = fs::remove_file(&p);
    ok
}

/// Memory marked MADV_DONTFORK or MADV_WIPEONFORK is absent from, or zeros in, a forked
/// copy: a process with such memory writes its image while stopped, also in a forked
/// generation, and restarts with every area as it was (before, the restart crashed on the
/// missing area, or the wiped one came back as zeros).
#[test]
fn memory_a_fork_does_not_copy_is_checkpointed_in_forked_mode() {
    let s = Session::new("fork_advice");
    Flow::new(&s, Program::c("forkadvice")).canonical();
}

/// A stop-the-world image is written with `O_DIRECT` where the filesystem takes it (the
/// header's FLAG_DIRECT_IO says so), through Linux AIO while the next pieces are
/// checksummed, and through the page cache where it refuses (tmpfs: EINVAL at open);
/// `CR_DIRECT_IO=sync` writes one synchronous direct piece at a time (the fallback where
/// AIO is refused), `CR_DIRECT_IO=0` turns it off. Every variant restarts identically (the
/// memory probe has dense and sparse anonymous memory, shared memory, read-only and
/// PROT_NONE areas, which the direct path pins or briefly makes readable; the dirty probe
/// has 96 MiB in large runs, several direct pieces in flight, each checksum checked at the
/// restart). `CR_TEST_DIRECT_REFUSE` makes the kernel's refusals happen: an AIO submission
/// refused (the rest written synchronously), a direct write failing when it completes (it
/// and the rest go through the page cache).
#[test]
fn stop_the_world_images_direct_on_disk_buffered_on_tmpfs_restart_identically() {
    use crust_format::image::FLAG_DIRECT_IO;
    let shm = Path::new("/dev/shm");
    let dirty = || probe::dirty().arg("32").arg("3");
    let refuse = |how: &str| dirty().env("CR_TEST_DIRECT_REFUSE", how);
    for (name, prog, on_tmpfs, direct_env) in [
        ("dio_disk", probe::memory(), false, None),
        ("dio_tmpfs", probe::memory(), true, None),
        ("dio_off", probe::memory(), false, Some("0")),
        ("dio_sync", probe::memory(), false, Some("sync")),
        ("dio_dirty", dirty(), false, None),
        ("dio_dirty_sync", dirty(), false, Some("sync")),
        ("dio_refuse_submit", refuse("submit"), false, None),
        ("dio_refuse_complete", refuse("complete"), false, None),
    ] {
        if on_tmpfs && !shm.is_dir() {
            eprintln!("no /dev/shm here: the tmpfs case is skipped");
            continue;
        }
        let mut s = Session::new(name).exact_modes();
        let mut tmpfs_dir = None;
        if on_tmpfs {
            let d = shm.join(format!("crust-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).expect("create a checkpoint directory on tmpfs");
            s.ckpt_dir = d.clone();
            tmpfs_dir = Some(d);
        }
        let mut prog = prog;
        if let Some(v) = direct_env {
            prog = prog.env("CR_DIRECT_IO", v);
        }
        let out = s.root.join("program.out");
        let f = Flow::with_opts(&s, prog, LaunchOpts::file(&out).no_forked());
        let mut run = f.launch();
        let ck = f.checkpoint_at(&mut run, 1);
        let img = the_image(&ck.gen);
        let image = read_image(&img).expect("image reads");
        let want_direct = direct_env != Some("0") && takes_o_direct(&s.ckpt_dir);
        assert_eq!(
            image.header.flags & FLAG_DIRECT_IO != 0,
            want_direct,
            "{name}: header flags {:#x} of {} (the directory {} O_DIRECT)",
            image.header.flags,
            img.display(),
            if takes_o_direct(&s.ckpt_dir) { "takes" } else { "refuses" }
        );
        s.advance_to(&mut run, 2);
        f.kill(&mut [&mut run]);
        let mut r = f.restart(&ck);
        f.finish(&mut r);
        drop(f);
        if let Some(d) = tmpfs_dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Eager restore with `--direct-reads always`: the restorer reads the page data straight
/// into memory with O_DIRECT through Linux AIO, checking every checksum as it arrives.
/// The dirtying probe (three threads, 96 MiB in large runs: enough for the restorer's
/// prefaulting thread, on a machine with two CPUs or more) and the memory probe (every
/// kind of memory, PROT_NONE and read-only areas, shared memory) restart identically; on
/// a directory that refuses O_DIRECT (tmpfs) the same option falls back to the page cache
/// and restarts identically too; so does the dirtying probe read through the page cache
/// (`--direct-reads never`, prefaulted too).
#[test]
fn eager_restore_with_direct_reads_restarts_identically_on_disk_and_tmpfs() {
    let shm = Path::new("/dev/shm");
    for (name, prog, on_tmpfs, direct) in [
        ("eager_dio_dirty", probe::dirty().arg("32").arg("3"), false, "always"),
        ("eager_dio_memory", probe::memory(), false, "always"),
        ("eager_dio_tmpfs", probe::memory(), true, "always"),
        ("eager_cached_dirty", probe::dirty().arg("32").arg("3"), false, "never"),
    ] {
        if on_tmpfs && !shm.is_dir() {
            eprintln!("no /dev/shm here: the tmpfs case is skipped");
            continue;
        }
        let mut s = Session::new(name).exact_modes();
        let mut tmpfs_dir = None;
        if on_tmpfs {
            let d = shm.join(format!("crust-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).expect("create a checkpoint directory on tmpfs");
            s.ckpt_dir = d.clone();
            tmpfs_dir = Some(d);
        }
        let mut f = Flow::new(&s, prog);
        f.restart_args = vec!["--eager".into(), "--direct-reads".into(), direct.into(), "-v".into()];
        let mut run = f.launch();
        let ck = f.checkpoint_at(&mut run, 1);
        s.advance_to(&mut run, 2);
        f.kill(&mut [&mut run]);
        let mut r = f.restart(&ck);
        let said_direct = r.stderr_text().contains("page data read with O_DIRECT");
        assert_eq!(
            said_direct,
            direct == "always" && takes_o_direct(&s.ckpt_dir),
            "{name}: crrestart's stderr does not match whether {} takes O_DIRECT:\n{}",
            s.ckpt_dir.display(),
            r.stderr_text()
        );
        assert!(image_mappings(r.pid).is_empty(), "{name}: an eager restore maps nothing from the image");
        f.finish(&mut r);
        drop(f);
        if let Some(d) = tmpfs_dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}
