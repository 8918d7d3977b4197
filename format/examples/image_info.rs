//! Print an image's regions and page runs, and check every page checksum.
//! `cargo run -p crust-format --example image_info -- IMAGE`
fn main() {
    let p = std::env::args().nth(1).expect("usage: image_info IMAGE");
    let path = std::path::Path::new(&p);
    let im = match crust_format::image::read_image(path) {
        Ok(im) => im,
        Err(e) => {
            eprintln!("{p}: {e}");
            std::process::exit(1);
        }
    };
    println!("compression {:?}, {} chunks, {} bytes of page data", im.meta.compression, im.meta.chunks.len(), im.meta.memory_bytes());
    for r in &im.meta.regions {
        println!("{:x}-{:x} prot {} shared {} {:?}", r.start, r.end, r.prot, r.shared, r.kind);
        for run in &r.runs {
            println!("    run {:x} +{:x} at {:x} crc {:08x}", run.addr, run.len, run.offset, run.crc);
        }
    }
    match crust_format::image::verify_pages(path, &im.meta) {
        Ok(()) => println!("page checksums: ok"),
        Err(e) => println!("page checksums: {e}"),
    }
}
