#![no_std]
pub const X: u32 = 1;
