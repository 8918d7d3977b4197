//! crrestart on bad input: a missing path, a truncated image, a corrupted byte in the
//! metadata or in the page data, a wrong format version (with a valid header checksum, so
//! that the version check is what fails), an incomplete generation, and a regular file the
//! program had open that was deleted. Each must make crrestart exit non-zero with a message
//! naming the problem, without starting anything: no process and no coordinator left, the
//! program's output file untouched, no gate reached.
//!
//! Each test then restarts the pristine generation and checks that it works, so a crrestart
//! that fails on everything cannot pass these tests.

use crust_format::image::{read_image, Header, HEADER_SIZE};
use crust_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Launch the procstate probe, checkpoint it at gate 1, kill it.
fn checkpointed<'a>(s: &'a Session) -> (Flow<'a>, Checkpointed) {
    let f = Flow::new(s, probe::procstate());
    let mut run = f.launch();
    let ck = f.checkpoint_at(&mut run, 1);
    f.kill(&mut [&mut run]);
    (f, ck)
}

/// A copy of the generation at `<root>/copies/<case>/gen-000001`.
fn copy_generation(f: &Flow, ck: &Checkpointed, case: &str) -> PathBuf {
    let to = f.s.root.join("copies").join(case).join(ck.gen.file_name().expect("generation name"));
    copy_dir_files(&ck.gen, &to);
    to
}

fn the_image(gen: &Path) -> PathBuf {
    let imgs = images_of(gen);
    assert_eq!(imgs.len(), 1, "expected one image in {}: {imgs:?}", gen.display());
    imgs.into_iter().next().expect("one")
}

/// crrestart `path` must fail cleanly, with a message containing one of `keywords`.
fn expect_clean_failure(f: &Flow, path: &Path, keywords: &[&str], problem: &str) {
    expect_clean_failure_with(f, path, &[], keywords, problem);
}

/// `crrestart ARGS path` must fail cleanly, with a message containing one of `keywords`.
fn expect_clean_failure_with(f: &Flow, path: &Path, args: &[&str], keywords: &[&str], problem: &str) -> String {
    f.s.prepare_restart_at(1);
    let out_before = fs::read(&f.out).expect("read program output");
    let out = f.s.restart_expecting_failure_with(path, args);
    assert!(!out.status.success(), "crrestart succeeded on {problem}: {}", out.describe());
    assert!(
        out.status.code().is_some(),
        "crrestart must exit with an error status on {problem}, not die of a signal: {}",
        out.describe()
    );
    let text = out.all_text_lower();
    assert!(
        keywords.iter().any(|k| text.contains(&k.to_lowercase())),
        "crrestart's message on {problem} names none of {keywords:?}: {}",
        out.describe()
    );
    let left = f.s.leftovers_after(Duration::from_secs(10));
    assert!(left.is_empty(), "crrestart left processes behind after failing on {problem}: {left:?}");
    assert!(f.s.gate.reached().is_empty(), "the program ran although crrestart failed on {problem}");
    assert_eq!(
        fs::read(&f.out).expect("read program output"),
        out_before,
        "crrestart touched the program's output file although it failed on {problem}"
    );
    text
}

/// The untouched generation still restarts and runs to the reference result.
fn pristine_still_restarts(f: &Flow, ck: &Checkpointed) {
    let mut r = f.restart(ck);
    f.finish(&mut r);
}

// --- Corruptions (checked against the format reader by
// `image_corruptions_are_rejected_by_the_format_reader_for_the_intended_reason`).

/// Cut the image to half its size.
fn truncate_image(img: &Path) {
    let len = file_len(img);
    assert!(len > 2 * HEADER_SIZE as u64, "image suspiciously small: {len} bytes");
    fs::OpenOptions::new().write(true).open(img).and_then(|fh| fh.set_len(len / 2)).expect("truncate image");
}

/// Flip a byte in the middle of the metadata section.
fn corrupt_metadata(img: &Path) {
    let mut bytes = fs::read(img).expect("read image");
    let h = Header::from_bytes(&bytes).expect("pristine header parses");
    assert!(h.meta_len > 0 && h.meta_offset + h.meta_len <= bytes.len() as u64, "{h:?}");
    let at = (h.meta_offset + h.meta_len / 2) as usize;
    bytes[at] ^= 0x5a;
    fs::write(img, &bytes).expect("write image");
}

/// Flip a byte in the middle of the largest stored page run (metadata stays valid); in a
/// compressed image (the suite run with CR_COMPRESS), in the middle of the largest chunk.
fn corrupt_page_data(img: &Path) {
    let meta = read_image(img).expect("pristine image reads").meta;
    if let Some(c) = meta.chunks.iter().max_by_key(|c| c.clen) {
        let mut bytes = fs::read(img).expect("read image");
        let at = (c.offset + c.clen as u64 / 2) as usize;
        bytes[at] ^= 0xa5;
        fs::write(img, &bytes).expect("write image");
        return;
    }
    let run = meta
        .regions
        .iter()
        .flat_map(|r| r.runs.iter())
        .max_by_key(|r| r.len)
        .copied()
        .expect("the image stores page data");
    let mut bytes = fs::read(img).expect("read image");
    let at = (run.offset + run.len / 2 + 17) as usize;
    bytes[at] ^= 0xa5;
    fs::write(img, &bytes).expect("write image");
}

/// The version [`patch_version`] writes: one this build does not read.
const OTHER_VERSION: u32 = crust_format::image::VERSION + 1;

/// Set the format version to the next one and fix the header checksum (crc32c of bytes
/// 0..72, LE at 72), so that the version is the only thing wrong.
fn patch_version(img: &Path) {
    let mut bytes = fs::read(img).expect("read image");
    assert_eq!(&bytes[0..8], b"CRUSTIMG", "image magic");
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        crust_format::image::VERSION,
        "image version"
    );
    bytes[8..12].copy_from_slice(&OTHER_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..72]);
    bytes[72..76].copy_from_slice(&crc.to_le_bytes());
    fs::write(img, &bytes).expect("write image");
}

#[test]
fn crrestart_on_missing_path_fails_cleanly() {
    let s = Session::new("err_missing");
    let (f, ck) = checkpointed(&s);
    let missing = s.root.join("does-not-exist").join("gen-000001");
    expect_clean_failure(&f, &missing, &["does-not-exist"], "a missing path");
    pristine_still_restarts(&f, &ck);
}

#[test]
fn crrestart_on_truncated_image_fails_cleanly() {
    let s = Session::new("err_truncated");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "truncated");
    truncate_image(&the_image(&gen));
    expect_clean_failure(&f, &gen, &["truncat"], "a truncated image");
    pristine_still_restarts(&f, &ck);
}

#[test]
fn crrestart_on_corrupt_metadata_byte_fails_cleanly() {
    let s = Session::new("err_meta");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "meta");
    corrupt_metadata(&the_image(&gen));
    expect_clean_failure(&f, &gen, &["corrupt", "checksum", "crc"], "a corrupted metadata byte");
    pristine_still_restarts(&f, &ck);
}

/// Page checksums are checked before anything starts with `--verify` (by default, runs
/// mapped from the image are not read at restart: see README, "Restart modes").
#[test]
fn crrestart_verify_on_corrupt_page_data_fails_cleanly() {
    let s = Session::new("err_pages");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "pages");
    let img = the_image(&gen);
    corrupt_page_data(&img);
    assert!(read_image(&img).is_ok(), "the corruption must be in page data only (metadata still valid)");
    expect_clean_failure_with(&f, &gen, &["--verify"], &["corrupt", "checksum", "crc"], "a corrupted page-data byte");
    pristine_still_restarts(&f, &ck);
}

/// Eager restore reads everything, so it checks every page checksum first, like
/// `--verify`: a corrupted byte fails the restart before anything starts.
#[test]
fn crrestart_eager_on_corrupt_page_data_fails_cleanly() {
    let s = Session::new("err_pages_eager");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "pages-eager");
    corrupt_page_data(&the_image(&gen));
    expect_clean_failure_with(&f, &gen, &["--eager"], &["corrupt", "checksum", "crc"], "a corrupted page-data byte (eager)");
    pristine_still_restarts(&f, &ck);
}

/// The same with the checksums checked by parallel O_DIRECT reads (`--direct-reads
/// always`, what a cold image gets by default).
#[test]
fn crrestart_eager_direct_on_corrupt_page_data_fails_cleanly() {
    let s = Session::new("err_pages_eager_dio");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "pages-eager-dio");
    corrupt_page_data(&the_image(&gen));
    expect_clean_failure_with(
        &f,
        &gen,
        &["--eager", "--direct-reads", "always"],
        &["corrupt", "checksum", "crc"],
        "a corrupted page-data byte (eager, direct reads)",
    );
    pristine_still_restarts(&f, &ck);
}

#[test]
fn crrestart_on_wrong_image_version_fails_cleanly() {
    let s = Session::new("err_version");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "version");
    patch_version(&the_image(&gen));
    expect_clean_failure(&f, &gen, &["version"], "an image of another format version");
    pristine_still_restarts(&f, &ck);
}

#[test]
fn crrestart_on_incomplete_generation_fails_cleanly() {
    let s = Session::new("err_incomplete");
    let (f, ck) = checkpointed(&s);
    let gen = copy_generation(&f, &ck, "incomplete");
    fs::remove_file(gen.join("manifest.json")).expect("remove manifest");
    expect_clean_failure(&f, &gen, &["incomplete", "manifest"], "a generation without manifest");
    pristine_still_restarts(&f, &ck);
}

/// The probe keeps `kept-open.txt` open. Deleted before the restart, it must be named in
/// the error; put back (same inode, via a hard link), the restart works.
#[test]
fn crrestart_with_deleted_open_file_fails_cleanly() {
    let s = Session::new("err_deleted_file");
    let (f, ck) = checkpointed(&s);
    let file = s.work_dir.join("wd sub \u{fc}").join("kept-open.txt");
    let saved = s.root.join("kept-open.txt.saved");
    fs::hard_link(&file, &saved).expect("hard link the kept-open file");
    fs::remove_file(&file).expect("delete the kept-open file");
    expect_clean_failure(&f, &ck.gen, &["kept-open.txt"], "a deleted file the program had open");
    fs::hard_link(&saved, &file).expect("put the file back");
    assert_eq!(inode(&file), inode(&saved));
    pristine_still_restarts(&f, &ck);
}

/// A small valid image written with the format crate's own encoder: each corruption above
/// must make the format reader fail for the intended reason (and the pristine image pass).
/// Needs no crust binaries.
#[test]
fn image_corruptions_are_rejected_by_the_format_reader_for_the_intended_reason() {
    use crust_format::image::{encode_meta, verify_pages, ImageMeta, MmInfo, PageRun, Region, RegionKind, RestartEntry};
    use crust_format::Error;
    use std::io::Write;

    let dir = std::env::temp_dir().join(format!("crust-tests-synthetic-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let page_data: Vec<u8> = (0..4 * 4096u32).map(|i| (i * 7 + i / 4096) as u8).collect();
    let meta = ImageMeta {
        comp_id: 1,
        generation: 1,
        vpid: 100,
        vppid: 1,
        real_pid: 100,
        hostname: "h".into(),
        kernel_release: "k".into(),
        xcr0: 0,
        program: "p".into(),
        args: vec![],
        comm: "p".into(),
        exe: "/p".into(),
        cwd: "/".into(),
        umask: 0o22,
        rlimits: vec![],
        mm: MmInfo::default(),
        auxv: vec![],
        restart: RestartEntry::default(),
        ckpt_signal: 12,
        threads: vec![],
        fds: vec![],
        regions: vec![Region {
            start: 0x10000,
            end: 0x20000,
            prot: 3,
            shared: false,
            grows_down: false,
            kind: RegionKind::Anon,
            runs: vec![PageRun { addr: 0x10000, len: page_data.len() as u64, offset: HEADER_SIZE as u64, crc: crc32c::crc32c(&page_data) }],
        }],
        taken_unix: 0,
        tree: Default::default(),
        compression: crust_format::image::Compression::None,
        chunks: vec![],
    };
    let (meta_bytes, meta_crc) = encode_meta(&meta).unwrap();
    let meta_offset = (HEADER_SIZE + page_data.len()) as u64;
    let header = Header {
        version: crust_format::image::VERSION,
        flags: 0,
        meta_offset,
        meta_len: meta_bytes.len() as u64,
        meta_crc,
        data_offset: HEADER_SIZE as u64,
        data_len: page_data.len() as u64,
        file_len: meta_offset + meta_bytes.len() as u64,
        fd_table_len: 0,
        fd_table_crc: 0,
    };
    let write = |p: &Path| {
        let mut f = fs::File::create(p).unwrap();
        f.write_all(&header.to_bytes()).unwrap();
        f.write_all(&page_data).unwrap();
        f.write_all(&meta_bytes).unwrap();
    };
    let check = |p: &Path| read_image(p).and_then(|im| verify_pages(p, &im.meta));
    let img = dir.join("proc-100.crimg");

    write(&img);
    check(&img).expect("the pristine synthetic image is valid");
    truncate_image(&img);
    assert!(matches!(check(&img), Err(Error::Truncated { .. })), "{:?}", check(&img));
    write(&img);
    corrupt_metadata(&img);
    assert!(matches!(check(&img), Err(Error::Corrupt(_))), "{:?}", check(&img));
    write(&img);
    corrupt_page_data(&img);
    assert!(read_image(&img).is_ok(), "page corruption leaves the metadata valid");
    assert!(matches!(check(&img), Err(Error::Corrupt(_))), "{:?}", check(&img));
    write(&img);
    patch_version(&img);
    assert!(matches!(check(&img), Err(Error::Version { found: OTHER_VERSION, .. })), "{:?}", check(&img));
    fs::remove_dir_all(&dir).unwrap();
}

/// Eager restore of a parent and its child where only the child's image holds a corrupt
/// page. The restorers check page checksums as they read (nothing reads the images
/// beforehand), so the parent's restorer has all its memory back and checked while the
/// child's finds the bad page: the restart barrier must keep the parent from running and
/// the output file from being truncated back, every restorer must exit, and crrestart
/// (the parent's process) must exit non-zero with a message naming the child's image and
/// the checksum. Through the page cache and with O_DIRECT reads.
#[test]
fn crrestart_eager_tree_with_one_corrupt_child_page_starts_nothing() {
    let s = Session::new("err_pages_eager_child");
    let mut f = Flow::new(&s, Program::c("pipe_pair"));
    let (mut run, ck) = f.launch_checkpointed(1, 2);
    let parent = run.pid;
    f.kill(&mut [&mut run]);
    let gen = copy_generation(&f, &ck, "pages-eager-child");
    let imgs = images_of(&gen);
    assert_eq!(imgs.len(), 2, "expected the parent's and the child's image: {imgs:?}");
    let metas: Vec<_> = imgs.iter().map(|p| read_image(p).expect("pristine image reads").meta).collect();
    let k = metas.iter().position(|m| m.vpid != parent).expect("the child's image");
    let child_vpid = metas[k].vpid;
    assert_eq!(metas[1 - k].vpid, parent, "the other image is the parent's");
    corrupt_page_data(&imgs[k]);
    for args in [&["--eager"][..], &["--eager", "--direct-reads", "always"][..]] {
        let what = format!("a corrupted page-data byte in the child's image only ({})", args.join(" "));
        let text = expect_clean_failure_with(&f, &gen, args, &["checksum"], &what);
        // (A compressed image, as in the suite run with CR_COMPRESS, is checked by crrestart
        // as it is unpacked, before anything starts: its message names the image too.)
        assert!(
            text.contains(&imgs[k].display().to_string().to_lowercase()),
            "the message must name the child's image {} (vpid {child_vpid}): {text}",
            imgs[k].display()
        );
    }
    f.restart_args = vec!["--eager".into()];
    pristine_still_restarts(&f, &ck);
}
