//! overhead bench

fn main() {}
