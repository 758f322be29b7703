//! storm bench

fn main() {}
