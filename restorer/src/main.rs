//! `crust-restorer`: rebuilds a checkpointed process's memory inside its own process.
//!
//! `crrestart` has checked the image, set up the program's fds, cwd and limits, written a
//! restore plan (see lib.rs) into a memfd and exec'd this program as
//! `crust-restorer PLAN_FD PLAN_ADDR_HEX`. This program is static, freestanding and linked
//! at a fixed address far from anything a program uses, so it can:
//!
//! 1. switch to a stack inside its own image;
//! 2. map the plan, then unmap everything else the kernel gave it (stack, heap) except
//!    itself and the vDSO/vvar pages;
//! 3. move the vDSO and vvar pages to where the program had them (glibc holds pointers
//!    into the vDSO);
//! 4. map every memory area of the image at its address, fill in the stored pages
//!    (checking each run's crc32c as the data arrives) and set the final protections;
//! 5. the restart barrier: report "verified" to crrestart's supervisor and wait for
//!    "go", which comes once every process of the tree has its memory back and checked
//!    and the programs' files are put back (end of file instead: exit, nothing ran);
//! 6. restore the kernel's view of the address space (brk heap, argv/env area, auxv) with
//!    PR_SET_MM_MAP, which needs no privilege;
//! 7. jump to the preload's restart entry on the preload's own restart stack.
//!
//! It uses no libc: raw system calls only, no allocation, no panics that unwind.

#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]

// `cargo test --all-targets` builds a test harness of every binary; the freestanding
// code (its own _start, panic handler and mem* functions) only exists outside it.
#[cfg(not(test))]
mod freestanding;

#[cfg(test)]
fn main() {}
