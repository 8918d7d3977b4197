fn main() {
    // The restorer is a freestanding static executable linked at a fixed, unusual
    // address so that it never overlaps the memory of the process it restores.
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-Wl,--image-base=0x1f0000000000");
    println!("cargo:rustc-link-arg-bins=-Wl,--build-id=none");
    println!("cargo:rerun-if-changed=build.rs");
}
